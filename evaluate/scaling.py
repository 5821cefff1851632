#!/usr/bin/env python3
"""Cost against work (issue 32): vitnas and the PyTorch peers, and ONNX
Runtime at batch 1, at the sizes users run, one size per process and the
sides one right after the other; a CSV, a summary of the ratios and an SVG
of milliseconds against tokens.

    python3 evaluate/scaling.py [--torch-py ../torchenv/bin/python] [--ort-py /tmp/ortenv/bin/python]
    python3 evaluate/scaling.py --quick              # every size once, tiny counts: a smoke test
    python3 evaluate/scaling.py --only vit --budget 30
    python3 evaluate/scaling.py --replot evaluate/results/scaling/<date>/scaling.csv   # summary and SVG again
    PART=scaling evaluate/bench.sh ../torchenv/bin/python   # the same, from bench.sh

Sizes:
  * ViT: the autoformer-tiny space (search_spaces/autoformer-tiny.toml;
    AutoFormer-T: embed 192-240, depth 12-14, 3-4 heads x 64; 3 channels,
    1000 classes) at 28² patch 4 (50 tokens), 224² patch 16 (197, the
    space's own geometry) and 384² patch 16 (577): one model, so the
    growth is the sequence's alone;
  * text: bert-minilm with mean pooling (search_spaces/bert-minilm-mean.toml,
    the text peer's head; largest = all-MiniLM-L6-v2's shape) at 64, 128,
    256 and 512 tokens (every second sequence's last quarter padded);
  * modes: sandwich training at batch 32 (`vitnas bench train`), inference
    of the largest subnet at batch 1 and 64 (`vitnas bench infer`); ONNX
    Runtime at batch 1 on the same subnet exported by vitnas
    (`vitnas bench infer --onnx`, evaluate/onnx_bench.py).

Repetitions: each timed measurement aims at --budget seconds (default 10)
at an assumed --gflops-guess rate, between --min-reps (1) and --max-reps; one
untimed warm-up step or batch first (train at batch 32 runs 1, infer
max(1, reps // 5)). --quick: 1 timed repetition, 1 warm-up batch for
inference, none for training (the first step then includes the first
allocations: a smoke test, not a figure).

Output (--out, default evaluate/results/scaling/<UTC date>/):
  * scaling.csv: side, model, tokens, batch, mode, ms_per_step,
    throughput (images or sequences per second), peak_mb (peak resident
    memory of the process, MiB: VmHWM for vitnas, ru_maxrss for the
    Python sides, each size in its own process), flops (model FLOPs of one
    step: 2 per multiply-add of the full model as src/space/cost.rs counts
    them, training ~ 3 x forward; the sides' own random subnets in
    training), then reps, warmup, wall_s (the process's wall time), simd,
    space, error;
  * scaling.jsonl: every side's JSON line as printed;
  * summary.md: the ratios against the issue's targets, per size, and how
    each side's ms per GFLOP grows from the smallest to the largest size
    (<= 1: the time follows the FLOPs or better);
  * scaling.svg: ms against tokens (log-log; vitnas solid, PyTorch dashed,
    ONNX Runtime dotted), above ms per model GFLOP against tokens.

Where the time goes at the largest size (perf is at /usr/bin/perf; the
release build has symbols but no debug info, so a flat profile by function):
    perf record -F 499 -o /tmp/vitnas-577.perf -- target/release/vitnas bench train \\
        --space search_spaces/autoformer-tiny.toml --image-size 384 --patch-size 16 \\
        --batch 32 --steps 2 --warmup 1 --threads 2
    perf report -i /tmp/vitnas-577.perf --no-children --percent-limit 0.5 --stdio | head -60
(about 3 minutes on 2 cores; `--infer`: `bench infer ... --batch 64 --iters 3`; the text
side: `bench train --space search_spaces/bert-minilm-mean.toml --seq-len 512`).
Call graphs need debug info: CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
cargo build --release --target-dir target-prof (a full rebuild), then
perf record --call-graph dwarf.

The machine must be quiet: every figure is a ratio of two runs made one after
the other, and noise larger than a margin means running again.
"""
import argparse
import csv
import datetime
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "evaluate", "peers"))
import space_args  # noqa: E402  (stdlib only: the peers' FLOP counts)

