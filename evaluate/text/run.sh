#!/usr/bin/env bash
# The text results of evaluate/studies/2026-11-29-text-supernet.md: the reference
# (all-MiniLM-L6-v2 fine-tuned alone), the bert-spam supernet, searches at
# <= 50 % and <= 25 % of the largest's FLOPs, test accuracy and batch-1
# latency of each. About 1.5 hours on 2 cores.
#   evaluate/text/run.sh <spam-assassin dir> <all-MiniLM-L6-v2 dir or hub id>
set -euo pipefail
cd "$(dirname "$0")/../.."
data=$1 model=${2:-sentence-transformers/all-MiniLM-L6-v2}
v=target/release/vitnas
cargo build --release
$v train evaluate/text/minilm-alone.toml --init-from "$model" --data "$data"
$v train recipes/bert-spam.toml --init-from "$model" --data "$data"
# what slicing the hidden size costs a fine-tuned model (no supernet training)
for h in 192 256 320; do
  $v eval --supernet runs/minilm-alone --arch evaluate/text/hidden-$h.json --off-grid --split test --latency
done
largest=1434600192   # MACs of the largest subnet per 128-token sequence (`vitnas space show`)
for pct in 50 25; do
  $v search runs/bert-spam --flops-max $((largest * pct / 100)) --val-subset 250 \
     --population 20 --generations 5 --out runs/bert-spam/search-$pct --top-k 3
  $v eval --supernet runs/bert-spam --arch runs/bert-spam/search-$pct/arch-1.json --split test --latency
done
for a in largest smallest; do $v eval --supernet runs/bert-spam --arch $a --split test --latency; done
$v eval --supernet runs/minilm-alone --arch largest --split test --latency
