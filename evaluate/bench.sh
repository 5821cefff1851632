#!/usr/bin/env bash
# Runs the benchmark workload of ../shared/README.md on vitnas and on the
# PyTorch peer (../shared/bench/torch_reference.py), one right after the
# other on this machine, and prints the ratios.
#
#   evaluate/bench.sh [path/to/python-with-torch]
#
# The PyTorch side needs a venv with torch (outside the repo):
#   python3 -m venv ../torchenv && ../torchenv/bin/pip install torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-../torchenv/bin/python}
PEER=../shared/bench/torch_reference.py
cargo build --release --quiet
V=target/release/vitnas
run() { echo "$1" >&2; eval "$1"; }
# Peak RSS of the training runs (kB), by GNU time.
T=/usr/bin/time
vt=$(run "$T -f %M -o /tmp/vitnas-rss $V bench train --steps 30 --batch 64 --threads 2")
pt=$(run "$T -f %M -o /tmp/torch-rss $PY $PEER train --steps 30 --batch 64 --threads 2")
v1=$(run "$V bench infer --batch 1 --iters 200 --threads 2")
p1=$(run "$PY $PEER infer --batch 1 --iters 200 --threads 2")
v256=$(run "$V bench infer --batch 256 --iters 10 --threads 2")
p256=$(run "$PY $PEER infer --batch 256 --iters 10 --threads 2")
vs=$(run "$V bench search --archs 20 --images 2000 --threads 2")
python3 - "$vt" "$pt" "$v1" "$p1" "$v256" "$p256" "$vs" "$(cat /tmp/vitnas-rss)" "$(cat /tmp/torch-rss)" <<'PYEOF'
import json, sys
vt, pt, v1, p1, v256, p256, vs = (json.loads(a) for a in sys.argv[1:8])
vrss, prss = (int(a) / 1024 for a in sys.argv[8:10])
print(f"{'workload':34} {'vitnas':>12} {'pytorch':>12} {'ratio':>8}")
print(f"{'train sandwich steps/s (batch 64)':34} {vt['steps_per_s']:12.3f} {pt['steps_per_s']:12.3f} {vt['steps_per_s']/pt['steps_per_s']:8.2f}x")
print(f"{'infer batch 1 ms (lower is better)':34} {v1['ms_per_batch']:12.2f} {p1['ms_per_batch']:12.2f} {v1['ms_per_batch']/p1['ms_per_batch']:8.2f}x")
print(f"{'infer batch 256 images/s':34} {v256['images_per_s']:12.1f} {p256['images_per_s']:12.1f} {v256['images_per_s']/p256['images_per_s']:8.2f}x")
print(f"{'train peak RSS MiB (lower is better)':34} {vrss:12.0f} {prss:12.0f} {vrss/prss:8.2f}x")
print(f"vitnas search: {vs['evals_per_s']:.2f} evals/s ({vs['images_per_s']:.0f} images/s, 2,000 images per candidate; the peer has no search mode)")
print(f"vitnas training GFLOP/s {vt['gflops']:.1f} = {100*vt['gemm_peak_fraction']:.0f}% of the 170 GFLOP/s gemm peak")
PYEOF