VIT_SPACE = "search_spaces/autoformer-tiny.toml"
TEXT_SPACE = "search_spaces/bert-minilm-mean.toml"
# (tokens, vitnas/peer size flags)
VIT_SIZES = [(50, ["--image-size", "28", "--patch-size", "4"]),
             (197, ["--image-size", "224", "--patch-size", "16"]),
             (577, ["--image-size", "384", "--patch-size", "16"])]
TEXT_SIZES = [(t, ["--seq-len", str(t)]) for t in (64, 128, 256, 512)]
MODES = [("train", 32), ("infer", 1), ("infer", 64)]
COLUMNS = ["side", "model", "tokens", "batch", "mode", "ms_per_step", "throughput", "peak_mb", "flops",
           "reps", "warmup", "wall_s", "simd", "space", "error", "rounds"]
TARGETS = {  # the targets, vitnas / peer
    ("train", 32): ("throughput", ">=", 1.3),
    ("infer", 1): ("ms_per_step", "<=", 0.5),
    ("infer", 64): ("throughput", ">=", 1.2),
}


class Args(argparse.Namespace):
    pass


def model_gflop(model, size_flags, mode, batch):
    """Expected model GFLOPs of one step (for sizing the repetitions)."""
    ns = argparse.Namespace(space=os.path.join(ROOT, VIT_SPACE if model == "vit" else TEXT_SPACE),
                            image_size=None, patch_size=None, chans=None, classes=None, embed=None,
                            depth=None, heads=None, mlp=None, head_dim=None, seq=None, hidden=None,
                            ffn=None, pooling=None)
    for flag, val in zip(size_flags[::2], size_flags[1::2]):
        setattr(ns, {"--image-size": "image_size", "--patch-size": "patch_size", "--seq-len": "seq"}[flag], int(val))
    if model == "vit":
        S = space_args.vit_space(ns, {})
        big = dict(embed=max(S["embed"]), depth=max(S["depth"]))
        small = dict(embed=min(S["embed"]), depth=min(S["depth"]))
        for a, pick in ((big, max), (small, min)):
            a.update(heads=[pick(S["heads"])] * a["depth"], mlp=[pick(S["mlp"])] * a["depth"])
        mx, mn = space_args.vit_macs(S, big), space_args.vit_macs(S, small)
    else:
        S = space_args.text_space(ns, {})
        big = dict(hidden=max(S["hidden"]), depth=max(S["depth"]))
        small = dict(hidden=min(S["hidden"]), depth=min(S["depth"]))
        for a, pick in ((big, max), (small, min)):
            a.update(heads=[pick(S["heads"])] * a["depth"], ffn=[pick(S["ffn"])] * a["depth"])
        mx, mn = space_args.text_macs(S, big), space_args.text_macs(S, small)
    if mode == "train":  # max + min + 2 random ~ 2 (max + min); ~3 x forward
        return 6 * batch * 2 * (mx + mn) / 1e9
    return 2 * batch * mx / 1e9


def reps_for(a, gflop, mode, batch):
    if a.quick:
        return 1, (0 if mode == "train" else 1)
    reps = round(a.budget * a.gflops_guess / max(gflop, 1e-9))
    reps = max(a.min_reps, min(a.max_reps, reps))
    warmup = 1 if mode == "train" else max(1, reps // 5)
    return reps, warmup


def run(cmd, timeout):
    """One side's process: (JSON or None, wall seconds, error text)."""
    print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0, f"timed out after {timeout} s"
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return None, wall, (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:300]
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line), wall, ""
    return None, wall, "no JSON line in the output"


def row(side, model, tokens, batch, mode, out, wall, err, reps, warmup, space):
    r = dict(side=side, model=model, tokens=tokens, batch=batch, mode=mode, reps=reps, warmup=warmup,
             wall_s=round(wall, 2), space=space, error=err)
    if out:
        r.update(ms_per_step=out.get("ms_per_step"), throughput=out.get("throughput"),
                 peak_mb=out.get("peak_rss_mib"),
                 flops=out["model_gflop_per_step"] * 1e9 if out.get("model_gflop_per_step") is not None else None,
                 simd=out.get("simd") or out.get("cpu_capability") or "")
    return r


