"""Same-recipe parity: train the plain-PyTorch version of a vitnas run.

  python evaluate/parity.py --run <vitnas run dir> [--seed N]
      [--init torch_default|trunc_normal_0.02|xavier_uniform] [--wd-skip-1d]
      [--threads 2] [--max-steps N] [--out result.json]

Reads the run dir vitnas wrote (recipe.toml: the resolved recipe, space.toml,
data-split.json: the IDX data dir and the train / val indices) and trains the
"obvious PyTorch version" of that recipe on exactly the same split: an
AutoFormer-style weight-entangled ViT supernet (subnets use leading slices of
the largest tensors, as ../shared/bench/torch_reference.py), sandwich or uniform
sampling, CE with label smoothing, KL in-place distillation, AdamW over all
parameters, linear warmup + cosine LR per step, optional gradient clipping,
random shift (zero padding) + horizontal flip. Prints the val accuracy of the
largest and smallest subnet after every epoch and their test accuracy (the
whole t10k split) at the end; --out writes them as JSON. The random streams
(init, data order, augmentation, sampling) are PyTorch's / Python's, seeded by
--seed (default: the recipe's seed), not vitnas's: compare across seeds.
Only IDX data, global choices (no [[layer]] overrides), and the uniform /
sandwich samplers with kl / none distillation are supported.
"""
import argparse, gzip, json, math, os, random, struct, sys, time, tomllib, warnings
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy is fine here
import torch, torch.nn as nn, torch.nn.functional as F


def die(msg):
    sys.exit(f"parity.py: {msg}")


