#!/usr/bin/env bash
# Runs the benchmark workloads of ../shared/README.md on vitnas and on the
# PyTorch peers (../shared/bench/torch_reference.py for the ViT workload,
# ../shared/bench/torch_bert_reference.py for the text one), one right
# after the other on this machine, and prints the ratios.
#
#   evaluate/bench.sh [path/to/python-with-torch]
#   VITNAS=/path/to/other/vitnas evaluate/bench.sh ...   # a before/after pair
#   PART=vit|text|deploy evaluate/bench.sh ...  # one part only (default: all)
#   PART=scaling evaluate/bench.sh ...  # cost against work, at users' sizes
#   ORT_PY=/tmp/ortenv/bin/python PART=deploy evaluate/bench.sh
#
# The deploy part times vitnas's engine against ONNX Runtime on the same
# subnet, exported by vitnas as ONNX (`vitnas bench infer|bert-infer --onnx`,
# evaluate/onnx_bench.py): the largest fmnist-tiny ViT at batch 1 and 256,
# the bert-minilm supernet's largest subnet (all-MiniLM-L6-v2's shape, mean
# pooling) at 128 tokens, batch 1 and 64. Its Python is ORT_PY (default: the
# PyTorch one) with `pip install onnxruntime numpy`; PART=all runs it when
# onnxruntime imports there.
#   SIMD=avx2 evaluate/bench.sh ...     # what an AVX2-only CPU runs, both sides
#   SIMD=scalar evaluate/bench.sh ...   # no vector math (report only)
#
# SIMD=avx2 builds vitnas without its `avx512` feature (no AVX-512 code in
# vitnas's vector math or in gemm's kernels) and forces VITNAS_SIMD=avx2;
# PyTorch gets ATen's, MKL's and oneDNN's documented switches
# (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA), and the
# script prints what each library reports it used. SIMD=scalar forces
# VITNAS_SIMD=scalar (gemm keeps its AVX2+FMA kernels: it has no switch for
# less) and PyTorch to ATen's default level, MKL SSE4.2, oneDNN SSE4.1.
#
# PART=scaling (never part of "all": about 25 minutes on 2 quiet cores) runs
# evaluate/scaling.py: autoformer-tiny at 50, 197 and 577 tokens and
# bert-minilm (mean pooling) at 64 to 512 tokens, training at batch 32 and
# inference at batch 1 and 64, vitnas against the PyTorch peers of
# evaluate/peers/ (copies of ../shared/bench's, with sizes) and ONNX Runtime
# at batch 1 (ORT_PY); one process per size; writes
# evaluate/results/scaling/<date>/{scaling.csv,summary.md,scaling.svg}.
# SCALING_ARGS passes more options (e.g. "--only vit", "--quick").
#
# The PyTorch side needs a venv with torch (outside the repo):
#   python3 -m venv ../torchenv && ../torchenv/bin/pip install torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-../torchenv/bin/python}
PEER=../shared/bench/torch_reference.py
PEER_BERT=../shared/bench/torch_bert_reference.py
PART=${PART:-all}
case "$PART" in vit|text|deploy|scaling|all) ;; *) echo "PART must be vit, text, deploy, scaling or all, not $PART" >&2; exit 2 ;; esac
ORT_PY=${ORT_PY:-$PY}
SIMD=${SIMD:-native}
case "$SIMD" in
  native) FEATURES=() ;;
  avx2)
    FEATURES=(--no-default-features)
    export VITNAS_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  scalar)
    FEATURES=(--no-default-features)
    export VITNAS_SIMD=scalar ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 ;;
  *) echo "SIMD must be native, avx2 or scalar, not $SIMD" >&2; exit 2 ;;
esac
# VITNAS=<binary> benchmarks another build (e.g. the one before a change).
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${VITNAS:-}" ]; then
  cargo build --release --quiet ${FEATURES[@]+"${FEATURES[@]}"}
  if [ "$SIMD" != native ]; then
    cp "$TARGET/release/vitnas" "$TARGET/release/vitnas-no-avx512"
    cargo build --release --quiet   # the default build back in place
  fi