def measure(a, model, tokens, flags, mode, batch, rows, raw, tmp):
    space = VIT_SPACE if model == "vit" else TEXT_SPACE
    gflop = model_gflop(model, flags, mode, batch)
    reps, warmup = reps_for(a, gflop, mode, batch)
    th = ["--threads", str(a.threads)]
    common = ["--space", space] + flags + ["--batch", str(batch), "--warmup", str(warmup)] + th
    count = ["--steps", str(reps)] if mode == "train" else ["--iters", str(reps)]
    peer = os.path.join("evaluate", "peers", "torch_reference.py" if model == "vit" else "torch_bert_reference.py")
    print(f"{model} {tokens} tokens, {mode} batch {batch}: {reps} reps (~{gflop:.1f} GFLOP each)", file=sys.stderr)
    sides = [("vitnas", [a.vitnas, "bench", mode] + common + count)]
    if mode == "train" and a.recompute:
        # the same steps keeping each block's input alone (`[train] recompute = "blocks"`)
        sides.append(("vitnas-recompute", [a.vitnas, "bench", mode] + common + count + ["--recompute", "blocks"]))
    if a.torch_py:
        sides.append(("pytorch", [a.torch_py, peer, mode] + common + count))
        if mode == "train" and a.recompute:
            # PyTorch's own activation checkpointing, the same blocks recomputed
            sides.append(("pytorch-checkpoint", [a.torch_py, peer, mode] + common + count + ["--checkpoint"]))
    onnx = None
    if mode == "infer" and batch == 1 and a.ort_py:
        onnx = os.path.join(tmp, f"{model}-{tokens}.onnx")
        exp = [a.vitnas, "bench", "infer", "--space", space] + flags + ["--iters", "1", "--warmup", "0", "--onnx", onnx] + th
        _, ewall, err = run(exp, a.timeout)
        if err:
            rows.append(row("onnxruntime", model, tokens, batch, mode, None, 0.0, f"export: {err}", reps, warmup, space))
            onnx = None
        else:
            seq = ["--seq", str(tokens)] if model == "text" else []
            sides.append(("onnxruntime", [a.ort_py, "evaluate/onnx_bench.py", onnx, "--batch", "1", "--iters", str(reps),
                                          "--warmup", str(warmup), "--threads", str(a.threads)] + seq))
    # Batch 1 is milliseconds per call and drifts with the machine: the
    # sides take turns for `rounds` rounds and each keeps its median.
    rounds = a.rounds if (mode == "infer" and batch == 1) else 1
    results = {side: [] for side, _ in sides}
    for _ in range(rounds):
        for side, cmd in sides:
            out, wall, err = run(cmd, a.timeout)
            if out and side == "onnxruntime":
                out["model_gflop_per_step"] = gflop
                out["simd"] = out.get("runtime", "")
            if out:
                raw.write(json.dumps(dict(out, side=side, model=model)) + "\n")
            results[side].append((out, wall, err))
            what = err or "%.2f ms/step, peak %.0f MiB" % (out["ms_per_step"], out.get("peak_rss_mib") or 0)
            print(f"    {side}: {what} ({wall:.1f} s wall)", file=sys.stderr, flush=True)
    for side, _ in sides:
        done = [r for r in results[side] if r[0]]
        if not done:
            out, wall, err = results[side][-1]
            rows.append(row(side, model, tokens, batch, mode, None, wall, err, reps, warmup, space))
            continue
        done.sort(key=lambda r: r[0]["ms_per_step"])
        out, wall, _ = done[len(done) // 2]
        r = row(side, model, tokens, batch, mode, out, wall, "", reps, warmup, space)
        r["rounds"] = " ".join("%.3f" % d[0]["ms_per_step"] for d in results[side] if d[0])
        rows.append(r)
    if onnx and os.path.exists(onnx):
        os.remove(onnx)


def key(r):
    return (r["model"], r["mode"], int(r["batch"]))


def gemm_peak(a, rows):
    """The gemm crate's GFLOP/s on 1024³ with the sweep's threads, best of 3
    processes, as a row (side "gemm", mode "peak", throughput = GFLOP/s)."""
    best = 0.0
    for _ in range(3):
        out, _, err = run([a.vitnas, "bench", "gemm", "--n", "1024", "--threads", str(a.threads)], a.timeout)
        if out:
            best = max(best, out["gflops"])
    rows.append(dict(side="gemm", model="-", tokens=0, batch=0, mode="peak", throughput=best, error="",
                     simd="avx512" if out and out.get("gemm_avx512") else "avx2"))
    print(f"gemm peak: {best:.0f} GFLOP/s", file=sys.stderr, flush=True)


def bounds(rows, ok):
    """What the batch-1 targets ask: the GFLOP/s that <= 0.8x ORT and <= 0.5x
    PyTorch need, against the best gemm rate measured in the sweep."""
    peaks = [float(r["throughput"]) for r in rows if r["side"] == "gemm" and r.get("throughput")]
    if not peaks:
        return []
    peak = max(peaks)
    by = {(r["side"], r["model"], int(r["tokens"])): r for r in ok if r["mode"] == "infer" and int(r["batch"]) == 1}
    lines = ["", f"What batch-1 latency targets ask of the machine (model GFLOP per call / the time the target allows), "
                 f"against the best gemm rate measured in this sweep, {peak:.0f} GFLOP/s (1024³, the same threads):", "",
             "| model | tokens | vitnas GFLOP/s (% of peak) | <= 0.8x ORT needs (% of peak) | <= 0.5x PyTorch needs (% of peak) |",
             "|---|---|---|---|---|"]
    for (side, model, tokens), v in sorted(by.items(), key=lambda kv: (kv[0][1] != "vit", kv[0][2])):
        if side != "vitnas" or not v.get("flops"):
            continue
        g = v["flops"] / 1e9
        rate = lambda ms: g / (ms / 1e3)
        cell = lambda ms: f"{rate(ms):.0f} ({100 * rate(ms) / peak:.0f} %)"
        o, p = by.get(("onnxruntime", model, tokens)), by.get(("pytorch", model, tokens))
        lines.append(f"| {model} | {tokens} | {cell(v['ms_per_step'])} | {cell(0.8 * o['ms_per_step']) if o else ''} | "
                     f"{cell(0.5 * p['ms_per_step']) if p else ''} |")
    return lines


def summary(rows):
    ok = [r for r in rows if not r["error"] and r.get("ms_per_step") is not None]
    by = {(r["side"], r["model"], r["mode"], int(r["batch"]), int(r["tokens"])): r for r in ok}
    lines = ["| model | tokens | mode | batch | vitnas ms | PyTorch ms | ratio | target | peak MiB vitnas / PyTorch | ratio (<= 0.5) | vs ORT ms (<= 0.8) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (side, model, mode, batch, tokens), v in sorted(by.items(), key=lambda kv: (kv[0][1] != "vit", kv[0][2], kv[0][3], kv[0][4], kv[0][0])):
        if not side.startswith("vitnas"):
            continue
        p = by.get(("pytorch", model, mode, batch, tokens))
        pc = by.get(("pytorch-checkpoint", model, mode, batch, tokens)) if side == "vitnas-recompute" else None
        o = by.get(("onnxruntime", model, mode, batch, tokens))
        field, op, target = TARGETS[(mode, batch)]
        ratio = mem = ort = ""
        pms = ""
        if p:
            pms = f"{p['ms_per_step']:.2f}"
            ratio = f"{v[field] / p[field]:.2f}x"
            if v.get("peak_mb") and p.get("peak_mb"):
                mem = f"{v['peak_mb'] / p['peak_mb']:.2f}x"
        if o:
            ort = f"{o['ms_per_step']:.2f} ({v['ms_per_step'] / o['ms_per_step']:.2f}x)"
        pm = f"{v.get('peak_mb') or 0:.0f} / {p.get('peak_mb') or 0:.0f}" if p else f"{v.get('peak_mb') or 0:.0f} / -"
        what = "throughput" if field == "throughput" else "latency"
        label = mode + (" (recompute blocks)" if side == "vitnas-recompute" else "")
        lines.append(f"| {model} | {tokens} | {label} | {batch} | {v['ms_per_step']:.2f} | {pms} | {ratio} | {what} {op} {target}x | {pm} | {mem} | {ort} |")
        if pc:
            cm = f"{v['peak_mb'] / pc['peak_mb']:.2f}x" if v.get("peak_mb") and pc.get("peak_mb") else ""
            lines.append(f"| {model} | {tokens} | {label}, against PyTorch checkpointed | {batch} | {v['ms_per_step']:.2f} | "
                         f"{pc['ms_per_step']:.2f} | {v[field] / pc[field]:.2f}x | {what} {op} {target}x | "
                         f"{v.get('peak_mb') or 0:.0f} / {pc.get('peak_mb') or 0:.0f} | {cm} |  |")
    lines += ["", "Growth of ms per model GFLOP from the smallest to the largest size (<= 1.00: cost grows no faster than the FLOPs):", "",
              "| side | model | mode | batch | tokens | ms/GFLOP first -> last | growth |", "|---|---|---|---|---|---|---|"]
    series = {}
    for r in ok:
        if r.get("flops"):
            series.setdefault((r["side"], key(r)), []).append((int(r["tokens"]), r["ms_per_step"] / (r["flops"] / 1e9)))
    for (side, (model, mode, batch)), pts in sorted(series.items()):
        pts.sort()
        if len(pts) > 1:
            lines.append(f"| {side} | {model} | {mode} | {batch} | {pts[0][0]} -> {pts[-1][0]} | "
                         f"{pts[0][1]:.3f} -> {pts[-1][1]:.3f} | {pts[-1][1] / pts[0][1]:.2f}x |")
    lines += bounds(rows, ok)
    return "\n".join(lines) + "\n"


# --- the plot, written by hand (no plotting library needed) ---------------

COLORS = {("train", 32): "#1f77b4", ("infer", 1): "#d62728", ("infer", 64): "#2ca02c"}
DASH = {"vitnas": "", "vitnas-recompute": "12,3,2,3", "pytorch": "7,4", "pytorch-checkpoint": "7,2,2,2",
        "onnxruntime": "2,3"}


def svg(rows, title):
    ok = [r for r in rows if not r["error"] and r.get("ms_per_step")]
    W, H, panel_w, panel_h, ml, mt = 1100, 780, 430, 270, 80, 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16">{title}</text>']
    for col, model in enumerate(["vit", "text"]):
        for rowi, metric in enumerate(["ms", "ms_per_gflop"]):
            x0 = ml + col * (panel_w + 120)
            y0 = mt + rowi * (panel_h + 90)
            pts = {}
            for r in ok:
                if r["model"] != model:
                    continue
                v = r["ms_per_step"] if metric == "ms" else (r["ms_per_step"] / (r["flops"] / 1e9) if r.get("flops") else None)
                if v:
                    pts.setdefault((r["side"], key(r)), []).append((int(r["tokens"]), v))
            allp = [p for s in pts.values() for p in s]
            name = "ViT (autoformer-tiny)" if model == "vit" else "BERT (bert-minilm, mean pooling)"
            ylab = "ms per step (log)" if metric == "ms" else "ms per model GFLOP (log)"
            out.append(f'<text x="{x0 + panel_w / 2}" y="{y0 - 10}" text-anchor="middle" font-size="13">{name}: {ylab}</text>')
            out.append(f'<rect x="{x0}" y="{y0}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#444"/>')
            if not allp:
                continue
            xs = [p[0] for p in allp]
            ys = [p[1] for p in allp]
            lx0, lx1 = math.log10(min(xs) / 1.15), math.log10(max(xs) * 1.15)
            ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
            if ly1 == ly0:
                ly1 += 1
            X = lambda v: x0 + (math.log10(v) - lx0) / (lx1 - lx0) * panel_w
            Y = lambda v: y0 + panel_h - (math.log10(v) - ly0) / (ly1 - ly0) * panel_h
            for e in range(ly0, ly1 + 1):
                for m in (1, 2, 5):
                    v = m * 10 ** e
                    if 10 ** ly0 <= v <= 10 ** ly1:
                        y = Y(v)
                        out.append(f'<line x1="{x0}" x2="{x0 + panel_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
                        label = f"{v:,.0f}" if v >= 1 else f"{v:g}"
                        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
            for t in sorted(set(xs)):
                x = X(t)
                out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + panel_h}" stroke="#eee"/>')
                out.append(f'<text x="{x:.1f}" y="{y0 + panel_h + 16}" text-anchor="middle">{t}</text>')
            out.append(f'<text x="{x0 + panel_w / 2}" y="{y0 + panel_h + 34}" text-anchor="middle">tokens per input (log)</text>')
            for (side, k), s in sorted(pts.items()):
                s.sort()
                d = " ".join(f"{X(t):.1f},{Y(v):.1f}" for t, v in s)
                dash = f' stroke-dasharray="{DASH[side]}"' if DASH[side] else ""
                out.append(f'<polyline points="{d}" fill="none" stroke="{COLORS[k[1:]]}" stroke-width="2"{dash}/>')
                for t, v in s:
                    out.append(f'<circle cx="{X(t):.1f}" cy="{Y(v):.1f}" r="3" fill="{COLORS[k[1:]]}"/>')
    ly = H - 40
    items = [(f"{m} batch {b}", COLORS[(m, b)], "") for (m, b) in COLORS] + \
            [(s, "#333", DASH[s]) for s in DASH if any(r["side"] == s for r in rows)]
    for i, (label, color, dash) in enumerate(items):
        x = 40 + i * 150
        d = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{x}" x2="{x + 40}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{d}/>')
        out.append(f'<text x="{x + 46}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def replot(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for c in ("ms_per_step", "throughput", "peak_mb", "flops"):
                r[c] = float(r[c]) if r.get(c) else None
            rows.append(r)
    out_dir = os.path.dirname(os.path.abspath(path))
    date = os.path.basename(out_dir)
    text = f"# Scaling run {date} (summary written again from {os.path.basename(path)})\n\n" + summary(rows)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "scaling.svg"), "w") as f:
        f.write(svg(rows, f"vitnas against PyTorch eager and ONNX Runtime, {date}"))
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vitnas", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "vitnas"))
    ap.add_argument("--torch-py", default="../torchenv/bin/python", help="a Python with torch ('' to skip the peers)")
    ap.add_argument("--ort-py", default="/tmp/ortenv/bin/python", help="a Python with onnxruntime ('' to skip)")
    ap.add_argument("--out", help="default: evaluate/results/scaling/<UTC date>")
    ap.add_argument("--only", choices=["vit", "text"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one repetition per measurement: a smoke test")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds aimed at per timed measurement")
    ap.add_argument("--gflops-guess", type=float, default=80.0, help="GFLOP/s assumed when sizing the repetitions")
    ap.add_argument("--min-reps", type=int, default=1)
    ap.add_argument("--max-reps", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    ap.add_argument("--rounds", type=int, default=3,
                    help="batch-1 latency: rounds in which the sides take turns; each side's median is kept")
    ap.add_argument("--no-recompute", dest="recompute", action="store_false",
                    help="skip the training rows with `--recompute blocks`")
    ap.add_argument("--replot", metavar="CSV", help="only write summary.md and scaling.svg again from a scaling.csv")
    a = ap.parse_args(namespace=Args())
    if a.replot:
        return replot(a.replot)
    for name in ("torch_py", "ort_py"):
        py = getattr(a, name)
        if py and subprocess.run([py, "-c", "import torch" if name == "torch_py" else "import onnxruntime"],
                                 capture_output=True).returncode != 0:
            print(f"--{name.replace('_', '-')} {py}: cannot import {'torch' if name == 'torch_py' else 'onnxruntime'}; that side is skipped",
                  file=sys.stderr)
            setattr(a, name, "")
    if not os.path.exists(os.path.join(ROOT, a.vitnas)) and not os.path.exists(a.vitnas):
        sys.exit(f"{a.vitnas}: no vitnas binary (cargo build --release)")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out_dir = a.out or os.path.join(ROOT, "evaluate", "results", "scaling", date)
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, "tmp")
    os.makedirs(tmp, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    with open(os.path.join(out_dir, "scaling.jsonl"), "w") as raw:
        gemm_peak(a, rows)
        for model, sizes in (("vit", VIT_SIZES), ("text", TEXT_SIZES)):
            if a.only and a.only != model:
                continue
            for tokens, flags in sizes:
                for mode, batch in MODES:
                    measure(a, model, tokens, flags, mode, batch, rows, raw, tmp)
            gemm_peak(a, rows)
    os.rmdir(tmp)
    total = time.perf_counter() - t0
    with open(os.path.join(out_dir, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})
    simd = sorted({r.get("simd", "") for r in rows if r["side"] == "vitnas" and r.get("simd")})
    peaks = [r["throughput"] for r in rows if r["side"] == "gemm"]
    head = (f"# Scaling run {date}{' (--quick: a smoke test, not figures)' if a.quick else ''}\n\n"
            f"{a.threads} threads; vitnas vector math {', '.join(simd) or '?'}; wall time {total / 60:.1f} min; "
            f"gemm peak measured {', '.join('%.0f' % p for p in peaks)} GFLOP/s (start, after each model); "
            f"`{' '.join(sys.argv)}`\n\n")
    text = head + summary(rows)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "scaling.svg"), "w") as f:
        f.write(svg(rows, f"vitnas against PyTorch eager and ONNX Runtime, {a.threads} threads, {date}"))
    print(text)
    print(f"wrote {out_dir}/scaling.csv, summary.md, scaling.svg, scaling.jsonl", file=sys.stderr)


if __name__ == "__main__":
    main()
