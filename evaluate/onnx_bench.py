#!/usr/bin/env python3
"""Times an ONNX file vitnas exported, in ONNX Runtime: the deploy row of
evaluate/bench.sh (vitnas's engine against ONNX Runtime on the same subnet).

    vitnas bench infer --batch 1 --onnx /tmp/vit.onnx           # writes the file, times the engine
    python evaluate/onnx_bench.py /tmp/vit.onnx --batch 1 --iters 200 --threads 2
    vitnas bench bert-infer --batch 1 --seq 128 --onnx /tmp/bert.onnx
    python evaluate/onnx_bench.py /tmp/bert.onnx --batch 64 --seq 128 --iters 5

Inputs as `vitnas bench` builds them: images uniform in [0, 1); token ids
uniform in 1000..vocab with the last quarter of every second sequence padded
(ONNX Runtime computes the padding, vitnas does not). Prints one JSON line:
ms_per_batch (mean over --iters after --warmup warm-up runs, default 5) and
images_per_s or sequences_per_s; and the fields evaluate/scaling.py reads from
every side: tokens, ms_per_step, throughput, peak_rss_mib (ru_maxrss: run one
size per process). Session: --threads intra-op threads, 1 inter-op thread,
every graph optimisation on (ORT's default).

Needs: pip install onnxruntime numpy
"""
import argparse
import json
import resource
import sys
import time

import numpy as np

try:
    import onnxruntime as ort
except ImportError:
    sys.exit("onnx_bench.py needs onnxruntime: pip install onnxruntime numpy")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence (text models)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        sys.exit(f"ONNX Runtime {ort.__version__} cannot load {a.model}: {e}")
    names = [i.name for i in sess.get_inputs()]
    rng = np.random.default_rng(0)
    if names == ["pixel_values"]:
        _, c, h, w = sess.get_inputs()[0].shape
        feeds = {"pixel_values": rng.random((a.batch, c, h, w), dtype=np.float32)}
        unit = "images_per_s"
        meta = sess.get_modelmeta().custom_metadata_map
        patch = json.loads(meta.get("vitnas.config", "{}")).get("patch_size")
        tokens = (h // patch) * (w // patch) + 1 if patch else None
    else:
        meta = sess.get_modelmeta().custom_metadata_map
        vocab = json.loads(meta["vitnas.config"])["vocab_size"]
        ids = rng.integers(1000, vocab, (a.batch, a.seq), dtype=np.int64)
        mask = np.ones((a.batch, a.seq), dtype=np.int64)
        mask[1::2, a.seq - a.seq // 4 :] = 0
        feeds = {"input_ids": ids, "attention_mask": mask}
        unit = "sequences_per_s"
        tokens = a.seq
    for _ in range(a.warmup):
        sess.run(None, feeds)
    t0 = time.perf_counter()
    for _ in range(a.iters):
        sess.run(None, feeds)
    dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "runtime": f"onnxruntime {ort.__version__}",
                "batch": a.batch,
                "threads": a.threads,
                "ms_per_batch": 1e3 * dt / a.iters,
                unit: a.batch * a.iters / dt,
                "tokens": tokens,
                "ms_per_step": 1e3 * dt / a.iters,
                "throughput": a.batch * a.iters / dt,
                "throughput_unit": unit,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
