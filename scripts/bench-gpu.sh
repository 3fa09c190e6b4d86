#!/usr/bin/env bash
# The GPU measurement (issue 15 item 5), run ON the GPU machine, from the repository root, after
# scripts/bench-gpu-prep.sh has filled target/gpu-carry/ on a machine with Rust. Steps:
#
#   scripts/bench-gpu.sh info                 versions, driver, GPU → $OUT/env.txt
#   scripts/bench-gpu.sh server-build         builds llama-server (CUDA, sm_90) from
#                                             target/gpu-carry/llama-src.tar.xz, in the background
#   scripts/bench-gpu.sh server-wait SECS     waits for that build
#   scripts/bench-gpu.sh models SHAPE...      random-weight Q4_K_M models: yap make-test-model
#                                             --shape SHAPE, then yap quantize --type q4_k_m
#   scripts/bench-gpu.sh smoke SHAPE          the CUDA yap serves SHAPE on the GPU: one reply
#   scripts/bench-gpu.sh measure SHAPE        Yap vs llama-server at each concurrency level
#
# `measure` keeps one Yap per variant (YAP_VARIANTS) running for the whole model and starts a
# llama-server with -np = concurrency for each level (LEVELS); at each level it runs the same
# client (scripts/bench-gpu-client.py, /v1/chat/completions streaming) against every server,
# in an order that alternates between levels, then `yap bench` (WebSocket, with cancels) against
# the first Yap. Results: one JSON line per run in $OUT/results.jsonl; GPU memory per server.
#
# Environment: OUT (results; default target/gpu-out), WORK (models, llama.cpp build; default
# /tmp/yapgpu), LEVELS (default "1 8 32 64"), YAP_VARIANTS (default "unified split"), MAX_TOKENS
# (128), YAP_BATCH_TOKENS (512), YAP_KV_TOKENS (131072), YAP_MAX_SEQUENCES (128).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARRY="$ROOT/target/gpu-carry"
WORK="${WORK:-/tmp/yapgpu}"
OUT="${OUT:-$ROOT/target/gpu-out}"
YAP="$CARRY/yap"
LLAMA_SERVER="$WORK/llama/build/bin/llama-server"
LEVELS="${LEVELS:-1 8 32 64}"
YAP_VARIANTS="${YAP_VARIANTS:-unified split}"
MAX_TOKENS="${MAX_TOKENS:-128}"
mkdir -p "$WORK/models" "$OUT"
chmod +x "$YAP" 2>/dev/null || true
log() { echo "[$(date +%H:%M:%S)] bench-gpu: $*" >&2; }

# cuBLAS for the CUDA yap (linked dynamically; see docs/gpu.md): the machine's toolkit or the
# PyTorch environment's wheel.
cublas_dir() {
  local d
  for d in /usr/local/cuda-13.0/lib64 /usr/local/cuda/lib64 /usr/local/cuda-13.0/targets/x86_64-linux/lib; do
    [ -f "$d/libcublasLt.so.13" ] && { echo "$d"; return; }
  done
  python3 - <<'EOF' 2>/dev/null
import glob, site, sys
for p in site.getsitepackages():
    for f in glob.glob(p + "/nvidia/cu13/lib/libcublasLt.so.13"):
        print(f.rsplit("/", 1)[0]); sys.exit()
EOF
}
export LD_LIBRARY_PATH="$(cublas_dir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 | tr -d ' '; }

wait_http() { # URL SECS PID
  local i
  for i in $(seq 1 $(($2 * 5))); do
    curl -fs -o /dev/null "$1" && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

stop() { # PID
  kill "$1" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

cmd_info() {
  {
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    nvidia-smi | head -4 | tail -2
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -2 | head -1)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc)"
    echo "kernel: $(uname -r)"
    echo "cublas dir: $LD_LIBRARY_PATH"
    echo "yap: $("$YAP" --version 2>&1)"
    ldd "$YAP" | grep -E 'cuda|cublas|gomp|not found'
  } | tee "$OUT/env.txt"
}