fi
V=${VITNAS:-$TARGET/release/vitnas}
if [ -z "${VITNAS:-}" ] && [ "$SIMD" != native ]; then V=$TARGET/release/vitnas-no-avx512; fi
# What each side runs at, as the libraries report it.
echo "SIMD=$SIMD: vitnas $($V bench gemm --n 64 --threads 1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print("vector math", d["simd"], "/ gemm AVX-512 kernels", "built in" if d["gemm_avx512"] else "left out")')"
MKL_VERBOSE=1 ONEDNN_VERBOSE=1 $PY - <<'PYEOF' 2>&1 | grep -E "^(ATen|MKL_VERBOSE oneMKL|onednn_verbose,v1,info,cpu,isa)" | sed 's/^/  PyTorch: /' | head -3 || true
import torch
print("ATen CPU capability:", torch.backends.cpu.get_cpu_capability())
a = torch.rand(64, 64)
a @ a  # MKL sgemm: the linear layers of the workload
torch.nn.functional.conv2d(torch.rand(8, 16, 32, 32), torch.rand(16, 16, 3, 3))  # oneDNN
PYEOF
run() { echo "$1" >&2; eval "$1"; }
if [ "$PART" = vit ] || [ "$PART" = all ]; then
# Peak RSS of the training runs (kB), by GNU time.
T=/usr/bin/time
vt=$(run "$T -f %M -o /tmp/vitnas-rss $V bench train --steps 30 --batch 64 --threads 2")
pt=$(run "$T -f %M -o /tmp/torch-rss $PY $PEER train --steps 30 --batch 64 --threads 2")
v1=$(run "$V bench infer --batch 1 --iters 200 --threads 2")
p1=$(run "$PY $PEER infer --batch 1 --iters 200 --threads 2")
v256=$(run "$V bench infer --batch 256 --iters 10 --threads 2")
p256=$(run "$PY $PEER infer --batch 256 --iters 10 --threads 2")
vs=$(run "$V bench search --archs 20 --images 2000 --threads 2")
vg=$(run "$V bench gemm --n 1024 --threads 2")
# The same 1024^3 product through PyTorch (MKL/oneDNN): the machine's peak as
# the peer reaches it.
pg=$(run "$PY -c 'import torch, time, json; torch.set_num_threads(2); a = torch.rand(1024, 1024); b = torch.rand(1024, 1024); [a @ b for _ in range(3)]; t = time.perf_counter(); [a @ b for _ in range(20)]; print(json.dumps({\"gflops\": 20 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9}))'")
python3 - "$vt" "$pt" "$v1" "$p1" "$v256" "$p256" "$vs" "$(cat /tmp/vitnas-rss)" "$(cat /tmp/torch-rss)" "$vg" "$pg" <<'PYEOF'
import json, sys
vt, pt, v1, p1, v256, p256, vs = (json.loads(a) for a in sys.argv[1:8])
vrss, prss = (int(a) / 1024 for a in sys.argv[8:10])
vg, pg = (json.loads(a) for a in sys.argv[10:12])
print(f"{'workload':34} {'vitnas':>12} {'pytorch':>12} {'ratio':>8}")
print(f"{'train sandwich steps/s (batch 64)':34} {vt['steps_per_s']:12.3f} {pt['steps_per_s']:12.3f} {vt['steps_per_s']/pt['steps_per_s']:8.2f}x")
print(f"{'infer batch 1 ms (lower is better)':34} {v1['ms_per_batch']:12.2f} {p1['ms_per_batch']:12.2f} {v1['ms_per_batch']/p1['ms_per_batch']:8.2f}x")
print(f"{'infer batch 256 images/s':34} {v256['images_per_s']:12.1f} {p256['images_per_s']:12.1f} {v256['images_per_s']/p256['images_per_s']:8.2f}x")
print(f"{'train peak RSS MiB (lower is better)':34} {vrss:12.0f} {prss:12.0f} {vrss/prss:8.2f}x")
print(f"vitnas search: {vs['evals_per_s']:.2f} evals/s ({vs['images_per_s']:.0f} images/s, 2,000 images per candidate; the peer has no search mode)")
print(f"gemm peak (1024^3, 2 threads): vitnas's gemm {vg['gflops']:.0f} GFLOP/s, PyTorch {pg['gflops']:.0f} GFLOP/s")
print(f"vitnas training: {vt['gflops']:.1f} GFLOP/s executed ({vt['full_model_gflops']:.1f} counting the full model's FLOPs as the peer computes them)"
      f" = {100*vt['gflops']/vg['gflops']:.0f}% of the measured gemm peak, {100*vt.get('reference_peak_fraction', vt.get('issue_peak_fraction', 0)):.0f}% of the 170 GFLOP/s AVX2 reference peak")
