#!/usr/bin/env bash
# Builds `yap` for the CPU it runs on: RUSTFLAGS="-C target-cpu=native" makes llama-cpp-sys-2
# configure llama.cpp with GGML_NATIVE=ON (-march=native: AVX-512 F/BW/VL/VNNI/VBMI, AVX-VNNI,
# … where the CPU has them), and Rust code gets the same target features. The result,
# target/native/release/yap, runs only on CPUs with the same features: use it on the machine
# (or fleet) it was built on. The portable build is the plain `cargo build --release`
# (x86-64 baseline, runs everywhere, slower kernels). See docs/benchmarks.md for the difference.
#
#   scripts/build-native.sh [extra cargo args, e.g. --features dev-tools]
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="${RUSTFLAGS:-} -C target-cpu=native" \
  cargo build --release --target-dir target/native -p yap-cli --bin yap "$@" >&2
echo "$PWD/target/native/release/yap"