cmd_server_build() {
  rm -rf "$WORK/llama" && mkdir -p "$WORK/llama"
  tar xJf "$CARRY/llama-src.tar.xz" -C "$WORK/llama" --strip-components=1
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  (
    cmake -S "$WORK/llama" -B "$WORK/llama/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_NCCL=OFF -DBUILD_SHARED_LIBS=OFF \
      -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_BUILD_NUMBER=11434 &&
      cmake --build "$WORK/llama/build" --target llama-server -j "$(nproc)"
  ) >"$WORK/llama-build.log" 2>&1 &
  echo $! >"$WORK/llama-build.pid"
  log "llama-server build started (log $WORK/llama-build.log)"
}

cmd_server_wait() {
  local pid i
  pid="$(cat "$WORK/llama-build.pid" 2>/dev/null)"
  for i in $(seq 1 "${1:-600}"); do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  tail -3 "$WORK/llama-build.log" >&2
  [ -x "$LLAMA_SERVER" ] && log "llama-server ready" || { log "llama-server not built"; return 1; }
}

model_path() { echo "$WORK/models/$1-q4_k_m.gguf"; }

cmd_models() {
  local s f16 q
  for s in "$@"; do
    q="$(model_path "$s")"
    [ -f "$q" ] && continue
    f16="$WORK/models/$s-f16.gguf"
    log "making $s"
    SECONDS=0
    "$YAP" make-test-model --shape "$s" "$f16" >&2 || return 1
    log "make-test-model $s: ${SECONDS}s, $(du -h "$f16" | cut -f1)"
    SECONDS=0
    "$YAP" quantize "$f16" "$q" --type q4_k_m >&2 || return 1
    log "quantize $s q4_k_m: ${SECONDS}s, $(du -h "$q" | cut -f1)"
    rm -f "$f16"
  done
}

# Starts a Yap on MODEL with variant VAR (unified|split|...) on PORT; echoes its pid.
start_yap() { # MODEL VAR PORT
  local unified=true
  [ "$2" = split ] && unified=false
  env DEPLOY_MODE=chat TEXT_API_KEY=bench MAX_CONCURRENT_CONNECTIONS=512 \
    WS_MAX_MESSAGES_PER_WINDOW=100000 CHAT_MAX_LEN=1024 \
    EMBEDDED_KV_TOKENS="${YAP_KV_TOKENS:-131072}" EMBEDDED_MAX_SEQUENCES="${YAP_MAX_SEQUENCES:-128}" \
    EMBEDDED_BATCH_TOKENS="${YAP_BATCH_TOKENS:-512}" EMBEDDED_KV_UNIFIED="$unified" \
    "$YAP" serve --host 127.0.0.1 --port "$3" --model "$1" --log-file "$WORK/yap-$2.server.log" \
    >"$WORK/yap-$2.log" 2>&1 &
  echo $!
}

start_llama() { # MODEL NP PORT
  "$LLAMA_SERVER" -m "$1" --host 127.0.0.1 --port "$3" -ngl 999 -np "$2" -c $(($2 * 1024)) \
    -b 2048 -ub 512 -fa auto --metrics ${LLAMA_EXTRA:-} >"$WORK/llama-np$2.log" 2>&1 &
  echo $!
}

warmup() { # URL: one short turn, not recorded (CUDA and cuBLAS set-up stays out of the numbers)
  python3 "$ROOT/scripts/bench-gpu-client.py" --url "$1" -c 1 --cycles 1 --max-tokens 8 >/dev/null
}

client() { # URL LABEL C
  local cycles=2
  case "$3" in 1) cycles=8 ;; 8) cycles=3 ;; esac
  python3 "$ROOT/scripts/bench-gpu-client.py" --url "$1" --api-key bench -c "$3" \
    --cycles "$cycles" --max-tokens "$MAX_TOKENS" --stagger-s 1.0 --label "$2"
}

record() { # JSON SERVER SHAPE C MEM_MIB
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(server=sys.argv[2], shape=sys.argv[3], c=int(sys.argv[4]), gpu_mem_mib=int(sys.argv[5] or 0)); print(json.dumps(d))' \
    "$1" "$2" "$3" "$4" "$5" >>"$OUT/results.jsonl"
}

