#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU, Release, static, no web UI) into
# target/llama-server/bin/llama-server, once: a second run prints the path and exits.
#
# Sources: the llama.cpp that `llama-cpp-sys-2` vendors (in cargo's registry) has no
# tools/server (the crate packages only ggml, src, common and mtmd), so the sources come from the
# `llama-cpp-python` sdist on PyPI, which vendors the whole llama.cpp tree (pinned below).
# Only the llama-server target is built, with -j2 (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
LCP_PYTHON_VERSION="0.3.36"
OUT="$PWD/target/llama-server"
BIN="$OUT/bin/llama-server"
STAMP="$OUT/.built-llama-cpp-python-$LCP_PYTHON_VERSION"
JOBS="${LLAMA_SERVER_JOBS:-2}"
if [ -x "$BIN" ] && [ -f "$STAMP" ]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$OUT/dl" "$OUT/bin"
SDIST="$OUT/dl/llama_cpp_python-$LCP_PYTHON_VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  echo "build-llama-server: fetching llama.cpp sources (llama-cpp-python $LCP_PYTHON_VERSION sdist)" >&2
  # A small venv with the sdist's build backend, so pip need not set one up to read metadata.
  [ -x "$OUT/dl/venv/bin/pip" ] || python3 -m venv "$OUT/dl/venv"
  "$OUT/dl/venv/bin/pip" install -q --disable-pip-version-check scikit-build-core >&2
  "$OUT/dl/venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    --no-build-isolation -d "$OUT/dl" "llama-cpp-python==$LCP_PYTHON_VERSION" >&2
fi
SRC="$OUT/src/llama.cpp"
if [ ! -f "$SRC/tools/server/server.cpp" ]; then
  rm -rf "$OUT/src"
  mkdir -p "$OUT/src"
  tar -xzf "$SDIST" -C "$OUT/src" --strip-components=2 \
    "llama_cpp_python-$LCP_PYTHON_VERSION/vendor/llama.cpp"
fi
command -v cmake >/dev/null || { echo "build-llama-server: cmake is missing (scripts/setup.sh installs it)" >&2; exit 1; }
echo "build-llama-server: building llama-server (-j$JOBS)" >&2
cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_OPENMP=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_LLGUIDANCE=OFF >"$OUT/cmake-configure.log" 2>&1 ||
  { tail -40 "$OUT/cmake-configure.log" >&2; exit 1; }
nice -n 5 cmake --build "$OUT/build" --target llama-server -j "$JOBS" >"$OUT/cmake-build.log" 2>&1 ||
  { tail -40 "$OUT/cmake-build.log" >&2; exit 1; }
cp "$OUT/build/bin/llama-server" "$BIN"
"$BIN" --version >&2 || true
touch "$STAMP"
echo "$BIN"
