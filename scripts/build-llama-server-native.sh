#!/usr/bin/env bash
# Builds llama.cpp's llama-server and llama-quantize with native CPU features (GGML_NATIVE=ON,
# static, OpenMP) into target/llama-native/build/bin, for the CPU comparison in
# docs/benchmarks.md and scripts/check-quantize.sh. Sources: scripts/llama-src.sh, the same
# llama.cpp (b11434) as Yap links, checked byte-identical (LLAMA_SRC overrides).
#
#   scripts/build-llama-server-native.sh    # prints the llama-server path
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${LLAMA_SRC:-$(scripts/llama-src.sh)}"
OUT="$PWD/target/llama-native"
cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  >"$OUT.configure.log" 2>&1 || { tail -30 "$OUT.configure.log" >&2; exit 1; }
nice -n 5 cmake --build "$OUT/build" --target llama-server llama-quantize -j "${JOBS:-2}" \
  >"$OUT.build.log" 2>&1 || { tail -30 "$OUT.build.log" >&2; exit 1; }
echo "$OUT/build/bin/llama-server"
