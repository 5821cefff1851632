#!/usr/bin/env bash
# Same-recipe parity: trains a recipe with vitnas and its plain-PyTorch
# version (evaluate/parity.py, on the run's own data split) for each seed, and
# prints both sides' per-epoch val accuracies and final test accuracies.
#
#   evaluate/parity.sh <recipe.toml> [seeds, default "0 1"] [python, default ../torchenv/bin/python]
#
# Environment:
#   INIT=<scheme>       vitnas init scheme (`vitnas train --init`; default: the recipe's)
#   TORCH_INIT=<scheme> parity.py --init (default torch_default)
#   EXTRA="..."         more `vitnas train` arguments, e.g. "--data DIR --max-steps 50"
#   TORCH_EXTRA="..."   more parity.py arguments, e.g. "--threads 2 --wd-skip-1d"
#   OUT=<dir>           run dirs go to $OUT/<recipe>-<init>-s<seed> (default runs/parity)
#   NO_BUILD=1          skip `cargo build --release`
# A seed's vitnas run is skipped when its metrics.jsonl has the final test
# line, its PyTorch run when $dir/torch-$TORCH_INIT.json exists.
# The PyTorch side needs a venv with torch (outside the repo):
#   python3 -m venv ../torchenv && ../torchenv/bin/pip install torch
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${1:?usage: evaluate/parity.sh <recipe.toml> [seeds] [python]}
SEEDS=${2:-0 1}
PY=${3:-../torchenv/bin/python}
INIT=${INIT:-}
TORCH_INIT=${TORCH_INIT:-torch_default}
OUT=${OUT:-runs/parity}
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --quiet
V=target/release/vitnas
run() { echo "+ $*" >&2; "$@"; }
name=$(basename "$RECIPE" .toml)
dirs=()
for s in $SEEDS; do
    dir=$OUT/$name-${INIT:-default}-s$s
    if grep -qs final_test_largest "$dir/metrics.jsonl"; then
        echo "vitnas seed $s: $dir is finished, not retrained" >&2
    else
        # shellcheck disable=SC2086  # EXTRA is a list of arguments
        run $V train "$RECIPE" --seed "$s" --output-dir "$dir" ${INIT:+--init "$INIT"} ${EXTRA:-}
    fi
    tj=$dir/torch-$TORCH_INIT.json
    if [ -f "$tj" ]; then
        echo "pytorch seed $s: $tj exists, not retrained" >&2
    else
        # shellcheck disable=SC2086
        run "$PY" evaluate/parity.py --run "$dir" --seed "$s" --init "$TORCH_INIT" --out "$tj" ${TORCH_EXTRA:-}
    fi
    dirs+=("$dir")
done
python3 - "$TORCH_INIT" "${INIT:-default}" "${dirs[@]}" <<'PYEOF'
import json, sys
torch_init, vinit, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]

def vitnas(d):
    """Per-epoch val (largest, smallest) and final test (largest, smallest) from metrics.jsonl."""
    epochs, test = {}, None
    for line in open(f"{d}/metrics.jsonl"):
        m = json.loads(line)
        if "epoch_end" in m:
            epochs[m["epoch_end"]] = (m["val_largest"]["accuracy"], m["val_smallest"]["accuracy"])
        if "final_test_largest" in m:
            test = (m["final_test_largest"]["accuracy"], m["final_test_smallest"]["accuracy"])
    return epochs, test

def pytorch(d):
    r = json.load(open(f"{d}/torch-{torch_init}.json"))
    return {e["epoch"]: (e["val_largest"], e["val_smallest"]) for e in r["epochs"]}, (r["test_largest"], r["test_smallest"])

f = lambda v: f"{v:.4f}" if v is not None else "-"
rows = []  # (seed dir, vitnas test, pytorch test)
print(f"vitnas init {vinit}, pytorch init {torch_init}")
print(f"{'run':34} {'epoch':>5} {'v val L':>8} {'v val S':>8} {'pt val L':>8} {'pt val S':>8}")
for d in dirs:
    (ve, vt), (pe, pt) = vitnas(d), pytorch(d)
    for k in sorted(set(ve) | set(pe)):
        a, b = ve.get(k, (None, None)), pe.get(k, (None, None))
        print(f"{d.rsplit('/', 1)[-1]:34} {k:>5} {f(a[0]):>8} {f(a[1]):>8} {f(b[0]):>8} {f(b[1]):>8}")
    rows.append((d.rsplit('/', 1)[-1], vt, pt))
print(f"\n{'final test':34} {'vitnas L':>9} {'vitnas S':>9} {'torch L':>9} {'torch S':>9}")
for n, vt, pt in rows:
    vt, pt = vt or (None, None), pt or (None, None)
    print(f"{n:34} {f(vt[0]):>9} {f(vt[1]):>9} {f(pt[0]):>9} {f(pt[1]):>9}")

def mhr(xs):
    """mean ± half-range"""
    return (sum(xs) / len(xs), (max(xs) - min(xs)) / 2) if xs else (None, None)

stats = {}
for side, i in (("vitnas", 1), ("pytorch", 2)):
    for j, which in enumerate(("largest", "smallest")):
        stats[side, which] = mhr([r[i][j] for r in rows if r[i] is not None])
print(f"\n{'test accuracy over ' + str(len(rows)) + ' seeds':34} {'largest':>17} {'smallest':>17}")
for side in ("vitnas", "pytorch"):
    cells = [f"{f(m)} ± {f(h)}" if m is not None else "-" for m, h in (stats[side, w] for w in ("largest", "smallest"))]
    print(f"{side:34} {cells[0]:>17} {cells[1]:>17}")
diff = [stats["vitnas", w][0] - stats["pytorch", w][0] if None not in (stats["vitnas", w][0], stats["pytorch", w][0]) else None
        for w in ("largest", "smallest")]
print(f"{'vitnas - pytorch':34} {('%+.4f' % diff[0]) if diff[0] is not None else '-':>17} {('%+.4f' % diff[1]) if diff[1] is not None else '-':>17}")
PYEOF
