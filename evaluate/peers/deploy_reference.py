"""Deploy-time inference peers for an exported vitnas subnet (Hugging Face ViT layout).

Origin: ../shared/bench/deploy_reference.py, copied here for issue 32; the
only addition is peak_rss_mib (ru_maxrss) in its JSON. Its sizes are the
export's own (`vitnas export` of a subnet of a space at the wanted image and
patch size); evaluate/scaling.py times ONNX Runtime through
evaluate/onnx_bench.py on vitnas's own ONNX export instead.

Loads the export with transformers and times it three ways a deployer would run it,
on the CPU with N threads: PyTorch eager, torch.compile (inductor), and ONNX Runtime
(exported with torch.onnx, dynamic batch). Prints one JSON line of ms per batch.

  python deploy_reference.py EXPORT_DIR [--threads 2] [--batches 1,256]

Needs: pip install torch transformers onnx onnxruntime
"""
import argparse, json, resource, time
import numpy as np, torch, onnxruntime as ort
from transformers import ViTForImageClassification


def bench(f, x, iters):
    for _ in range(5):
        f(x)
    t = time.perf_counter()
    for _ in range(iters):
        f(x)
    return 1e3 * (time.perf_counter() - t) / iters


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("export_dir")
    ap.add_argument("--threads", type=int, default=2); ap.add_argument("--batches", default="1,256")
    a = ap.parse_args(); torch.set_num_threads(a.threads)
    m = ViTForImageClassification.from_pretrained(a.export_dir).eval()
    c, s = m.config.num_channels, m.config.image_size
    batches = [int(b) for b in a.batches.split(",")]
    iters = lambda b: max(5, 200 // b)
    out = {"threads": a.threads}
    with torch.no_grad():
        for b in batches:
            out[f"eager_b{b}_ms"] = bench(lambda x: m(pixel_values=x).logits, torch.rand(b, c, s, s), iters(b))
    path = "/tmp/deploy_reference.onnx"
    torch.onnx.export(m, (torch.rand(1, c, s, s),), path, input_names=["pixel_values"], output_names=["logits"],
                      dynamic_axes={"pixel_values": {0: "b"}, "logits": {0: "b"}}, opset_version=17, dynamo=False)
    so = ort.SessionOptions(); so.intra_op_num_threads = a.threads; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for b in batches:
        x = np.random.rand(b, c, s, s).astype(np.float32)
        out[f"onnxruntime_b{b}_ms"] = bench(lambda x: sess.run(None, {"pixel_values": x}), x, iters(b))
    try:
        mc = torch.compile(m)
        with torch.no_grad():
            for b in batches:
                out[f"compile_b{b}_ms"] = bench(lambda x: mc(pixel_values=x).logits, torch.rand(b, c, s, s), iters(b))
    except Exception as e:  # inductor needs a C++ compiler
        out["compile_error"] = str(e)[:200]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
