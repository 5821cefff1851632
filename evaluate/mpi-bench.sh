#!/usr/bin/env bash
# Data-parallel training on MPI (evaluate/studies/2026-11-29-mpi.md): a
# short real quickstart run (fmnist-tiny supernet, batch 64,
# sandwich + KL) at 2 ranks × 1 thread against 1 rank × 2 threads (and
# 1 × 1, the per-rank compute of the projection), then the gradient
# all-reduce alone (`vitnas bench allreduce`) for the fmnist-tiny and
# autoformer-tiny supernets, then the ring all-reduce projection.
#
#   cargo build --release --features mpi
#   evaluate/mpi-bench.sh [results.json]
#
# Steps/s come from two run lengths (SHORT and LONG steps, both inside the
# first epoch: no validation), so start-up and the final checkpoint cancel:
# (LONG - SHORT) / (wall_LONG - wall_SHORT). Each configuration runs REPS
# times, interleaved; the table takes the median.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VITNAS:-target/release/vitnas}
OUT=${1:-evaluate/results/mpi-bench.json}
SHORT=${SHORT:-30}
LONG=${LONG:-130}
REPS=${REPS:-3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# One run: <ranks> <threads> <steps> -> the summary JSON on stdout.
train() {
  local np=$1 th=$2 steps=$3 dir="$TMP/run-$1x$2-$3"
  rm -rf "$dir"
  if [ "$np" = 1 ]; then
    RAYON_NUM_THREADS=$th "$BIN" train recipes/quickstart.toml --output-dir "$dir" \
      --max-steps "$steps" 2>/dev/null
  else
    mpirun -np "$np" --bind-to core -x RAYON_NUM_THREADS="$th" "$BIN" train \
      recipes/quickstart.toml --output-dir "$dir" --max-steps "$steps" 2>/dev/null
  fi
}

echo "[" > "$TMP/runs.json"
first=1
for rep in $(seq "$REPS"); do
  for cfg in "2 1" "1 2" "1 1"; do
    for steps in "$SHORT" "$LONG"; do
      set -- $cfg
      s=$(train "$1" "$2" "$steps" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')
      [ $first = 1 ] || echo "," >> "$TMP/runs.json"
      first=0
      echo "{\"rep\": $rep, \"ranks\": $1, \"threads\": $2, \"summary\": $s}" >> "$TMP/runs.json"
      echo "rep $rep: $1 rank(s) x $2 thread(s), $steps steps done" >&2
    done
  done
done
echo "]" >> "$TMP/runs.json"

for space in fmnist-tiny autoformer-tiny; do
  iters=50
  [ "$space" = autoformer-tiny ] && iters=10
  mpirun -np 2 --bind-to core "$BIN" bench allreduce --space "search_spaces/$space.toml" \
    --iters "$iters" > "$TMP/allreduce-$space.json"
done

python3 - "$TMP" "$OUT" "$SHORT" "$LONG" <<'EOF'
import json, statistics, sys
tmp, out, short, long_ = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
runs = json.load(open(f"{tmp}/runs.json"))
ar = {s: json.load(open(f"{tmp}/allreduce-{s}.json")) for s in ("fmnist-tiny", "autoformer-tiny")}
res = {"short": short, "long": long_, "configs": {}, "allreduce": ar}
for key in ((2, 1), (1, 2), (1, 1)):
    per = []
    for rep in sorted({r["rep"] for r in runs}):
        s = {r["summary"]["steps"]: r["summary"] for r in runs
             if r["rep"] == rep and (r["ranks"], r["threads"]) == key}
        a, b = s[short], s[long_]
        dt = b["wall_s"] - a["wall_s"]
        dp = lambda x: (x.get("data_parallel") or {}).get("allreduce_s", 0.0)
        per.append({"steps_per_s": (long_ - short) / dt,
                    "allreduce_fraction": (dp(b) - dp(a)) / dt,
                    "allreduce_ms_per_step": 1e3 * (dp(b) - dp(a)) / (long_ - short)})
    med = {k: statistics.median(p[k] for p in per) for k in per[0]}
    res["configs"][f"{key[0]}x{key[1]}"] = {"median": med, "reps": per}
    print(f"{key[0]} rank(s) x {key[1]} thread(s): {med['steps_per_s']:.2f} steps/s, "
          f"all-reduce {100 * med['allreduce_fraction']:.1f} % "
          f"({med['allreduce_ms_per_step']:.2f} ms/step)  reps {[round(p['steps_per_s'], 2) for p in per]}")

# Ring all-reduce projection, no overlap of compute and communication:
#   T(N) = 2 (N-1)/N * S/B + 2 (N-1) * alpha,   E(N) = t_c(N) / (t_c(N) + T(N))
# weak scaling: every rank its own batch of 64 on one core (t_c measured at
# 1 x 1 for fmnist-tiny); strong scaling: the recipe's global batch split
# over N ranks (t_c(N) = t_c * (B/N) / 64, only while N <= B).
t_c = 1.0 / res["configs"]["1x1"]["median"]["steps_per_s"]
macs = {"fmnist-tiny": (62924032 + 7884416),        # sandwich: largest + smallest
        "autoformer-tiny": (1166536704 + 2263242112) / 2}  # uniform: one mid-size subnet
tc = {"fmnist-tiny": t_c,
      "autoformer-tiny": t_c * macs["autoformer-tiny"] / macs["fmnist-tiny"]}
global_batch = {"fmnist-tiny": 64, "autoformer-tiny": 128}  # quickstart, autoformer-tiny recipes
links = {"10 Gbit/s": (10e9 / 8, 20e-6), "100 Gbit/s": (100e9 / 8, 5e-6)}
proj = []
for space in ("fmnist-tiny", "autoformer-tiny"):
    S = ar[space]["values"] * 4
    for link, (B, alpha) in links.items():
        row = {"space": space, "S_MB": S / 1e6, "t_c_s": tc[space], "link": link,
               "alpha_us": alpha * 1e6, "global_batch": global_batch[space]}
        for n in (8, 32, 128):
            T = 2 * (n - 1) / n * S / B + 2 * (n - 1) * alpha
            row[f"T_{n}_ms"] = T * 1e3
            row[f"E_weak_{n}"] = tc[space] / (tc[space] + T)
            b = global_batch[space] / n
            row[f"E_strong_{n}"] = (tc[space] * b / 64) / (tc[space] * b / 64 + T) if b >= 1 else None
        proj.append(row)
        pct = lambda e: "  —  " if e is None else f"{100 * e:5.1f}"
        print(f"{space:16s} S {S/1e6:6.2f} MB  t_c {tc[space]*1e3:8.1f} ms  {link:10s} "
              + "  ".join(f"N={n}: T {row[f'T_{n}_ms']:6.2f} ms weak {pct(row[f'E_weak_{n}'])} % "
                          f"strong {pct(row[f'E_strong_{n}'])} %" for n in (8, 32, 128)))
res["projection"] = {"t_c_fmnist_1x1_s": t_c, "macs_per_image_step": macs, "rows": proj}
for s, a in ar.items():
    best = min(a["rows"], key=lambda r: r["ms"])
    print(f"measured all-reduce {s}: {a['mb']:.2f} MB, 2 ranks: " +
          ", ".join(f"{r['bucketing']} {r['ms']:.2f} ms" for r in a["rows"]) +
          f"; one value {a['one_value_us']:.1f} us; best {best['bucketing']}: "
          f"{a['mb'] / best['ms']:.2f} GB/s")
json.dump(res, open(out, "w"), indent=1)
print("written", out)
EOF
