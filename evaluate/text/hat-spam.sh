#!/usr/bin/env bash
# HAT's headline on text (evaluate/studies/2026-11-29-hat-text.md): train
# the hat-spam supernet, measure a latency dataset of the
# bert-minilm-mean space on this machine (batch 1, 128 tokens), fit the
# predictor, search under 1/3 of the largest subnet's measured latency, and
# evaluate the best subnet and the largest on the test split (accuracy and
# measured batch-1 latency). About 40 minutes on 2 cores; keep the machine
# otherwise idle while it measures.
#   evaluate/text/hat-spam.sh <spam-assassin dir> [all-MiniLM-L6-v2 dir or hub id]
set -euo pipefail
cd "$(dirname "$0")/../.."
data=$1 model=${2:-sentence-transformers/all-MiniLM-L6-v2}
v=target/release/vitnas run=runs/hat-spam
cargo build --release
$v train recipes/hat-spam.toml --init-from "$model" --data "$data"
$v latency measure search_spaces/bert-minilm-mean.toml --n 2000 --batch 1 --seq-len 128 \
   --out $run/latency.csv
$v latency fit $run/latency.csv --out $run/latency.predictor.json
$v search $run | tee $run/search.json
for a in $run/search-evolution/arch-1.json largest; do
  $v eval --supernet $run --arch $a --split test --latency
done