PYEOF
fi
if [ "$PART" = text ] || [ "$PART" = all ]; then
# The text workload: sandwich steps at batch 32 x 128 tokens, inference of
# the largest subnet at batch 1 and 64 x 128 tokens.
tt=$(run "$V bench bert-train --steps 10 --batch 32 --seq 128 --threads 2")
pt=$(run "$PY $PEER_BERT train --steps 10 --batch 32 --seq 128 --threads 2")
t1=$(run "$V bench bert-infer --batch 1 --seq 128 --iters 100 --threads 2")
p1=$(run "$PY $PEER_BERT infer --batch 1 --seq 128 --iters 100 --threads 2")
t64=$(run "$V bench bert-infer --batch 64 --seq 128 --iters 5 --threads 2")
p64=$(run "$PY $PEER_BERT infer --batch 64 --seq 128 --iters 5 --threads 2")
python3 - "$tt" "$pt" "$t1" "$p1" "$t64" "$p64" <<'PYEOF'
import json, sys
tt, pt, t1, p1, t64, p64 = (json.loads(a) for a in sys.argv[1:7])
print(f"text workload (bert-minilm supernet, mean pooling, 128 tokens; vitnas vector math {tt['simd']})")
print(f"{'workload':38} {'vitnas':>10} {'pytorch':>10} {'ratio':>8}  target")
print(f"{'train sandwich steps/s (batch 32)':38} {tt['steps_per_s']:10.3f} {pt['steps_per_s']:10.3f} {tt['steps_per_s']/pt['steps_per_s']:7.2f}x  >= 1.3x")
print(f"{'infer batch 1 ms (lower is better)':38} {t1['ms_per_batch']:10.2f} {p1['ms_per_batch']:10.2f} {t1['ms_per_batch']/p1['ms_per_batch']:7.2f}x  <= 0.5x")
print(f"{'infer batch 64 sequences/s':38} {t64['sequences_per_s']:10.1f} {p64['sequences_per_s']:10.1f} {t64['sequences_per_s']/p64['sequences_per_s']:7.2f}x  >= 1.2x")
print(f"vitnas text training: {tt['gflops']:.1f} GFLOP/s executed (padding is not computed)")
PYEOF
fi
if [ "$PART" = deploy ] || { [ "$PART" = all ] && $ORT_PY -c 'import onnxruntime' 2>/dev/null; }; then
# The deploy row: the same exported subnet in vitnas's engine and in ONNX
# Runtime, one right after the other.
D=$(mktemp -d)
dv1=$(run "$V bench infer --batch 1 --iters 200 --threads 2 --onnx $D/vit.onnx")
do1=$(run "$ORT_PY evaluate/onnx_bench.py $D/vit.onnx --batch 1 --iters 200 --threads 2")
dv256=$(run "$V bench infer --batch 256 --iters 10 --threads 2")
do256=$(run "$ORT_PY evaluate/onnx_bench.py $D/vit.onnx --batch 256 --iters 10 --threads 2")
db1=$(run "$V bench bert-infer --batch 1 --seq 128 --iters 100 --threads 2 --onnx $D/bert.onnx")
dob1=$(run "$ORT_PY evaluate/onnx_bench.py $D/bert.onnx --batch 1 --seq 128 --iters 100 --threads 2")
db64=$(run "$V bench bert-infer --batch 64 --seq 128 --iters 5 --threads 2")
dob64=$(run "$ORT_PY evaluate/onnx_bench.py $D/bert.onnx --batch 64 --seq 128 --iters 5 --threads 2")
rm -r "$D"
python3 - "$dv1" "$do1" "$dv256" "$do256" "$db1" "$dob1" "$db64" "$dob64" <<'PYEOF'
import json, sys
dv1, do1, dv256, do256, db1, dob1, db64, dob64 = (json.loads(a) for a in sys.argv[1:9])
print(f"deploy: vitnas engine against {do1['runtime']} on the same exported subnet (2 threads; vitnas vector math {dv1['simd']})")
print(f"{'workload':40} {'vitnas':>10} {'ORT':>10} {'ratio':>8}  target")
print(f"{'ViT largest, batch 1 ms (lower is better)':40} {dv1['ms_per_batch']:10.2f} {do1['ms_per_batch']:10.2f} {dv1['ms_per_batch']/do1['ms_per_batch']:7.2f}x  <= 0.7x")
print(f"{'ViT largest, batch 256 images/s':40} {dv256['images_per_s']:10.1f} {do256['images_per_s']:10.1f} {dv256['images_per_s']/do256['images_per_s']:7.2f}x  >= 1.2x")
print(f"{'MiniLM-L6 128 tok, batch 1 ms':40} {db1['ms_per_batch']:10.2f} {dob1['ms_per_batch']:10.2f} {db1['ms_per_batch']/dob1['ms_per_batch']:7.2f}x  <= 0.7x")
print(f"{'MiniLM-L6 128 tok, batch 64 seq/s':40} {db64['sequences_per_s']:10.1f} {dob64['sequences_per_s']:10.1f} {db64['sequences_per_s']/dob64['sequences_per_s']:7.2f}x  >= 1.2x")
print("(batch 64: every second sequence's last quarter is padding; vitnas skips it, ONNX Runtime computes it)")
PYEOF
fi
if [ "$PART" = scaling ]; then
  ort=$ORT_PY
  $ORT_PY -c 'import onnxruntime' 2>/dev/null || ort=""
  # shellcheck disable=SC2086
  run "python3 evaluate/scaling.py --vitnas $V --torch-py $PY --ort-py '$ort' ${SCALING_ARGS:-}"
fi
