#!/usr/bin/env bash
# Issue 28 part 3 for text: a latency predictor for "another machine", with
# ONNX Runtime at 1 thread standing in for it, end to end.
#  1. `vitnas latency export-archs`: N stratified architectures of SPACE at
#     128 tokens, batch 1, as ONNX (each width's word-embedding table is one
#     shared word_embeddings-<dim>.bin, ONNX external data);
#  2. evaluate/ort_latency.py: times them under HAT's protocol (ids drawn
#     below the vocabulary, all-ones mask) into the latency CSV;
#  3. `vitnas latency fit`: prints the held-out error (target <= 5 %);
#  4. `vitnas search RUN --predictor <fitted> --latency-ms-max MS`: a short
#     evolution under the predicted (ORT) latency, no recipe bounds.
# Settings (environment):
#   N=1000  SPACE=search_spaces/bert-minilm-mean.toml  OUT=/tmp/ort-latency-text
#   PYTHON=/tmp/ortenv/bin/python (numpy + onnxruntime)
#   RUN=<a trained run of SPACE>: without one, step 4 trains one for 5 steps
#     (bert-minilm-mean: recipes/hat-spam.toml on SPAM=/work/shared/data/spam-assassin
#     from MINILM=/work/shared/models/all-MiniLM-L6-v2; bert-minilm:
#     recipes/bert-spam-sample.toml); SEARCH=0 skips step 4
#   MS=<latency bound>: default the middle of the fitted predictor's range
# Writes OUT/archs (the ONNX files; ~6 MB each for bert-minilm-mean plus the
# tables), OUT/lat.csv, OUT/predictor.json, OUT/fit.json, OUT/search.
# The fit needs at least 50 rows. Keep the machine otherwise idle while
# step 2 times (resumable: rerun with the same settings to continue).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000} SPACE=${SPACE:-search_spaces/bert-minilm-mean.toml}
OUT=${OUT:-/tmp/ort-latency-text} PYTHON=${PYTHON:-/tmp/ortenv/bin/python}
v=target/release/vitnas
cargo build --release --quiet
mkdir -p "$OUT"
if [ ! -f "$OUT/archs/manifest.json" ]; then
  $v latency export-archs "$SPACE" --n "$N" --batch 1 --seq-len 128 --out "$OUT/archs"
fi
du -sh "$OUT/archs"
start=$(date +%s)
"$PYTHON" evaluate/ort_latency.py "$OUT/archs" --threads 1 --out "$OUT/lat.csv"
secs=$(( $(date +%s) - start ))
echo "ORT timing: ${secs} s for $N architectures (incl. session creation)"
$v latency fit "$OUT/lat.csv" --out "$OUT/predictor.json" --force | tee "$OUT/fit.json"
"$PYTHON" - "$OUT/fit.json" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
for m in f["models"]:
    print(f"held-out error {m['model']}: mean {100 * m['heldout_mean_rel_error']:.2f} %, "
          f"p95 {100 * m['heldout_p95_rel_error']:.2f} % ({m['heldout_rows']} rows)")
print(f"kept: {f['kept']}; latency range {f['latency_range_ms']} ms")
PY
[ "${SEARCH:-1}" = 0 ] && exit 0
RUN=${RUN:-}
if [ -z "$RUN" ]; then
  RUN=$OUT/run
  if [ ! -f "$RUN/supernet.safetensors" ]; then
    case "$(basename "$SPACE")" in
      bert-minilm-mean.toml)
        $v train recipes/hat-spam.toml --output-dir "$RUN" --max-steps 5 --force \
          --data "${SPAM:-/work/shared/data/spam-assassin}" \
          --init-from "${MINILM:-/work/shared/models/all-MiniLM-L6-v2}" ;;
      bert-minilm.toml)
        $v train recipes/bert-spam-sample.toml --output-dir "$RUN" --max-steps 5 --force \
          --init-from "${MINILM:-/work/shared/models/all-MiniLM-L6-v2}" ;;
      *) echo "no recipe for $SPACE here: set RUN to a trained run of it" >&2; exit 2 ;;
    esac
  fi
fi
MS=${MS:-$("$PYTHON" -c 'import json,sys; lo,hi=json.load(open(sys.argv[1]))["latency_range_ms"]; print(round((lo+hi)/2, 3))' "$OUT/fit.json")}
echo "search: predicted ORT latency <= $MS ms"
rm -rf "$OUT/search"
$v search "$RUN" --no-recipe-bounds --predictor "$OUT/predictor.json" --latency-ms-max "$MS" \
  --population 8 --parents 4 --mutations 2 --crossovers 2 --generations 2 --val-subset 64 \
  --top-k 2 --out "$OUT/search"
