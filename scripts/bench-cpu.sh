#!/usr/bin/env bash
# Yap vs llama.cpp's llama-server on this CPU (issue 15, the CPU table): the same GGUF, the same
# threads, the same client as on the GPU (scripts/bench-gpu-client.py: /v1/chat/completions
# streaming, cold and warm-prefix turns), runs interleaved (server order alternates between
# rounds and levels; each measurement starts the one server it measures and stops it after),
# then `yap bench` over the WebSocket path (TTFB, decode, cancel -> done).
# Tables (one per round, Yap and llama-server side by side): scripts/bench-gpu-report.py
# "$OUT/rN".
#
#   scripts/bench-cpu.sh [LEVELS="1 8"] [ROUNDS=3]
#
# Environment:
#   YAP_BIN       the yap binary (default: target/native/release/yap from
#                 scripts/build-native.sh, else target/release/yap)
#   LLAMA_SERVER  llama-server (default: target/llama-native/build/bin/llama-server from
#                 scripts/build-llama-server-native.sh)
#   MODEL         GGUF (default: the default chat model, fetched into the cache)
#   THREADS       CPU threads for both servers (default: all cores)
#   MAX_TOKENS    tokens per reply (default 64)
#   OUT           results (default target/bench-cpu): rN/results.jsonl, ws.jsonl, logs
set -uo pipefail
cd "$(dirname "$0")/.."
LEVELS="${1:-1 8}"
ROUNDS="${2:-3}"
YAP_BIN="${YAP_BIN:-$( [ -x target/native/release/yap ] && echo target/native/release/yap || echo target/release/yap )}"
LLAMA_SERVER="${LLAMA_SERVER:-target/llama-native/build/bin/llama-server}"
THREADS="${THREADS:-$(nproc)}"
MAX_TOKENS="${MAX_TOKENS:-64}"
OUT="${OUT:-target/bench-cpu}"
mkdir -p "$OUT"
MODEL="${MODEL:-$("$YAP_BIN" fetch-model | tail -n 1)}"
SHAPE="${SHAPE:-$(basename "$MODEL" .gguf)}"
MAXC=$(printf '%s\n' $LEVELS | sort -n | tail -n 1)
YAP_PORT=18431
LLAMA_PORT=18432
log() { echo "[$(date +%H:%M:%S)] bench-cpu: $*" >&2; }

pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT

wait_http() { # URL
  for _ in $(seq 1 1200); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  log "not ready: $1"; return 1
}

# Only the server being measured runs: on a small machine an idle llama-server's OpenMP
# workers keep spinning (~80% of a core), which would be measured against the other server.
# llama-server: a slot per stream of the highest level (continuous batching and the prompt
# cache are on by default), 2048 tokens per slot; Yap (chat only): the same per-stream budget.
up() { # SERVER → sets pid, port
  if [ "$1" = llama-server ]; then
    port=$LLAMA_PORT
    "$LLAMA_SERVER" -m "$MODEL" --host 127.0.0.1 --port "$port" -t "$THREADS" -tb "$THREADS" \
      -np "$MAXC" -c $((MAXC * 2048)) --cont-batching --metrics >>"$OUT/llama-server.log" 2>&1 &
    pid=$!
    wait_http "http://127.0.0.1:$port/health" || return 1
  else
    port=$YAP_PORT
    TEXT_API_KEY=bench MAX_CONCURRENT_CONNECTIONS=256 DEPLOY_MODE=chat \
      "$YAP_BIN" serve --model "$MODEL" --host 127.0.0.1 --port "$port" --threads "$THREADS" \
      --log-file "$OUT/yap.server.log" >>"$OUT/yap.log" 2>&1 &
    pid=$!
    wait_http "http://127.0.0.1:$port/healthz" || return 1
  fi
  # One short turn, not recorded: first-use costs stay out of the numbers.
  python3 scripts/bench-gpu-client.py --url "http://127.0.0.1:$port" --api-key bench -c 1 \
    --cycles 1 --max-tokens 8 >/dev/null
}
down() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""; sleep 2; }

{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "flags: $(grep -m1 -o 'avx512[a-z_]*\|avx_vnni\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "yap: $YAP_BIN ($("$YAP_BIN" --version))"
  echo "llama-server: $LLAMA_SERVER ($("$LLAMA_SERVER" --version 2>&1 | tr '\n' ' '))"
  echo "model: $MODEL; threads: $THREADS; max_tokens: $MAX_TOKENS; levels: $LEVELS; rounds: $ROUNDS"
} | tee "$OUT/env.txt" >&2

client() { # URL LABEL C
  local cycles=2
  [ "$3" = 1 ] && cycles=4
  python3 scripts/bench-gpu-client.py --url "$1" --api-key bench -c "$3" --cycles "$cycles" \
    --max-tokens "$MAX_TOKENS" --stagger-s 1.0 --label "$2"
}
record() { # JSON SERVER C ROUND
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(server=sys.argv[2], shape=sys.argv[3], c=int(sys.argv[4]), round=int(sys.argv[5])); print(json.dumps(d))' \
    "$1" "$2" "$SHAPE" "$3" "$4" >>"$OUT/r$4/results.jsonl"
}

i=0
for r in $(seq 1 "$ROUNDS"); do
  mkdir -p "$OUT/r$r"
  for c in $LEVELS; do
    if [ $((i % 2)) = 0 ]; then order="yap llama-server"; else order="llama-server yap"; fi
    i=$((i + 1))
    for s in $order; do
      up "$s" || { log "$s did not start"; down; continue; }
      j="$(client "http://127.0.0.1:$port" "$s" "$c")" || log "client failed: $s c=$c"
      down
      [ -n "$j" ] && record "$j" "$s" "$c" "$r"
      log "round $r c=$c $s: $(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("aggregate %.1f tok/s, cold TTFT p50 %.0f ms, warm %.0f ms" % (d["aggregate_tps"], d["cold"]["ttft_ms"]["p50"], d["warm"]["ttft_ms"]["p50"]))' 2>&1)"
    done
  done
done

log "yap bench (WebSocket)"
up yap || exit 1
TEXT_API_KEY=bench "$YAP_BIN" bench --server "ws://127.0.0.1:$YAP_PORT/ws" \
  -c "$(echo $LEVELS | tr ' ' ',')" -n 16 --cancels 16 --double-ttfb --json |
  python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); d["shape"]=sys.argv[1]; print(json.dumps(d))' "$SHAPE" \
  >>"$OUT/ws.jsonl"
down
for r in $(seq 1 "$ROUNDS"); do
  echo; echo "### round $r"; python3 scripts/bench-gpu-report.py "$OUT/r$r"
done
echo; python3 scripts/bench-gpu-report.py "$OUT" | sed -n '/WebSocket/,$p'
