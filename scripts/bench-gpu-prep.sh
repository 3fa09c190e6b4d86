#!/usr/bin/env bash
# Prepares, on a machine with Rust (no GPU needed), what scripts/bench-gpu.sh needs on the GPU
# machine, in target/gpu-carry/ (carried with the working tree; 64 MiB in all):
#   yap.xz          the CUDA build with the test kit (scripts/build-cuda.sh, DEV_TOOLS=1),
#                   xz-compressed
#   llama-src.tar.xz  llama.cpp's sources for the comparison llama-server, trimmed to what a
#                   CUDA llama-server build reads
#
# The sources are those of scripts/llama-src.sh: llama.cpp b11434 from a hash-pinned PyPI sdist,
# checked byte-identical to the llama.cpp that Yap links.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARRY="$ROOT/target/gpu-carry"
log() { echo "bench-gpu-prep: $*" >&2; }
mkdir -p "$CARRY"

# 1. The CUDA yap with the test kit.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  DEV_TOOLS=1 OUT="$ROOT/target/cuda/yap-dev" "$ROOT/scripts/build-cuda.sh"
fi
rm -f "$CARRY/yap"
xz -T0 -6 -c "$ROOT/target/cuda/yap-dev" >"$CARRY/yap.xz"

# 2. The server sources.
if [ ! -f "$CARRY/llama-src.tar.xz" ]; then
  up="$("$ROOT/scripts/llama-src.sh")"
  # Only what `cmake --build --target llama-server` with GGML_CUDA reads.
  ex=(docs models benches media .github examples pocs tests skills gguf-py conversion requirements
      tools/ui/src tools/ui/tests)
  for b in blas cann et hexagon hip metal musa opencl openvino rpc sycl virtgpu vulkan webgpu zdnn zendnn; do
    ex+=("ggml/src/ggml-$b")
  done
  args=()
  for e in "${ex[@]}"; do args+=(--exclude="llama.cpp/$e"); done
  tar -C "$up/.." -cJf "$CARRY/llama-src.tar.xz" "${args[@]}" llama.cpp
fi
du -h "$CARRY"/* >&2
total=$(du -cb "$CARRY"/* | tail -1 | cut -f1)
log "carry: $((total >> 20)) MiB (plus the working tree; 64 MiB in all)"