def read_idx(d, name):
    for path, opener in ((os.path.join(d, name + ".gz"), gzip.open), (os.path.join(d, name), open)):
        if os.path.isfile(path):
            with opener(path, "rb") as f:
                buf = f.read()
            break
    else:
        die(f"neither {name} nor {name}.gz in {d}")
    zero, dtype, nd = struct.unpack(">HBB", buf[:4])
    if zero != 0 or dtype != 0x08:
        die(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{nd}I", buf[4:4 + 4 * nd])
    return torch.frombuffer(bytearray(buf[4 + 4 * nd:]), dtype=torch.uint8).reshape(dims)


def load_split(d, prefix):
    """uint8 images [N, 1, H, W] and int64 labels [N]."""
    x = read_idx(d, f"{prefix}-images-idx3-ubyte")
    y = read_idx(d, f"{prefix}-labels-idx1-ubyte")
    if x.dim() != 3 or y.shape != (x.shape[0],):
        die(f"{d}/{prefix}-*: expected images [N, H, W] and N labels, found {tuple(x.shape)}, {tuple(y.shape)}")
    return x.unsqueeze(1), y.long()


class Space:
    def __init__(self, t):
        if t.get("layer"):
            die("space.toml has [[layer]] overrides; parity.py supports only global choices")
        i, s, c = t["input"], t["supernet"], t["choices"]
        self.image, self.patch, self.chans, self.classes = i["image_size"], i["patch_size"], i["channels"], i["num_classes"]
        self.E, self.D, self.H, self.mlp_ratio = s["embed_dim"], s["depth"], s["num_heads"], s["mlp_ratio"]
        self.head_dim, self.eps = s["head_dim"], s.get("layer_norm_eps", 1e-6)
        self.embed, self.depth, self.heads, self.mlp = c["embed_dim"], c["depth"], c["num_heads"], c["mlp_ratio"]

    def arch(self, rng, which):
        if which in ("largest", "smallest"):
            f = max if which == "largest" else min
            d = f(self.depth)
            return dict(embed=f(self.embed), depth=d, heads=[f(self.heads)] * d, mlp=[f(self.mlp)] * d)
        d = rng.choice(self.depth)
        return dict(embed=rng.choice(self.embed), depth=d,
                    heads=[rng.choice(self.heads) for _ in range(d)], mlp=[rng.choice(self.mlp) for _ in range(d)])


def mlp_width(e, r):
    return int(e * r + 1e-6)  # vitnas's mlp_width: floor(e * r + 1e-6), AutoFormer's int(e * r)


class Supernet(nn.Module):
    """torch_reference.py's supernet, sized by a space."""

    def __init__(self, S, init):
        super().__init__()
        self.S = S
        E, H, M, n = S.E, S.H * S.head_dim, mlp_width(S.E, S.mlp_ratio), (S.image // S.patch) ** 2
        self.patch = nn.Linear(S.chans * S.patch ** 2, E)
        self.cls = nn.Parameter(torch.zeros(1, 1, E))
        self.pos = nn.Parameter(torch.randn(1, n + 1, E) * .02)
        self.blocks = nn.ModuleList()
        for _ in range(S.D):
            b = nn.Module()
            b.ln1 = nn.LayerNorm(E); b.q = nn.Linear(E, H); b.k = nn.Linear(E, H); b.v = nn.Linear(E, H)
            b.o = nn.Linear(H, E); b.ln2 = nn.LayerNorm(E); b.fc1 = nn.Linear(E, M); b.fc2 = nn.Linear(M, E)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, S.classes)
        if init == "torch_default":
            return  # the constructors' defaults, as torch_reference.py
        tn = lambda t: nn.init.trunc_normal_(t, std=.02, a=-.04, b=.04)
        tn(self.cls); tn(self.pos)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m is not self.patch:  # the patch projection keeps U(±1/sqrt(C p p))
                if init == "trunc_normal_0.02":
                    tn(m.weight)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x, a):
        S, e, p, B, eps = self.S, a["embed"], self.S.patch, x.shape[0], self.S.eps
        # patches flattened channel-major, then row, then column (HF conv weight order [C, p, p])
        x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(B, -1, S.chans * p * p)
        x = F.linear(x, self.patch.weight[:e], self.patch.bias[:e])
        x = torch.cat([self.cls[..., :e].expand(B, -1, -1), x], 1) + self.pos[..., :e]
        for i in range(a["depth"]):
            b, h, hd = self.blocks[i], a["heads"][i], S.head_dim
            qd, m = h * hd, mlp_width(e, a["mlp"][i])
            y = F.layer_norm(x, (e,), b.ln1.weight[:e], b.ln1.bias[:e], eps)
            q, k, v = (F.linear(y, l.weight[:qd, :e], l.bias[:qd]).view(B, -1, h, hd).transpose(1, 2)
                       for l in (b.q, b.k, b.v))
            att = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(B, -1, qd)
            x = x + F.linear(y, b.o.weight[:e, :qd], b.o.bias[:e])
            y = F.layer_norm(x, (e,), b.ln2.weight[:e], b.ln2.bias[:e], eps)
            y = F.gelu(F.linear(y, b.fc1.weight[:m, :e], b.fc1.bias[:m]))
            x = x + F.linear(y, b.fc2.weight[:e, :m], b.fc2.bias[:e])
        x = F.layer_norm(x[:, 0], (e,), self.norm.weight[:e], self.norm.bias[:e], eps)
        return F.linear(x, self.head.weight[:, :e], self.head.bias)


