"""PyTorch reference for the supernet benchmark workloads (CPU).

Origin: ../shared/bench/torch_reference.py (the benchmark's ViT peer), copied
here and extended for issue 32 with the sizes `vitnas bench` takes: a space
file or explicit dims, image and patch size (space_args.py), untimed warm-up
steps, and the same size fields in its JSON (tokens, ms_per_step, throughput,
model_gflop_per_step, peak_rss_mib from ru_maxrss). With none of the new
options it runs exactly the original workload.

An AutoFormer-style weight-entangled ViT supernet written directly in PyTorch:
every linear / layernorm / embedding holds the largest shape and a subnet uses
the leading slice of it (first k rows / columns), per-layer heads and MLP ratio,
global embed dim and depth. It is the "what a user would write instead" peer
for the benchmark, not a product.

  python torch_reference.py train  --steps 30 --batch 64   # sandwich steps/s
  python torch_reference.py infer  --batch 1 --iters 200    # static subnet latency
  python torch_reference.py train  --space search_spaces/autoformer-tiny.toml --image-size 384 --batch 32
Prints one JSON line with the figures.  Threads: torch.set_num_threads(N) from --threads.
Peak memory is the process's (run one size per process).
"""
import argparse, json, math, os, random, sys, time
import torch, torch.nn as nn, torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import space_args  # noqa: E402

SPACE = dict(embed=[64, 96, 128], depth=[4, 5, 6], heads=[2, 3, 4], mlp=[2.0, 3.0, 4.0],
             head_dim=32, image=28, patch=4, chans=1, classes=10, eps=1e-5, name="fmnist-tiny")

def sample(rng, which):
    S = SPACE
    if which == "max":
        e, d, h, m = max(S["embed"]), max(S["depth"]), max(S["heads"]), max(S["mlp"])
        return dict(embed=e, depth=d, heads=[h] * d, mlp=[m] * d)
    if which == "min":
        e, d, h, m = min(S["embed"]), min(S["depth"]), min(S["heads"]), min(S["mlp"])
        return dict(embed=e, depth=d, heads=[h] * d, mlp=[m] * d)
    d = rng.choice(S["depth"])
    return dict(embed=rng.choice(S["embed"]), depth=d,
                heads=[rng.choice(S["heads"]) for _ in range(d)],
                mlp=[rng.choice(S["mlp"]) for _ in range(d)])

