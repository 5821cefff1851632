"""PyTorch reference for the NLP supernet benchmark workloads (CPU).

Origin: ../shared/bench/torch_bert_reference.py (the benchmark's text peer),
copied here and extended for issue 32 with the sizes `vitnas bench` takes: a
text space file or explicit dims, --seq/--seq-len, BERT's pooler when the
space asks for it (space_args.py), untimed warm-up steps, and the same size
fields in its JSON (tokens, ms_per_step, throughput, model_gflop_per_step,
peak_rss_mib from ru_maxrss). With none of the new options it runs exactly
the original workload.

A weight-entangled BERT encoder supernet (post-LN, as BERT and
all-MiniLM-L6-v2 are) written directly in PyTorch: every linear, layer norm
and embedding holds the largest shape and a subnet uses its leading slice.
Elastic: depth, hidden size, per-layer heads (head dim 32) and per-layer FFN
size. Largest = all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads,
FFN 1536, vocab 30522). Classification on the mean-pooled last hidden state
(padding masked out), 2 classes. It is the "what a user would write instead"
peer for the benchmark, not a product.

  python torch_bert_reference.py train --steps 10 --batch 32 --seq 128   # sandwich steps/s
  python torch_bert_reference.py infer --batch 1 --seq 128 --iters 100   # largest subnet latency
  python torch_bert_reference.py infer --batch 64 --seq 128 --iters 5    # largest subnet throughput
  python torch_bert_reference.py infer --space search_spaces/bert-minilm-mean.toml --seq-len 512
Prints one JSON line. Threads: torch.set_num_threads(N) from --threads.
Inputs are random token ids with the last quarter of every second row padded.
Peak memory is the process's (run one size per process).
"""
import argparse, json, math, os, random, sys, time
import torch, torch.nn as nn, torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import space_args  # noqa: E402

SPACE = dict(hidden=[192, 256, 320, 384], depth=[2, 3, 4, 5, 6], heads=[4, 6, 8, 12],
             ffn=[384, 768, 1152, 1536], head_dim=32, vocab=30522, max_pos=512, classes=2, eps=1e-12,
             type_vocab=2, seq=128, pooling="mean", name="bert-minilm-mean")


def sample(rng, which):
    S = SPACE
    if which in ("max", "min"):
        pick = max if which == "max" else min
        d = pick(S["depth"])
        return dict(hidden=pick(S["hidden"]), depth=d, heads=[pick(S["heads"])] * d, ffn=[pick(S["ffn"])] * d)
    d = rng.choice(S["depth"])
    return dict(hidden=rng.choice(S["hidden"]), depth=d,
                heads=[rng.choice(S["heads"]) for _ in range(d)], ffn=[rng.choice(S["ffn"]) for _ in range(d)])


class Supernet(nn.Module):
    def __init__(self):
        super().__init__()
        S = SPACE; U = S["super"]; E = U["hidden"]; D = U["depth"]; H = U["qkv"]; M = U["ffn"]
        self.word = nn.Embedding(S["vocab"], E); self.pos = nn.Embedding(S["max_pos"], E)
        self.tok_type = nn.Embedding(S["type_vocab"], E)
        self.ln_emb = nn.LayerNorm(E, eps=S["eps"])
        self.blocks = nn.ModuleList()
        for _ in range(D):
            b = nn.Module()
            b.q = nn.Linear(E, H); b.k = nn.Linear(E, H); b.v = nn.Linear(E, H); b.o = nn.Linear(H, E)
            b.ln1 = nn.LayerNorm(E, eps=S["eps"]); b.fc1 = nn.Linear(E, M); b.fc2 = nn.Linear(M, E)
            b.ln2 = nn.LayerNorm(E, eps=S["eps"])
            self.blocks.append(b)
        if S["pooling"] == "pooler":
            self.pooler = nn.Linear(E, E)
        self.head = nn.Linear(E, S["classes"])

    def forward(self, ids, mask, a):
        S = SPACE; e = a["hidden"]; B, T = ids.shape; hd = S["head_dim"]
        pos = torch.arange(T).unsqueeze(0)
        x = self.word.weight[ids, :e] + self.pos.weight[pos, :e] + self.tok_type.weight[0, :e]
        x = F.layer_norm(x, (e,), self.ln_emb.weight[:e], self.ln_emb.bias[:e], S["eps"])
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        def block(x, i):
            b = self.blocks[i]; h = a["heads"][i]; qd = h * hd; m = a["ffn"][i]
            q = F.linear(x, b.q.weight[:qd, :e], b.q.bias[:qd]).view(B, T, h, hd).transpose(1, 2)
            k = F.linear(x, b.k.weight[:qd, :e], b.k.bias[:qd]).view(B, T, h, hd).transpose(1, 2)
            v = F.linear(x, b.v.weight[:qd, :e], b.v.bias[:qd]).view(B, T, h, hd).transpose(1, 2)
            att = (q @ k.transpose(-1, -2) / math.sqrt(hd) + bias).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, qd)
            x = F.layer_norm(x + F.linear(y, b.o.weight[:e, :qd], b.o.bias[:e]), (e,),
                             b.ln1.weight[:e], b.ln1.bias[:e], S["eps"])
            y = F.gelu(F.linear(x, b.fc1.weight[:m, :e], b.fc1.bias[:m]))
            return F.layer_norm(x + F.linear(y, b.fc2.weight[:e, :m], b.fc2.bias[:e]), (e,),
                                b.ln2.weight[:e], b.ln2.bias[:e], S["eps"])
        for i in range(a["depth"]):
            # --checkpoint: every block but the last recomputed in the backward (vitnas's recompute = "blocks")
            if CHECKPOINT and torch.is_grad_enabled() and i + 1 < a["depth"]:
                x = torch.utils.checkpoint.checkpoint(block, x, i, use_reentrant=False)
            else:
                x = block(x, i)
        if S["pooling"] == "pooler":
            pooled = torch.tanh(F.linear(x[:, 0], self.pooler.weight[:e, :e], self.pooler.bias[:e]))
        else:
            w = mask.unsqueeze(-1).float()
            pooled = (x * w).sum(1) / w.sum(1).clamp(min=1.0)
        return F.linear(pooled, self.head.weight[:, :e], self.head.bias)


