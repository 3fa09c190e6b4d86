#!/usr/bin/env bash
# `yap quantize` against llama.cpp's own `llama-quantize` (built from llama.cpp sources by
# scripts/build-llama-server-native.sh): both quantize the same F16/F32 GGUFs, and the outputs
# must be byte-identical, for every type. Inputs: the tiny test model (F32, rows of 64: the
# Q5_0/Q5_1/Q8_0 fallbacks) and a random model with the default model's shape (F16,
# qwen2.5-1.5b: the k-quant paths, Q6_K output, use_more_bits layers).
#
#   scripts/check-quantize.sh [TYPES="q4_k_m q5_k_m q4_k_s q6_k q8_0"]
# Environment: YAP_BIN (default target/release/yap, built with --features dev-tools),
# LLAMA_QUANTIZE (default target/llama-native/build/bin/llama-quantize), WORK (default
# target/check-quantize).
set -uo pipefail
cd "$(dirname "$0")/.."
TYPES="${1:-q4_k_m q5_k_m q4_k_s q6_k q8_0}"
YAP_BIN="${YAP_BIN:-target/release/yap}"
LLAMA_QUANTIZE="${LLAMA_QUANTIZE:-target/llama-native/build/bin/llama-quantize}"
WORK="${WORK:-target/check-quantize}"
mkdir -p "$WORK"
[ -f "$WORK/tiny.gguf" ] || "$YAP_BIN" make-test-model "$WORK/tiny.gguf" >/dev/null
[ -f "$WORK/qwen-shape-f16.gguf" ] || "$YAP_BIN" make-test-model --shape qwen2.5-1.5b "$WORK/qwen-shape-f16.gguf" >/dev/null
fail=0
for model in tiny qwen-shape-f16; do
  for t in $TYPES; do
    T=$(echo "$t" | tr a-z A-Z)
    a="$WORK/$model.$t.yap.gguf"
    b="$WORK/$model.$t.llama.gguf"
    s=$SECONDS
    "$YAP_BIN" quantize "$WORK/$model.gguf" "$a" --type "$t" >/dev/null 2>"$WORK/yap-$model-$t.log" || { echo "yap quantize failed: $model $t"; fail=1; continue; }
    ty=$((SECONDS - s)); s=$SECONDS
    "$LLAMA_QUANTIZE" "$WORK/$model.gguf" "$b" "$T" 2 >"$WORK/llama-$model-$t.log" 2>&1 || { echo "llama-quantize failed: $model $t"; fail=1; continue; }
    tl=$((SECONDS - s))
    if cmp -s "$a" "$b"; then
      echo "identical  $model $t ($(stat -c %s "$a") bytes; yap ${ty}s, llama-quantize ${tl}s, 2 threads)"
    else
      echo "DIFFERENT  $model $t: $(cmp "$a" "$b" | head -1)"
      fail=1
    fi
    rm -f "$a" "$b"
  done
done
exit $fail