cmd_smoke() {
  local m pid port=18090 base
  m="$(model_path "$1")"
  base="$(gpu_mem)"
  pid="$(start_yap "$m" smoke "$port")"
  if ! wait_http "http://127.0.0.1:$port/healthz" 300 "$pid"; then
    log "yap did not start"; tail -20 "$WORK/yap-smoke.log" >&2; return 1
  fi
  grep -m2 -E 'offloads to the GPU|no GPU found' "$WORK/yap-smoke.log" >&2
  echo "gpu memory: $(( $(gpu_mem) - base )) MiB for yap on $1" >&2
  python3 "$ROOT/scripts/bench-gpu-client.py" --url "http://127.0.0.1:$port" -c 1 --cycles 1 \
    --max-tokens 32 --label smoke | tee "$OUT/smoke.json"
  stop "$pid"
}

cmd_measure() {
  local shape="$1" m base v i=0 c lp mem order s
  m="$(model_path "$shape")"
  declare -A ypid yport ymem
  local port=18080
  for v in $YAP_VARIANTS; do
    base="$(gpu_mem)"
    ypid[$v]="$(start_yap "$m" "$v" "$port")"
    yport[$v]=$port
    wait_http "http://127.0.0.1:$port/healthz" 300 "${ypid[$v]}" || { log "yap $v failed"; tail "$WORK/yap-$v.log" >&2; return 1; }
    warmup "http://127.0.0.1:$port"
    ymem[$v]=$(( $(gpu_mem) - base ))
    log "yap $v on $shape: ${ymem[$v]} MiB"
    port=$((port + 2))
  done
  for c in $LEVELS; do
    base="$(gpu_mem)"
    lp="$(start_llama "$m" "$c" 18081)"
    wait_http "http://127.0.0.1:18081/health" 300 "$lp" || { log "llama-server failed"; tail "$WORK/llama-np$c.log" >&2; return 1; }
    warmup http://127.0.0.1:18081
    mem=$(( $(gpu_mem) - base ))
    # Alternate who goes first from one level to the next.
    order="llama $YAP_VARIANTS"
    [ $((i % 2)) = 1 ] && order="$YAP_VARIANTS llama"
    for s in $order; do
      if [ "$s" = llama ]; then
        record "$(client http://127.0.0.1:18081 llama "$c")" llama-server "$shape" "$c" "$mem"
      else
        record "$(client "http://127.0.0.1:${yport[$s]}" "yap-$s" "$c")" "yap-$s" "$shape" "$c" "${ymem[$s]}"
      fi
      log "$shape c=$c $s: $(tail -1 "$OUT/results.jsonl" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("agg %.0f tok/s, cold p50 %s ms, warm p50 %s ms, errors %d" % (d["aggregate_tps"] or 0, round(d["cold"]["ttft_ms"].get("p50") or -1), round(d["warm"]["ttft_ms"].get("p50") or -1), d["errors"]))')"
    done
    curl -fs http://127.0.0.1:18081/metrics >"$WORK/llama-np$c.metrics" 2>/dev/null
    stop "$lp"
    v="${YAP_VARIANTS%% *}"
    SERVER_WS_URL="ws://127.0.0.1:${yport[$v]}/ws" TEXT_API_KEY=bench \
      "$YAP" bench -c "$c" -n $((c > 8 ? 2 * c : 16)) --cancels "$((c > 8 ? c : 8))" --json --double-ttfb \
      2>>"$WORK/wsbench.err" | python3 -c 'import json,sys; d=json.load(sys.stdin); d.update(server="yap-ws-'"$v"'", shape="'"$shape"'", c='"$c"'); print(json.dumps(d))' \
      >>"$OUT/ws.jsonl"
    i=$((i + 1))
  done
  for v in $YAP_VARIANTS; do
    curl -fs "http://127.0.0.1:${yport[$v]}/metrics" >"$WORK/yap-$v-$shape.metrics" 2>/dev/null
    stop "${ypid[$v]}"
  done
}

cmd="${1:-}"
shift || true
case "$cmd" in
  info) cmd_info ;;
  server-build) cmd_server_build ;;
  server-wait) cmd_server_wait "$@" ;;
  models) cmd_models "$@" ;;
  smoke) cmd_smoke "$@" ;;
  measure) for s in "$@"; do cmd_measure "$s"; done ;;
  *) sed -n 2,22p "$0"; exit 2 ;;
esac
