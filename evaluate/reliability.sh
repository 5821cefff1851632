#!/usr/bin/env bash
# Crash and disk-full procedures for training runs (docs/reliability.md).
#
#   evaluate/reliability.sh kill9 [N]   # N kill -9 at random moments, resume
#                                       # after each; the result must equal an
#                                       # uninterrupted run byte for byte
#   evaluate/reliability.sh diskfull    # fill the disk under a run (a tmpfs;
#                                       # needs root): a clear error, no .tmp
#                                       # left, resume after space is freed
#
# STEPS (default 60) steps of recipes/quickstart.toml with a checkpoint every
# 5 steps; VITNAS=<binary> tests another build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VITNAS:-}" ]; then cargo build --release --quiet; fi
V=$(realpath "${VITNAS:-target/release/vitnas}")
STEPS=${STEPS:-60}
W=$(mktemp -d)
trap 'umount "$W/full" 2>/dev/null || true; rm -rf "$W"' EXIT
sed -e 's/^checkpoint_every = .*/checkpoint_every = 5/' recipes/quickstart.toml > "$W/recipe.toml"
sed -i "s|^space = .*|space = \"$PWD/search_spaces/fmnist-tiny.toml\"|; s|^path = .*|path = \"$PWD/data/fashion-mnist-sample\"|" "$W/recipe.toml"
step_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$1/state.json" 2>/dev/null || echo 0; }
same() {
  for f in checkpoint.safetensors supernet.safetensors; do
    cmp -s "$1/$f" "$2/$f" || { echo "FAIL: $f differs from the uninterrupted run"; exit 1; }
  done
  echo "OK: $f and checkpoint.safetensors are byte-identical to the uninterrupted run"
}
echo "reference: $STEPS uninterrupted steps"
"$V" train "$W/recipe.toml" --output-dir "$W/ref" --max-steps "$STEPS" > /dev/null 2>&1

case "${1:-}" in
kill9)
  N=${2:-10}
  run="$W/run"
  "$V" train "$W/recipe.toml" --output-dir "$run" --max-steps "$STEPS" > /dev/null 2>&1 &
  pid=$!
  kills=0
  while :; do
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.2, 2.5), 2))')"
    if kill -0 "$pid" 2>/dev/null && [ "$kills" -lt "$N" ]; then
      kill -9 "$pid"; wait "$pid" 2>/dev/null || true
      kills=$((kills + 1))
      echo "kill -9 #$kills at checkpoint step $(step_of "$run"); leftover: $(ls "$run" | tr '\n' ' ')"
    else
      wait "$pid" 2>/dev/null || true
    fi
    [ "$(step_of "$run")" -ge "$STEPS" ] && break
    if [ -f "$run/checkpoint.safetensors" ]; then
      "$V" train --resume "$run" --max-steps "$STEPS" > /dev/null 2>&1 &
    else
      rm -rf "$run"   # killed before its first checkpoint: start again
      "$V" train "$W/recipe.toml" --output-dir "$run" --max-steps "$STEPS" > /dev/null 2>&1 &
    fi
    pid=$!
  done
  echo "$kills kills"
  same "$W/ref" "$run"
  ;;
diskfull)
  mkdir -p "$W/full"
  mount -t tmpfs -o size=64m tmpfs "$W/full"
  run="$W/full/run"
  "$V" train "$W/recipe.toml" --output-dir "$run" --max-steps "$STEPS" > "$W/out" 2> "$W/err" &
  pid=$!
  while [ "$(step_of "$run")" -lt 10 ]; do sleep 0.2; done
  # Take every free byte: the next checkpoint cannot be written.
  dd if=/dev/zero of="$W/full/filler" bs=1M 2>/dev/null || true
  if wait "$pid"; then echo "FAIL: training reported success on a full disk"; exit 1; fi
  echo "training stopped with: $(tail -1 "$W/err")"
  if ls "$run" | grep -q '\.tmp$'; then echo "FAIL: a .tmp file was left"; exit 1; fi
  echo "OK: no .tmp left; checkpoint at step $(step_of "$run")"
  rm "$W/full/filler"
  "$V" train --resume "$run" --max-steps "$STEPS" > /dev/null
  same "$W/ref" "$run"
  ;;
*)
  sed -n '2,12p' "$0"; exit 2 ;;
esac