CHECKPOINT = False


def sized(out, ms, throughput, macs_per_step):
    S = SPACE
    out.update(space=S["name"], tokens=S["tokens"], ms_per_step=ms, throughput=throughput,
               throughput_unit="sequences_per_s", model_gflop_per_step=2 * macs_per_step / 1e9,
               peak_rss_mib=space_args.peak_rss_mib(), torch=torch.__version__,
               cpu_capability=torch.backends.cpu.get_cpu_capability())
    return out


def main():
    global SPACE, CHECKPOINT
    ap = argparse.ArgumentParser(); ap.add_argument("mode", choices=["train", "infer"])
    ap.add_argument("--checkpoint", action="store_true",
                    help="train: torch.utils.checkpoint around every block but the last")
    ap.add_argument("--steps", type=int, default=10); ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=100); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, help="untimed steps (train, default 2) or batches (infer, default 5)")
    space_args.add_text_args(ap)
    args = ap.parse_args(); torch.set_num_threads(args.threads); torch.manual_seed(0); rng = random.Random(0)
    SPACE = space_args.text_space(args, SPACE); S = SPACE; seq = S["seq"]; CHECKPOINT = args.checkpoint
    net = Supernet()
    ids = torch.randint(1000, S["vocab"], (args.batch, seq))
    mask = torch.ones(args.batch, seq, dtype=torch.long)
    mask[1::2, seq - seq // 4:] = 0
    y = torch.randint(0, S["classes"], (args.batch,))
    if args.mode == "train":
        opt = torch.optim.AdamW(net.parameters(), lr=5e-5, weight_decay=0.01)
        macs = [0]
        def step():
            opt.zero_grad(set_to_none=True)
            a = sample(rng, "max"); macs[0] += space_args.text_macs(S, a)
            big = net(ids, mask, a); F.cross_entropy(big, y).backward()
            t = big.detach().softmax(-1)
            for which in ["min", "rand", "rand"]:
                a = sample(rng, which); macs[0] += space_args.text_macs(S, a)
                s = net(ids, mask, a)
                F.kl_div(s.log_softmax(-1), t, reduction="batchmean").backward()
            opt.step()
        for _ in range(2 if args.warmup is None else args.warmup): step()
        macs[0] = 0
        t0 = time.perf_counter()
        for _ in range(args.steps): step()
        dt = time.perf_counter() - t0
        out = {"mode": "train", "batch": args.batch, "seq": seq, "steps_per_s": args.steps / dt,
               "sequences_per_s": args.steps * args.batch / dt, "threads": args.threads,
               "checkpoint": args.checkpoint}
        print(json.dumps(sized(out, 1e3 * dt / args.steps, args.steps * args.batch / dt,
                               3 * macs[0] * args.batch / args.steps)))
    else:
        net.eval(); a = sample(rng, "max")
        with torch.no_grad():
            for _ in range(5 if args.warmup is None else args.warmup): net(ids, mask, a)
            t0 = time.perf_counter()
            for _ in range(args.iters): net(ids, mask, a)
            dt = time.perf_counter() - t0
        out = {"mode": "infer", "batch": args.batch, "seq": seq, "ms_per_batch": 1e3 * dt / args.iters,
               "sequences_per_s": args.iters * args.batch / dt, "threads": args.threads}
        print(json.dumps(sized(out, 1e3 * dt / args.iters, args.iters * args.batch / dt,
                               space_args.text_macs(S, a) * args.batch)))


if __name__ == "__main__":
    main()
