#!/usr/bin/env python3
"""Time the architectures of `vitnas latency export-archs` with ONNX Runtime.

    python evaluate/ort_latency.py <dir> --threads T --out lat.csv

<dir> holds arch-<i>.onnx and manifest.json (and, for a text space, the
word_embeddings-<dim>.bin tables the files read as ONNX external data: copy
the directory whole). Each file is timed under HAT's protocol as `vitnas
latency measure` times it (the manifest's warm-up runs, timed runs and trim:
the trimmed mean, the standard deviation of the kept runs and the median of
all runs), with T intra-op threads and sequential execution, on the
manifest's input_shape: images of zeros, or for a text space int64
input_ids drawn uniformly below the vocabulary (seeded by the manifest's
seed, the same ids for every file) and an all-ones attention_mask, both
[batch, seq_len]. The CSV is the
latency dataset `vitnas latency fit` reads: the manifest's space (name,
hash, TOML), this machine (the CPU from /proc/cpuinfo or platform, and
`simd: onnxruntime <version>` as the runtime), then one row per file.

Resumable: run it again with the same arguments to continue an interrupted
file (the header must match; a row cut short is dropped). Needs numpy and
onnxruntime only, so the directory and this script can be copied to any
machine.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

try:
    import onnxruntime as ort
except ImportError:
    sys.exit("onnxruntime is not installed: pip install onnxruntime")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def header(m, threads):
    p = m["protocol"]
    lines = [
        f"# format: {m['dataset_format']}",
        f"# space: {m['space_name']}",
        f"# space_hash: {m['space_hash']}",
        f"# cpu: {cpu_model()}",
        f"# simd: onnxruntime {ort.__version__}",
        "# gemm_avx512: false",
        f"# threads: {threads}",
        f"# batch: {m['batch']}",
        f"# seed: {m['seed']}",
        f"# n: {m['n']}",
        f"# warmup: {p['warmup']}",
        f"# runs: {p['runs']}",
        f"# trim: {p['trim']}",
        f"# runtime: onnxruntime {ort.__version__} (CPUExecutionProvider)",
    ]
    lines += ["#| " + line for line in m["space_toml"].splitlines()]
    return "\n".join(lines) + "\n" + m["columns"] + "\n"


def session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises several types; name the file and why
        sys.exit(
            f"{path}: ONNX Runtime {ort.__version__} cannot load it ({e}); an opset newer "
            "than this ONNX Runtime supports needs a newer onnxruntime"
        )


def inputs(m):
    """The feed of every file: name -> array, from the manifest."""
    shape = m["input_shape"]
    t = m.get("text")
    if t is None:
        return {"pixel_values": np.zeros(shape, dtype=np.float32)}
    if len(shape) != 2 or shape[1] != t["seq_len"]:
        sys.exit(f"manifest: text input_shape {shape} is not [batch, {t['seq_len']}]")
    for dim, name in t["word_embeddings"].items():
        path = os.path.join(m["_dir"], name)
        want = t["vocab_size"] * int(dim) * 4
        if not os.path.isfile(path) or os.path.getsize(path) != want:
            sys.exit(f"{path}: missing or not {want} bytes: the files read their word embeddings "
                     "from it (ONNX external data); copy the export directory whole")
    ids = np.random.default_rng(m["seed"]).integers(0, t["vocab_size"], size=shape, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones(shape, dtype=np.int64)}


def time_file(sess, feed, protocol):
    names = sorted(i.name for i in sess.get_inputs())
    if names != sorted(feed):
        sys.exit(f"the file's inputs {names} are not the manifest's {sorted(feed)}")
    for _ in range(protocol["warmup"]):
        sess.run(None, feed)
    t = []
    for _ in range(max(protocol["runs"], 1)):
        s = time.perf_counter()
        sess.run(None, feed)
        t.append((time.perf_counter() - s) * 1e3)
    t.sort()
    cut = int(len(t) * protocol["trim"])
    kept = t[cut : len(t) - cut] if len(t) > 2 * cut else t
    mean = sum(kept) / len(kept)
    std = (sum((v - mean) ** 2 for v in kept) / len(kept)) ** 0.5
    return mean, std, t[len(t) // 2]


def resume(out, want):
    """Indices already in `out` (after dropping a last row cut short)."""
    with open(out) as f:
        text = f.read()
    whole = text[: text.rfind("\n") + 1]
    if not whole.startswith(want):
        sys.exit(
            f"{out} exists with another header (space, machine, threads, batch or "
            "protocol): continue it with the same settings, or write another file"
        )
    if len(whole) < len(text):
        with open(out, "w") as f:
            f.write(whole)
    return {int(l.split(",", 1)[0]) for l in whole[len(want) :].splitlines() if l.strip()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="directory of `vitnas latency export-archs`")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads")
    ap.add_argument("--out", required=True, help="latency CSV to write (or continue)")
    a = ap.parse_args()
    if a.threads < 1:
        sys.exit("--threads must be at least 1")
    with open(os.path.join(a.dir, "manifest.json")) as f:
        m = json.load(f)
    if m.get("format") != "vitnas-latency-archs/1":
        sys.exit(f"{a.dir}/manifest.json: format {m.get('format')!r} is not vitnas-latency-archs/1")
    m["_dir"] = a.dir
    feed = inputs(m)
    head = header(m, a.threads)
    done = set()
    if os.path.exists(a.out) and os.path.getsize(a.out) > 0:
        done = resume(a.out, head)
    else:
        with open(a.out, "w") as f:
            f.write(head)
    total = len(m["archs"])
    started = time.time()
    with open(a.out, "a") as f:
        for k, e in enumerate(m["archs"]):
            if e["index"] in done:
                continue
            sess = session(os.path.join(a.dir, e["file"]), a.threads)
            mean, std, median = time_file(sess, feed, m["protocol"])
            f.write(f"{e['csv_prefix']},{mean:.6f},{std:.6f},{median:.6f}\n")
            f.flush()
            if (k + 1) % max(total // 10, 1) == 0 or k + 1 == total:
                print(f"timed {k + 1}/{total} ({time.time() - started:.0f} s)", file=sys.stderr)
    print(json.dumps({"out": a.out, "rows": total, "onnxruntime": ort.__version__,
                      "threads": a.threads, "cpu": cpu_model()}))


if __name__ == "__main__":
    main()
