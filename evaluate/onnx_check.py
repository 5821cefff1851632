#!/usr/bin/env python3
"""Runs a vitnas ONNX export in ONNX Runtime and compares it with vitnas.

    vitnas export --supernet RUN --arch ARCH --out DIR --format onnx --check-batch 7
    python evaluate/onnx_check.py DIR [--threads 2] [--tol 1e-4]

DIR holds model.onnx and check.json (the seeded inputs and the outputs the
vitnas engine computed for them). The script runs the whole batch, then each
example alone (batch 1), and prints the largest absolute difference of each
against vitnas's outputs. Exit status 1 when a difference exceeds
tol · max(1, largest |output|); 2 when ONNX Runtime cannot load the file
(for example an onnxruntime too old for the file's opset).

Needs: pip install onnxruntime numpy
"""
import argparse
import json
import os
import sys

import numpy as np

try:
    import onnxruntime as ort
except ImportError:
    sys.exit("onnx_check.py needs onnxruntime: pip install onnxruntime numpy")


def opset_of(export_dir):
    """The opset arch.json records (vitnas writes it beside model.onnx)."""
    try:
        with open(os.path.join(export_dir, "arch.json")) as f:
            return json.load(f).get("opset")
    except (OSError, ValueError):
        return None


def session(path, threads, opset):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types per version
        need = f"opset {opset}" if opset else "the file's opset"
        sys.stderr.write(
            f"ONNX Runtime {ort.__version__} cannot load {path} ({need}, ONNX IR 8): {e}\n"
            "If the message names an opset or IR version, this onnxruntime predates the file's: "
            "vitnas writes opset 17 (IR 8), which onnxruntime >= 1.13 runs (pip install -U onnxruntime).\n"
        )
        sys.exit(2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="an export directory with model.onnx and check.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    with open(os.path.join(a.dir, "check.json")) as f:
        check = json.load(f)
    sess = session(os.path.join(a.dir, "model.onnx"), a.threads, opset_of(a.dir))
    dtypes = {i.name: (np.float32 if "float" in i.type else np.int64) for i in sess.get_inputs()}
    missing = set(dtypes) - set(check["inputs"])
    if missing:
        sys.exit(f"check.json lacks the model's inputs {sorted(missing)}")
    feeds = {
        n: np.asarray(v["data"], dtype=dtypes[n]).reshape(v["shape"]) for n, v in check["inputs"].items()
    }
    (out_name, want), = check["outputs"].items()
    want = np.asarray(want["data"], dtype=np.float32).reshape(want["shape"])
    batch = want.shape[0]
    got = sess.run([out_name], feeds)[0]
    if got.shape != want.shape:
        sys.exit(f"ONNX Runtime's {out_name} has shape {got.shape}, vitnas's {want.shape}")
    d_batch = float(np.abs(got - want).max())
    d_one = max(
        float(np.abs(sess.run([out_name], {n: v[i : i + 1] for n, v in feeds.items()})[0] - want[i : i + 1]).max())
        for i in range(batch)
    )
    scale = max(1.0, float(np.abs(want).max()))
    print(
        json.dumps(
            {
                "onnxruntime": ort.__version__,
                "output": out_name,
                "batch": batch,
                f"max_abs_diff_batch{batch}": d_batch,
                "max_abs_diff_batch1": d_one,
                "max_abs_output": float(np.abs(want).max()),
                "tolerance": a.tol * scale,
            }
        )
    )
    if max(d_batch, d_one) > a.tol * scale:
        sys.exit(f"ONNX Runtime differs from vitnas by {max(d_batch, d_one):.3g} > {a.tol * scale:.3g}")


if __name__ == "__main__":
    main()
