#!/usr/bin/env bash
# The CUDA compiler launcher (CMAKE_CUDA_COMPILER_LAUNCHER) through which scripts/build-cuda.sh
# takes llama.cpp's ggml-cuda objects compiled on another machine instead of compiling them
# again (~150 kernel files: minutes on a 16-core machine, hours on a 2-core one).
#
# CMake runs it as `cuda-objcache.sh NVCC ARGS...` for every CUDA object. When the object is
# one of ggml-cuda's, YAP_CUDA_OBJECTS names a folder holding it (same path as under
# ggml-cuda.dir/), and that folder's MANIFEST lists the object with the same key as this
# compile, it copies the object (and writes a depfile naming the source) instead of compiling.
# Anything else runs `NVCC ARGS...` unchanged.
#
# The key of a compile: sha256 over
#   - nvcc's version line;
#   - the command's defines and flags in order: the arguments less those that name paths of
#     one build tree (-o, -c, -MD/-MT/-MF, include dirs, --options-file, which CMake's Makefile
#     generator uses for the include dirs);
#   - the contents of every file a ggml-cuda object can read from llama.cpp (ggml/include/*,
#     ggml/src/*.h, all of ggml/src/ggml-cuda/), so another llama.cpp never matches.
# The CUDA headers are covered by the nvcc version (one toolkit release), the host compiler is
# not: objects built with another GCC link and run (same C++ ABI), their host code differs.
#
#   cuda-objcache.sh --key NVCC ARGS...    prints the key of that compile (to write a MANIFEST)
#
# MANIFEST lines: `KEY  RELATIVE/PATH.cu.o`.
set -euo pipefail

key_mode=0
if [ "${1:-}" = --key ]; then
  key_mode=1
  shift
fi
nvcc="$1"
shift
args=("$@")

out="" src="" dep="" mt="" flags=()
n=${#args[@]}
for ((i = 0; i < n; i++)); do
  a="${args[i]}"
  case "$a" in
    -o) out="${args[i + 1]}"; i=$((i + 1)) ;;
    -c) src="${args[i + 1]}"; i=$((i + 1)) ;;
    -MF) dep="${args[i + 1]}"; i=$((i + 1)) ;;
    -MT) mt="${args[i + 1]}"; i=$((i + 1)) ;;
    --options-file | -I | -isystem) i=$((i + 1)) ;;
    -MD | -I* | -isystem*) ;;
    *) flags+=("$a") ;;
  esac
done

run() { exec "$nvcc" "${args[@]}"; }

# Only ggml-cuda's objects: their path under ggml-cuda.dir/ and llama.cpp's root.
case "$out" in */ggml-cuda.dir/*) ;; *) [ $key_mode = 1 ] && { echo "not a ggml-cuda object" >&2; exit 2; }; run ;; esac
case "$src" in */ggml/src/ggml-cuda/*) ;; *) [ $key_mode = 1 ] && { echo "not a ggml-cuda source" >&2; exit 2; }; run ;; esac
rel="${out##*/ggml-cuda.dir/}"
root="${src%%/ggml/src/ggml-cuda/*}"

compile_key() {
  {
    "$nvcc" --version | grep -m1 'release'
    printf '%s\n' "${flags[@]}"
    (cd "$root" && find ggml/include ggml/src/ggml-cuda -type f -print0 |
      cat - <(find ggml/src -maxdepth 1 -name '*.h' -print0) | sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}

if [ $key_mode = 1 ]; then
  echo "$(compile_key)  $rel"
  exit 0
fi

cache="${YAP_CUDA_OBJECTS:-}"
[ -n "$cache" ] && [ -f "$cache/MANIFEST" ] && [ -f "$cache/$rel" ] || run
key="$(compile_key)"
if grep -qxF "$key  $rel" "$cache/MANIFEST"; then
  cp "$cache/$rel" "$out"
  # The object's dependencies for make/ninja: its source (the headers are in the key).
  [ -n "$dep" ] && printf '%s: %s\n' "${mt:-$out}" "$src" >"$dep"
  echo "cuda-objcache: took $rel" >&2
  exit 0
fi
echo "cuda-objcache: $rel compiled here (key differs from $cache/MANIFEST)" >&2
run
