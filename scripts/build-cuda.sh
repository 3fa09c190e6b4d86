#!/usr/bin/env bash
# Builds the CUDA `yap` binary: target/cuda/yap (stripped).
#
# Needs no CUDA installation and no GPU: the CUDA 13.0 compiler, runtime and cuBLAS come from
# the PyPI wheels pinned in scripts/cuda-requirements.txt, installed into target/cuda-prefix.
# See docs/gpu.md for what the binary needs where it runs.
#
#   scripts/build-cuda.sh                   # sm_90 (H100/H200) only
#   CUDA_ARCHS="80;89;90" scripts/build-cuda.sh   # + A100 (80), L40S/RTX 40xx (89)
#   DEV_TOOLS=1 scripts/build-cuda.sh       # + the test kit (make-test-model), for benchmarks
#   CUDA_OBJECTS=target/cudaobj scripts/build-cuda.sh   # take ggml-cuda objects compiled on
#                                           # another machine (see below) instead of compiling
#
# Environment:
#   CUDA_ARCHS        CMAKE_CUDA_ARCHITECTURES for llama.cpp's kernels (default 90)
#   CUDA_HOME         use this CUDA toolkit instead of the PyPI wheels (must hold bin/nvcc)
#   CUDA_PREFIX       where the wheels go (default target/cuda-prefix)
#   CARGO_TARGET_DIR  the build's own target dir (default target/cuda-build, apart from the
#                     CPU build's target/ so the two never rebuild each other)
#   DEV_TOOLS=1       also build the test kit (`yap make-test-model`, `yap engine-double`)
#   JOBS              parallel compile jobs (default: all cores)
#   OUT               the output binary (default target/cuda/yap)
#   CUDA_OBJECTS      a folder with ggml-cuda objects compiled elsewhere: cudaobj.tar.xz.NN parts
#                     (`scripts/bench-gpu.sh export` on a GPU machine writes them) and a MANIFEST
#                     of compile keys (inside the tar, or beside the parts). Each object whose key
#                     matches this build's compile of it is taken instead of compiled
#                     (scripts/cuda-objcache.sh, the CUDA compiler launcher); any other is
#                     compiled here. Compiling all ~150 kernel files takes minutes on 16 cores and
#                     hours on 2.
#
# How it links (the build machine has no driver, so no libcuda.so to link against):
#   - the CUDA runtime is linked statically (libcudart_static.a from the wheel);
#   - cuBLAS is linked dynamically (libcublas.so.13 + libcublasLt.so.13, ~600 MB together:
#     static cuBLAS would make a binary of hundreds of MB, and the wheels ship no static
#     cuBLAS); llama-cpp-sys-2 asks for static cuBLAS, so the script hands it empty archives
#     under those names and links the shared libraries itself;
#   - the driver API (cuMem* for llama.cpp's virtual-memory pool) is linked against a stub
#     libcuda.so.1 generated here from cuda.h; the real one comes with the NVIDIA driver.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ARCHS="${CUDA_ARCHS:-90}"
PREFIX="${CUDA_PREFIX:-$ROOT/target/cuda-prefix}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cuda-build}"
OUT="${OUT:-$ROOT/target/cuda/yap}"
JOBS="${JOBS:-$(nproc)}"
log() { echo "build-cuda: $*" >&2; }

# 1. The toolkit: a CUDA_HOME given, or the pinned wheels in $PREFIX/nvidia/cu13.
if [ -n "${CUDA_HOME:-}" ]; then
  CU="$CUDA_HOME"
else
  CU="$PREFIX/nvidia/cu13"
  if [ ! -x "$CU/bin/nvcc" ] || [ ! -f "$CU/lib/libcublasLt.so.13" ]; then
    log "installing the CUDA 13.0 wheels into $PREFIX (~700 MB)"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes --target "$PREFIX" --upgrade -r "$ROOT/scripts/cuda-requirements.txt"
  fi
  # nvcc.profile looks for lib64; CMake's FindCUDAToolkit wants the unversioned names.
  ln -sfn lib "$CU/lib64"
  for l in cudart cublas cublasLt; do ln -sfn "lib$l.so.13" "$CU/lib/lib$l.so"; done
fi
[ -x "$CU/bin/nvcc" ] || { log "no nvcc in $CU/bin"; exit 1; }
LIB="$CU/lib64"

# 2. The vendored llama.cpp (the sources llama-cpp-sys-2 builds).
LLAMA_SRC="$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = next(p for p in m["packages"] if p["name"] == "llama-cpp-sys-2")
print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp"))')"
[ -d "$LLAMA_SRC/ggml/src/ggml-cuda" ] || { log "vendored llama.cpp not found ($LLAMA_SRC)"; exit 1; }

