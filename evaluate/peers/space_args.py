"""The sizes a peer runs at, shared by the peers in this folder: a vitnas
search space file (TOML: [input] or [text], [supernet], [choices]) or
explicit dimensions, with the image size, patch size or sequence length in
place of the space's own, as `vitnas bench --space F --image-size N
--patch-size P --seq-len T` takes them. Also the model FLOPs (2 per
multiply-add, counted as vitnas's src/space/cost.rs counts them) and the
peak resident memory (ru_maxrss), so both sides report the same fields.
"""
import math
import resource
import tomllib


def mlp_width(embed, ratio):
    """vitnas's space::mlp_width: int(embed * ratio), guarded against 2.999..."""
    return int(math.floor(embed * ratio + 1e-6))


def csv_ints(s):
    return [int(v) for v in s.split(",")]


def csv_floats(s):
    return [float(v) for v in s.split(",")]


def add_vit_args(ap):
    g = ap.add_argument_group("size (default: the fmnist-tiny benchmark space)")
    g.add_argument("--space", help="a vitnas image search space (TOML); explicit dims below replace its values")
    g.add_argument("--image-size", type=int); g.add_argument("--patch-size", type=int)
    g.add_argument("--chans", type=int); g.add_argument("--classes", type=int)
    g.add_argument("--embed", type=csv_ints, help="embed dim choices, e.g. 192,216,240")
    g.add_argument("--depth", type=csv_ints); g.add_argument("--heads", type=csv_ints)
    g.add_argument("--mlp", type=csv_floats, help="MLP ratio choices"); g.add_argument("--head-dim", type=int)


def add_text_args(ap):
    g = ap.add_argument_group("size (default: the bert-minilm space, mean pooling)")
    g.add_argument("--space", help="a vitnas text search space (TOML); explicit dims below replace its values")
    g.add_argument("--seq", "--seq-len", dest="seq", type=int, help="tokens per sequence (default: the space's text.seq_len, 128)")
    g.add_argument("--hidden", type=csv_ints); g.add_argument("--depth", type=csv_ints)
    g.add_argument("--heads", type=csv_ints); g.add_argument("--ffn", type=csv_ints)
    g.add_argument("--head-dim", type=int); g.add_argument("--classes", type=int)
    g.add_argument("--pooling", choices=["mean", "pooler"])


def _read(path, kind):
    with open(path, "rb") as f:
        sp = tomllib.load(f)
    if sp.get("layer"):
        raise SystemExit(f"{path}: per-layer choice lists ([[layer]]) are not supported by the PyTorch peer")
    if kind not in sp:
        raise SystemExit(f"{path}: the {'image' if kind == 'input' else 'text'} peer needs a [{kind}] space")
    return sp


def vit_space(a, default):
    """SPACE (choices, geometry) and SUPER (allocated shapes) of a ViT peer."""
    S = dict(default)
    sup = None
    if a.space:
        sp = _read(a.space, "input")
        i, s, c = sp["input"], sp["supernet"], sp["choices"]
        S.update(embed=c["embed_dim"], depth=c["depth"], heads=c["num_heads"], mlp=c["mlp_ratio"],
                 head_dim=s["head_dim"], image=i["image_size"], patch=i["patch_size"],
                 chans=i["channels"], classes=i["num_classes"], eps=s.get("layer_norm_eps", 1e-5),
                 name=sp["name"])
        sup = dict(embed=s["embed_dim"], depth=s["depth"], qkv=s["num_heads"] * s["head_dim"],
                   mlp=mlp_width(s["embed_dim"], s["mlp_ratio"]))
    for k, v in [("embed", a.embed), ("depth", a.depth), ("heads", a.heads), ("mlp", a.mlp),
                 ("head_dim", a.head_dim), ("image", a.image_size), ("patch", a.patch_size),
                 ("chans", a.chans), ("classes", a.classes)]:
        if v is not None:
            S[k] = v
    if S["image"] % S["patch"]:
        raise SystemExit(f"patch size {S['patch']} does not divide the image size {S['image']}")
    big = dict(embed=max(S["embed"]), depth=max(S["depth"]), qkv=max(S["heads"]) * S["head_dim"],
               mlp=mlp_width(max(S["embed"]), max(S["mlp"])))
    # the supernet's own shapes when the space states them and they hold the choices
    S["super"] = {k: max(big[k], sup[k]) for k in big} if sup else big
    S["tokens"] = (S["image"] // S["patch"]) ** 2 + 1
    return S


def text_space(a, default):
    """SPACE of a BERT peer: choices, allocated shapes, vocabulary, length."""
    S = dict(default)
    if a.space:
        sp = _read(a.space, "text")
        t, s, c = sp["text"], sp["supernet"], sp["choices"]
        S.update(hidden=c["embed_dim"], depth=c["depth"], heads=c["num_heads"], ffn=c["mlp_dim"],
                 head_dim=s["head_dim"], vocab=t["vocab_size"], max_pos=t["max_position_embeddings"],
                 type_vocab=t.get("type_vocab_size", 2), classes=t.get("num_classes") or 2,
                 eps=s.get("layer_norm_eps", 1e-12), seq=t["seq_len"], pooling=t.get("pooling", "pooler"),
                 name=sp["name"], super=dict(hidden=s["embed_dim"], depth=s["depth"],
                                             qkv=s["num_heads"] * s["head_dim"], ffn=s["mlp_dim"]))
    for k, v in [("hidden", a.hidden), ("depth", a.depth), ("heads", a.heads), ("ffn", a.ffn),
                 ("head_dim", a.head_dim), ("classes", a.classes), ("seq", a.seq), ("pooling", a.pooling)]:
        if v is not None:
            S[k] = v
    big = dict(hidden=max(S["hidden"]), depth=max(S["depth"]), qkv=max(S["heads"]) * S["head_dim"], ffn=max(S["ffn"]))
    sup = S.get("super")
    S["super"] = {k: max(big[k], sup[k]) for k in big} if sup else big
    if S["seq"] > S["max_pos"]:
        raise SystemExit(f"--seq {S['seq']} exceeds the {S['max_pos']} position embeddings")
    S["tokens"] = S["seq"]
    return S


def block_macs(t, e, q, m):
    """One layer over t tokens (cost.rs block_macs with tq = t)."""
    return 2 * t * e * q + t * (e * q + 2 * t * q + q * e + 2 * e * m)


def vit_macs(S, a):
    """Multiply-adds of one image through subnet a (cost.rs `flops`)."""
    e, t, p = a["embed"], S["tokens"], S["patch"]
    f = (t - 1) * S["chans"] * p * p * e
    for i in range(a["depth"]):
        f += block_macs(t, e, a["heads"][i] * S["head_dim"], mlp_width(e, a["mlp"][i]))
    return f + e * S["classes"]


def text_macs(S, a):
    """Multiply-adds of one sequence through subnet a (cost.rs `text_macs`)."""
    e, t = a["hidden"], S["seq"]
    f = sum(block_macs(t, e, a["heads"][i] * S["head_dim"], a["ffn"][i]) for i in range(a["depth"]))
    if S["pooling"] == "pooler":
        f += e * e
    return f + e * S["classes"]


def peak_rss_mib():
    """Peak resident memory of this process so far, MiB (Linux ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
