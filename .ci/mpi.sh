#!/usr/bin/env bash
# CI for the `mpi` feature (data-parallel training, shared search and rank
# harness on MPI ranks): installs OpenMPI and libclang (rsmpi's bindgen)
# with apt-get when they are missing, builds with `--features mpi`, runs the
# tests that need `mpirun` (tests/mpi.rs: 2 ranks against 1 process,
# weight checksums, a killed rank, a hung rank, mismatched recipes, shared
# search and rank harness), then lints that build. A few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mpirun >/dev/null || need+=(openmpi-bin)
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
if ! ldconfig -p | grep -q 'libclang[-.0-9]*\.so'; then
  need+=(libclang-dev clang)
fi
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
mpirun --version | head -1
# CI containers often run as root, which OpenMPI refuses unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

cargo build --release --features mpi
cargo test --release --features mpi --test mpi -- --ignored --test-threads=1
cargo clippy --release --features mpi --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --features mpi --quiet