def augment(x, pad, hflip, g):
    """Random shift by [-pad, pad] with zero fill (pixel space) and flip with p 1/2, per image of x [B, C, H, W]."""
    B, C, H, W = x.shape
    if pad == 0 and not hflip:
        return x
    dy = torch.randint(-pad, pad + 1, (B,), generator=g) if pad else torch.zeros(B, dtype=torch.long)
    dx = torch.randint(-pad, pad + 1, (B,), generator=g) if pad else torch.zeros(B, dtype=torch.long)
    flip = torch.rand(B, generator=g) < .5 if hflip else torch.zeros(B, dtype=torch.bool)
    ys, xs = torch.arange(H), torch.arange(W)
    rows = ys[None] + dy[:, None] + pad                                     # [B, H] in padded coords
    cols = torch.where(flip[:, None], W - 1 - xs[None], xs[None]) + dx[:, None] + pad  # [B, W]
    xp = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)                 # [B, H+2p, W+2p, C]
    return xp[torch.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@torch.no_grad()
def accuracy(net, arch, X, Y, norm, bs):
    net.eval()
    correct = 0
    for i in range(0, len(Y), bs):
        correct += (net(norm(X[i:i + bs].float()), arch).argmax(-1) == Y[i:i + bs]).sum().item()
    net.train()
    return correct / len(Y)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="vitnas run dir (recipe.toml, space.toml, data-split.json)")
    ap.add_argument("--seed", type=int, help="default: the recipe's seed")
    ap.add_argument("--init", default="torch_default", choices=["torch_default", "trunc_normal_0.02", "xavier_uniform"])
    ap.add_argument("--wd-skip-1d", action="store_true", help="no weight decay on biases, LayerNorm, cls, pos (timm style)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, help="stop after N steps (smoke tests), then still evaluate")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    started = time.time()
    torch.set_num_threads(args.threads)
    load = lambda name: tomllib.load(open(os.path.join(args.run, name), "rb"))
    R, S = load("recipe.toml"), Space(load("space.toml"))
    split = json.load(open(os.path.join(args.run, "data-split.json")))
    seed = R["seed"] if args.seed is None else args.seed
    D, samp, lossc, O, T = R["data"], R["sampler"], R["loss"], R["optimizer"], R["train"]
    if D.get("format", "idx") != "idx":
        die(f"data.format {D['format']!r}: only idx is supported")
    if samp["kind"] not in ("sandwich", "uniform"):
        die(f"sampler.kind {samp['kind']!r}: only sandwich and uniform are supported")
    distill = lossc.get("distill", {}).get("kind", "none")
    if distill not in ("kl", "none"):
        die(f"loss.distill.kind {distill!r}: only kl and none are supported")
    if R.get("init_from"):
        die("init_from (pretrained start) is not supported")
    if R.get("init", args.init) != args.init:
        print(f"note: the vitnas run used init {R['init']}, this run uses {args.init}", flush=True)

    # data: the same split as the vitnas run; test = the whole t10k split
    Xtr, Ytr = load_split(split["data_dir"], "train")
    Xte, Yte = load_split(split["data_dir"], "t10k")
    if Xtr.shape[1:] != (S.chans, S.image, S.image):
        die(f"images {tuple(Xtr.shape[1:])} do not match the space's input {S.chans}x{S.image}x{S.image}")
    tr, va = torch.tensor(split["train"]), torch.tensor(split["val"])
    Xva, Yva = Xtr[va], Ytr[va]
    if "normalize" in D:
        mean, std = D["normalize"]["mean"], D["normalize"]["std"]
    else:  # vitnas computes them from the training split when the recipe has none
        v = Xtr[tr].double() / 255
        mean, std = v.mean((0, 2, 3)).tolist(), v.std((0, 2, 3)).tolist()
        print(f"note: no data.normalize in the recipe; computed mean {mean} std {std}", flush=True)
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    norm = lambda x: (x / 255 - mean_t) / std_t
    aug = D.get("augment", {})
    pad, hflip = aug.get("crop_padding", 0), aug.get("hflip", False)
    ebs = D.get("eval_batch_size", 256)

    # model, optimizer, schedule
    torch.manual_seed(seed)
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    net = Supernet(S, args.init)
    wd = O["weight_decay"]
    if args.wd_skip_1d:
        named = list(net.named_parameters())
        skip = [p for n, p in named if p.dim() <= 1 or n in ("cls", "pos")]
        keep = [p for n, p in named if not (p.dim() <= 1 or n in ("cls", "pos"))]
        groups = [{"params": keep, "weight_decay": wd}, {"params": skip, "weight_decay": 0.0}]
    else:
        groups = [{"params": list(net.parameters()), "weight_decay": wd}]
    opt = torch.optim.AdamW(groups, lr=O["lr"], betas=tuple(O.get("betas", (0.9, 0.999))), eps=O.get("eps", 1e-8))
    bs, epochs = T["batch_size"], T["epochs"]
    peak = O["lr"] * bs / O["lr_reference_batch"] if O.get("lr_reference_batch") else O["lr"]
    spe = len(tr) // bs
    total = epochs * spe
    warm = round(O["warmup_epochs"] * spe)

    def lr_at(s):
        if s < warm:
            return O["warmup_lr"] + (peak - O["warmup_lr"]) * s / warm
        prog = min(1.0, (s - warm) / max(1, total - warm))
        return O["min_lr"] + 0.5 * (peak - O["min_lr"]) * (1 + math.cos(math.pi * prog))

    ls, clip = lossc.get("label_smoothing", 0.0), O.get("clip_grad_norm")
    log_every = T.get("log_every", 50)
    end = min(total, args.max_steps) if args.max_steps else total
    print(f"pytorch {R['name']} seed {seed} init {args.init}: {len(tr)} train / {len(va)} val / {len(Yte)} test,"
          f" {total} steps ({spe}/epoch), peak lr {peak:g}, {sum(p.numel() for p in net.parameters())} params", flush=True)
    largest, smallest = S.arch(rng, "largest"), S.arch(rng, "smallest")
    step, epochs_out = 0, []
    for ep in range(epochs):
        perm = tr[torch.randperm(len(tr), generator=g)]
        for i in range(spe):
            if step >= end:
                break
            idx = perm[i * bs:(i + 1) * bs]
            x, y = norm(augment(Xtr[idx].float(), pad, hflip, g)), Ytr[idx]
            lr = lr_at(step)
            for grp in opt.param_groups:
                grp["lr"] = lr
            opt.zero_grad(set_to_none=True)
            if samp["kind"] == "sandwich":
                archs = [largest, smallest] + [S.arch(rng, "random") for _ in range(samp["num_random"])]
            else:
                archs = [S.arch(rng, "random")]
            losses, teacher = [], None
            for j, a in enumerate(archs):
                out = net(x, a)
                if teacher is not None and distill == "kl":
                    loss = F.kl_div(out.log_softmax(-1), teacher, reduction="batchmean")
                else:
                    loss = F.cross_entropy(out, y, label_smoothing=ls)
                if j == 0 and samp["kind"] == "sandwich":
                    teacher = out.detach().softmax(-1)
                loss.backward()
                losses.append(loss.item())
            if not all(map(math.isfinite, losses)):
                die(f"step {step + 1}: non-finite loss {losses}")
            if clip:
                nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
            step += 1
            if step % log_every == 0 or step == end:
                print(f"step {step}/{total} epoch {ep + 1} loss {' '.join(f'{l:.4f}' for l in losses)} lr {lr:.2e}"
                      f" ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)
        vl, vs = (accuracy(net, a, Xva, Yva, norm, ebs) for a in (largest, smallest))
        epochs_out.append({"epoch": ep + 1, "step": step, "val_largest": vl, "val_smallest": vs})
        print(f"epoch {ep + 1} val largest {vl:.4f} smallest {vs:.4f} (t={time.time() - started:.0f}s)", flush=True)
        if step >= end:
            break
    tl, ts = (accuracy(net, a, Xte, Yte, norm, ebs) for a in (largest, smallest))
    wall = time.time() - started
    print(f"test largest {tl:.4f} smallest {ts:.4f} ({step}/{total} steps, {wall:.0f}s)", flush=True)
    if args.out:
        res = {"side": "pytorch", "init": args.init, "seed": seed, "wd_skip_1d": args.wd_skip_1d, "steps": step,
               "total_steps": total, "epochs": epochs_out, "test_largest": tl, "test_smallest": ts, "wall_s": wall}
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