class Supernet(nn.Module):
    def __init__(self):
        super().__init__()
        S = SPACE; U = S["super"]; E = U["embed"]; D = U["depth"]; H = U["qkv"]
        M = U["mlp"]; n = (S["image"] // S["patch"]) ** 2
        self.patch = nn.Linear(S["chans"] * S["patch"] ** 2, E)
        self.cls = nn.Parameter(torch.zeros(1, 1, E)); self.pos = nn.Parameter(torch.randn(1, n + 1, E) * .02)
        self.blocks = nn.ModuleList()
        for _ in range(D):
            b = nn.Module()
            b.ln1 = nn.LayerNorm(E); b.q = nn.Linear(E, H); b.k = nn.Linear(E, H); b.v = nn.Linear(E, H)
            b.o = nn.Linear(H, E); b.ln2 = nn.LayerNorm(E); b.fc1 = nn.Linear(E, M); b.fc2 = nn.Linear(M, E)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(E); self.head = nn.Linear(E, S["classes"])

    def forward(self, x, a):
        S = SPACE; e = a["embed"]; p = S["patch"]; B = x.shape[0]
        x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(B, -1, S["chans"] * p * p)
        x = F.linear(x, self.patch.weight[:e], self.patch.bias[:e])
        x = torch.cat([self.cls[..., :e].expand(B, -1, -1), x], 1) + self.pos[..., :e]
        def block(x, i):
            b = self.blocks[i]; h = a["heads"][i]; hd = S["head_dim"]; qd = h * hd
            m = space_args.mlp_width(e, a["mlp"][i])
            y = F.layer_norm(x, (e,), b.ln1.weight[:e], b.ln1.bias[:e])
            q = F.linear(y, b.q.weight[:qd, :e], b.q.bias[:qd]).view(B, -1, h, hd).transpose(1, 2)
            k = F.linear(y, b.k.weight[:qd, :e], b.k.bias[:qd]).view(B, -1, h, hd).transpose(1, 2)
            v = F.linear(y, b.v.weight[:qd, :e], b.v.bias[:qd]).view(B, -1, h, hd).transpose(1, 2)
            att = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(B, -1, qd)
            x = x + F.linear(y, b.o.weight[:e, :qd], b.o.bias[:e])
            y = F.layer_norm(x, (e,), b.ln2.weight[:e], b.ln2.bias[:e])
            y = F.gelu(F.linear(y, b.fc1.weight[:m, :e], b.fc1.bias[:m]))
            return x + F.linear(y, b.fc2.weight[:e, :m], b.fc2.bias[:e])
        for i in range(a["depth"]):
            # --checkpoint: every block but the last recomputed in the backward (vitnas's recompute = "blocks")
            if CHECKPOINT and torch.is_grad_enabled() and i + 1 < a["depth"]:
                x = torch.utils.checkpoint.checkpoint(block, x, i, use_reentrant=False)
            else:
                x = block(x, i)
        x = F.layer_norm(x[:, 0], (e,), self.norm.weight[:e], self.norm.bias[:e])
        return F.linear(x, self.head.weight[:, :e], self.head.bias)

CHECKPOINT = False


def sized(out, ms, throughput, macs_per_step):
    S = SPACE
    out.update(space=S["name"], tokens=S["tokens"], image_size=S["image"], patch_size=S["patch"],
               ms_per_step=ms, throughput=throughput, throughput_unit="images_per_s",
               model_gflop_per_step=2 * macs_per_step / 1e9, peak_rss_mib=space_args.peak_rss_mib(),
               torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability())
    return out

def main():
    global SPACE, CHECKPOINT
    ap = argparse.ArgumentParser(); ap.add_argument("mode", choices=["train", "infer"])
    ap.add_argument("--checkpoint", action="store_true",
                    help="train: torch.utils.checkpoint around every block but the last")
    ap.add_argument("--steps", type=int, default=30); ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=200); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, help="untimed steps (train, default 3) or batches (infer, default 10)")
    space_args.add_vit_args(ap)
    args = ap.parse_args(); torch.set_num_threads(args.threads); torch.manual_seed(0); rng = random.Random(0)
    SPACE = space_args.vit_space(args, SPACE); S = SPACE; CHECKPOINT = args.checkpoint
    net = Supernet()
    x = torch.rand(args.batch, S["chans"], S["image"], S["image"]); y = torch.randint(0, S["classes"], (args.batch,))
    if args.mode == "train":
        opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.05)
        macs = [0]
        def step():
            opt.zero_grad(set_to_none=True)
            a = sample(rng, "max"); macs[0] += space_args.vit_macs(S, a)
            big = net(x, a); F.cross_entropy(big, y).backward()
            t = big.detach().softmax(-1)
            for which in ["min", "rand", "rand"]:
                a = sample(rng, which); macs[0] += space_args.vit_macs(S, a)
                s = net(x, a)
                F.kl_div(s.log_softmax(-1), t, reduction="batchmean").backward()
            opt.step()
        for _ in range(3 if args.warmup is None else args.warmup): step()
        macs[0] = 0
        t0 = time.perf_counter()
        for _ in range(args.steps): step()
        dt = time.perf_counter() - t0
        out = {"mode": "train", "batch": args.batch, "steps_per_s": args.steps / dt,
               "images_per_s": args.steps * args.batch / dt, "threads": args.threads, "checkpoint": args.checkpoint}
        print(json.dumps(sized(out, 1e3 * dt / args.steps, args.steps * args.batch / dt,
                               3 * macs[0] * args.batch / args.steps)))
    else:
        net.eval(); a = sample(rng, "max")
        with torch.no_grad():
            for _ in range(10 if args.warmup is None else args.warmup): net(x, a)
            t0 = time.perf_counter()
            for _ in range(args.iters): net(x, a)
            dt = time.perf_counter() - t0
        out = {"mode": "infer", "batch": args.batch, "ms_per_batch": 1e3 * dt / args.iters,
               "images_per_s": args.iters * args.batch / dt, "threads": args.threads}
        print(json.dumps(sized(out, 1e3 * dt / args.iters, args.iters * args.batch / dt,
                               space_args.vit_macs(S, a) * args.batch)))

if __name__ == "__main__":
    main()