# 3. A stub libcuda.so.1 holding the driver functions ggml-cuda calls (names resolved through
#    cuda.h, which maps some to versioned symbols), unless the toolkit has its own stub.
if [ ! -f "$LIB/stubs/libcuda.so" ]; then
  mkdir -p "$LIB/stubs"
  tmp="$(mktemp -d)"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$LLAMA_SRC"/ggml/src/ggml-cuda/*.cu* \
    | tr -d '( \t' | sort -u | sed 's/^/YAP_STUB /' >"$tmp/names.h"
  gcc -E -P -I"$CU/include" -include cuda.h "$tmp/names.h" | awk '/^YAP_STUB/ {print "void " $2 "(void) {}"}' >"$tmp/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LIB/stubs/libcuda.so" "$tmp/stub.c"
  rm -rf "$tmp"
fi

# 4. What llama-cpp-sys-2's build script links: it reads CUDA_LIBRARY_PATH (<dir>/lib64 and
#    <dir>/lib64/stubs) and asks for static cudart, cuBLAS, cuBLASLt and culibos.
SHIM="$PREFIX/link"
mkdir -p "$SHIM/lib64"
ln -sfn "$LIB/libcudart_static.a" "$SHIM/lib64/libcudart_static.a"
ln -sfn "$LIB/stubs" "$SHIM/lib64/stubs"
for l in cublas_static cublasLt_static culibos; do
  [ -f "$SHIM/lib64/lib$l.a" ] || ar rc "$SHIM/lib64/lib$l.a"
done

# 5. ggml-cuda objects compiled elsewhere, through the compiler launcher.
LINK_EXTRA=()
if [ -n "${CUDA_OBJECTS:-}" ]; then
  src_dir="$(cd "$CUDA_OBJECTS" && pwd)"
  cache="$PREFIX/objcache/$(cat "$src_dir"/cudaobj.tar.xz.* | sha256sum | cut -c1-16)"
  if [ ! -f "$cache/MANIFEST" ]; then
    rm -rf "$cache" && mkdir -p "$cache"
    cat "$src_dir"/cudaobj.tar.xz.* | xz -dc | tar -x -C "$cache"
    [ -f "$cache/MANIFEST" ] || cp "$src_dir/MANIFEST" "$cache/MANIFEST"
  fi
  log "ggml-cuda objects from $CUDA_OBJECTS: $(wc -l <"$cache/MANIFEST") in the MANIFEST"
  export YAP_CUDA_OBJECTS="$cache" CMAKE_CUDA_COMPILER_LAUNCHER="$ROOT/scripts/cuda-objcache.sh"
  # Objects compiled against glibc >= 2.38 call its C23 names (__isoc23_strtol, ...); an older
  # glibc here lacks them: link the forwarding shim (scripts/glibc-c23-shim.c).
  glibc="$(getconf GNU_LIBC_VERSION | awk '{print $2}')"
  if find "$cache" -name '*.o' -exec nm -u {} + 2>/dev/null | grep ' __isoc23_' >/dev/null &&
    [ "$(printf '%s\n' 2.38 "$glibc" | sort -V | head -1)" != 2.38 ]; then
    mkdir -p "$PREFIX/link"
    gcc -O2 -fPIC -c "$ROOT/scripts/glibc-c23-shim.c" -o "$PREFIX/link/glibc-c23-shim.o"
    LINK_EXTRA+=(-C "link-arg=$PREFIX/link/glibc-c23-shim.o")
    log "glibc $glibc here, objects built for glibc >= 2.38: linking scripts/glibc-c23-shim.c"
  fi
fi

export PATH="$CU/bin:$PATH"
export CUDA_PATH="$CU" CUDAToolkit_ROOT="$CU" CUDACXX="$CU/bin/nvcc"
export CUDA_LIBRARY_PATH="$SHIM"
export CMAKE_CUDA_COMPILER="$CU/bin/nvcc" CMAKE_CUDA_ARCHITECTURES="$ARCHS"
export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"

features="yap-cli/cuda"
[ "${DEV_TOOLS:-0}" = 1 ] && features="$features,yap-cli/dev-tools"
log "building yap ($features) for CUDA archs $ARCHS in $CARGO_TARGET_DIR"
# Link flags go to the final binary only (dependencies keep their normal build hashes).
cargo rustc --release --locked -j "$JOBS" -p yap-cli --bin yap --features "$features" -- \
  -C link-arg=-L"$LIB" \
  -C link-arg=-l:libcublas.so.13 -C link-arg=-l:libcublasLt.so.13 \
  -C 'link-arg=-Wl,-rpath,$ORIGIN/lib:$ORIGIN/../cuda-prefix/nvidia/cu13/lib' "${LINK_EXTRA[@]}"

mkdir -p "$(dirname "$OUT")"
strip --strip-all -o "$OUT" "$CARGO_TARGET_DIR/release/yap"
log "wrote $OUT ($(du -h "$OUT" | cut -f1)); it needs at run time:"
readelf -d "$OUT" | awk '/NEEDED|RUNPATH/ {print "  " $0}' >&2
