#!/usr/bin/env bash
# The GPU measurement (issue 15 item 5), run ON the GPU machine, from the repository root, after
# scripts/bench-gpu-prep.sh has filled target/gpu-carry/ on a machine with Rust. The whole
# measurement in one command (what the H100 numbers in docs/benchmarks.md come from):
#
#   OUT=... BUDGET_S=560 scripts/bench-gpu.sh all
#
# `all` works to a deadline (BUDGET_S seconds from its start) and writes every result as soon as
# it has it, so a run cut short still leaves the levels it finished:
#   1. info; llama-server's CUDA build starts in the background (nice 19, all cores);
#   2. the random-weight Q4_K_M models (SHAPES), made by the CUDA yap itself (make-test-model +
#      quantize); the first in the foreground, the others while the first is measured;
#   3. phase "A", while llama-server builds: each Yap variant (YAP_VARIANTS) alone at every level
#      with the OpenAI client, and `yap bench` over the WebSocket (TTFB, cancel→done); the CPU is
#      busy with the build (and model making) meanwhile, so these are no comparison numbers;
#   4. phase "B", once llama-server is built: per model (SHAPES_B, default SHAPES reversed: the
#      8B first) and level, llama-server (-np = streams)
#      and one Yap (the variant with the higher aggregate tokens/s in phase A at the highest
#      level) with the same client, in an order that alternates between levels; level 64 last;
#   5. the report (scripts/bench-gpu-report.py) → $OUT/report.md and stdout.
#
# Single steps (same functions):
#   prep | compare (the same in two calls, below) |
#   info | server-build | server-wait SECS | export | models SHAPE... | smoke SHAPE |
#   phase-a SHAPE... | measure SHAPE... (phase B alone, all variants) | collect | report
#
# Results: $OUT/results.jsonl (one JSON line per client run: server, phase, shape, c,
# gpu_mem_mib), $OUT/ws.jsonl (`yap bench --json`), $OUT/env.txt, $OUT/logs.tar.xz.
#
# Environment: OUT (default target/gpu-out), WORK (models, llama.cpp build; default /tmp/yapgpu),
# SHAPES ("qwen2.5-1.5b llama-3.1-8b"), SHAPES_B, LEVELS ("1 8 32"), EXTRA_LEVELS ("64", phase B only, if
# time is left), YAP_VARIANTS ("unified split"), MAX_TOKENS (64), BUDGET_S (560),
# YAP_BATCH_TOKENS (512), YAP_KV_TOKENS (262144), YAP_MAX_SEQUENCES (128), THREADS (8),
# LLAMA_SERVER / YAP (use these binaries instead of building / unpacking).
set -uo pipefail
START="$(date +%s)"
END=$((START + ${BUDGET_S:-560}))
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARRY="$ROOT/target/gpu-carry"
WORK="${WORK:-/tmp/yapgpu}"
OUT="${OUT:-$ROOT/target/gpu-out}"
LLAMA_SERVER="${LLAMA_SERVER:-$WORK/llama/build/bin/llama-server}"
mkdir -p "$WORK/models" "$OUT"
# The CUDA yap travels xz-compressed (target/gpu-carry/yap.xz) to fit the 64 MiB carry.
YAP="${YAP:-$WORK/yap}"
if [ ! -x "$YAP" ] && [ -f "$CARRY/yap.xz" ]; then
  xz -dc "$CARRY/yap.xz" >"$YAP.tmp" && chmod +x "$YAP.tmp" && mv "$YAP.tmp" "$YAP"
fi
SHAPES="${SHAPES:-qwen2.5-1.5b llama-3.1-8b}"
SHAPES_B="${SHAPES_B:-$(echo "$SHAPES" | tr ' ' '\n' | tac | tr '\n' ' ')}"
LEVELS="${LEVELS:-1 8 32}"
EXTRA_LEVELS="${EXTRA_LEVELS-64}"
YAP_VARIANTS="${YAP_VARIANTS:-unified split}"
MAX_TOKENS="${MAX_TOKENS:-64}"
THREADS="${THREADS:-8}"
log() { echo "[$(date +%H:%M:%S) +$(($(date +%s) - START))s] bench-gpu: $*" >&2; }
left() { echo $((END - $(date +%s))); }

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
LD_LIBRARY_PATH="$(cublas_dir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH

for d in /usr/local/cuda-13.0/bin /usr/local/cuda/bin; do
  [ -x "$d/nvcc" ] && { export PATH="$d:$PATH"; break; }
done

gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -d ' ' | grep . || echo 0; }

# GET URL to stdout (curl, or Python where the machine has no curl); fails unless 2xx.
http_get() {
  if command -v curl >/dev/null; then
    curl -fs "$1"
  else
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null
  fi
}

wait_http() { # URL SECS PID
  local i
  for i in $(seq 1 $(($2 * 5))); do
    http_get "$1" >/dev/null && return 0
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
    echo "host compiler: $(c++ --version | head -1); $(cmake --version | head -1); ninja $(ninja --version 2>/dev/null)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc); $(free -g | awk '/Mem/ {print $2 " GiB"}')"
    echo "kernel: $(uname -r)"
    echo "cublas dir: $LD_LIBRARY_PATH"
    echo "yap: $("$YAP" --version 2>&1)"
    ldd "$YAP" | grep -E 'cuda|cublas|gomp|not found'
  } | tee "$OUT/env.txt" >&2
}

cmd_server_build() {
  rm -rf "$WORK/llama" && mkdir -p "$WORK/llama"
  tar xJf "$CARRY/llama-src.tar.xz" -C "$WORK/llama" --strip-components=1
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  # setsid: the build outlives the device call that starts it (the machine stays warm between
  # `prep` and `compare`).
  setsid bash -c '
    W="$1"; shift
    SECONDS=0
    nice -n 19 cmake -S "$W" -B "$W/build" "$@" -DCMAKE_BUILD_TYPE=Release \
      -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_NCCL=OFF -DBUILD_SHARED_LIBS=OFF \
      -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_BUILD_NUMBER=11434 &&
      nice -n 19 cmake --build "$W/build" --target llama-server -j "$(nproc)"
    echo "llama-server build: exit $?, ${SECONDS}s"
  ' _ "$WORK/llama" "${gen[@]}" >"$WORK/llama-build.log" 2>&1 &
  echo $! >"$WORK/llama-build.pid"
  log "llama-server build started (log $WORK/llama-build.log)"
}

cmd_server_wait() { # SECS
  local pid i
  pid="$(cat "$WORK/llama-build.pid" 2>/dev/null)"
  for i in $(seq 1 "${1:-600}"); do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  tail -2 "$WORK/llama-build.log" >&2
  if [ -x "$LLAMA_SERVER" ]; then log "llama-server ready"; else log "llama-server not built"; return 1; fi
}

# ggml-cuda's objects from this machine's llama-server build, for scripts/build-cuda.sh
# (CUDA_OBJECTS, through scripts/cuda-objcache.sh), with their MANIFEST of compile keys taken
# from the build's own commands → $OUT/cudaobj.tar.xz.NN.
cmd_export_objects() {
  local b="$WORK/llama/build" d
  d="$b/ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir"
  [ -d "$d" ] || { log "no ggml-cuda objects"; return 1; }
  ninja -C "$b" -t commands ggml-cuda | grep -- ' -c .*/ggml/src/ggml-cuda/' |
    while read -r line; do
      set -f # the arch flag holds [...]
      eval "set -- ${line#cd * && }"
      "$ROOT/scripts/cuda-objcache.sh" --key "$@"
    done | sort -k2 >"$d/MANIFEST"
  log "$(wc -l <"$d/MANIFEST") ggml-cuda objects, $(du -sh "$d" | cut -f1)"
  (cd "$d" && { echo MANIFEST; find . -name '*.cu.o' | sort; } | tar -T - -cf - | xz -T0 -6) |
    split -b 15m -d - "$OUT/cudaobj.tar.xz."
}

model_path() { echo "$WORK/models/$1-q4_k_m.gguf"; }

cmd_models() {
  local s f16 q
  for s in "$@"; do
    q="$(model_path "$s")"
    [ -f "$q" ] && continue
    f16="$WORK/models/$s-f16.gguf"
    SECONDS=0
    "$YAP" make-test-model --shape "$s" "$f16" >/dev/null || return 1
    log "make-test-model $s: ${SECONDS}s, $(du -h "$f16" | cut -f1)"
    SECONDS=0
    "$YAP" quantize "$f16" "$q" --type q4_k_m >/dev/null 2>"$WORK/quantize-$s.log" || { tail -3 "$WORK/quantize-$s.log" >&2; return 1; }
    log "quantize $s q4_k_m: ${SECONDS}s, $(du -h "$q" | cut -f1)"
    rm -f "$f16"
  done
}

# Starts a Yap on MODEL with variant VAR (unified|split) on PORT; echoes its pid.
# VAR: unified | split, optionally -bN for N tokens per decode step (e.g. split-b2048).
start_yap() { # MODEL VAR PORT
  local unified=true batch="${YAP_BATCH_TOKENS:-512}"
  [ "${2%%-*}" = split ] && unified=false
  case "$2" in *-b[0-9]*) batch="${2##*-b}" ;; esac
  env DEPLOY_MODE=chat TEXT_API_KEY=bench MAX_CONCURRENT_CONNECTIONS=512 \
    WS_MAX_MESSAGES_PER_WINDOW=100000 CHAT_MAX_LEN=2048 \
    EMBEDDED_KV_TOKENS="${YAP_KV_TOKENS:-262144}" EMBEDDED_MAX_SEQUENCES="${YAP_MAX_SEQUENCES:-128}" \
    EMBEDDED_BATCH_TOKENS="$batch" EMBEDDED_KV_UNIFIED="$unified" \
    EMBEDDED_THREADS="$THREADS" \
    "$YAP" serve --host 127.0.0.1 --port "$3" --model "$1" --log-file "$WORK/yap-$2-${1##*/}.server.log" \
    >"$WORK/yap-$2-${1##*/}.log" 2>&1 &
  echo $!
}

start_llama() { # MODEL NP PORT
  "$LLAMA_SERVER" -m "$1" --host 127.0.0.1 --port "$3" -ngl 999 -np "$2" -c $(($2 * 2048)) \
    -b 2048 -ub 512 -fa auto -t "$THREADS" --metrics ${LLAMA_EXTRA:-} >"$WORK/llama-np$2-${1##*/}.log" 2>&1 &
  echo $!
}

warmup() { # URL: one short turn, not recorded (CUDA and cuBLAS set-up stays out of the numbers)
  python3 "$ROOT/scripts/bench-gpu-client.py" --url "$1" --api-key bench -c 1 --cycles 1 --max-tokens 8 >/dev/null
}

client() { # URL LABEL C [CLIENT ARGS...]
  local cycles=1
  case "$3" in 1) cycles=4 ;; 8) cycles=2 ;; esac
  python3 "$ROOT/scripts/bench-gpu-client.py" --url "$1" --api-key bench -c "$3" \
    --cycles "$cycles" --max-tokens "$MAX_TOKENS" --stagger-s 1.0 --label "$2" "${@:4}"
}

record() { # JSON SERVER SHAPE C MEM_MIB PHASE
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(server=sys.argv[2], shape=sys.argv[3], c=int(sys.argv[4]), gpu_mem_mib=int(sys.argv[5] or 0), phase=sys.argv[6]); print(json.dumps(d))' \
    "$1" "$2" "$3" "$4" "$5" "$6" >>"$OUT/results.jsonl" || return 1
  log "$3 c=$4 $2 [$6]: $(tail -1 "$OUT/results.jsonl" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("agg %.0f tok/s, cold p50 %s ms, warm p50 %s ms, errors %d" % (d["aggregate_tps"] or 0, round(d["cold"]["ttft_ms"].get("p50") or -1), round(d["warm"]["ttft_ms"].get("p50") or -1), d["errors"]))')"
}

ws_bench() { # PORT SHAPE C VARIANT
  local n=$(($3 > 8 ? $3 : 8))
  SERVER_WS_URL="ws://127.0.0.1:$1/ws" TEXT_API_KEY=bench \
    timeout 60 "$YAP" bench -c "$3" -n "$n" --cancels "$n" --json --double-ttfb 2>>"$WORK/wsbench.err" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d.update(server="yap-ws-"+sys.argv[1], shape=sys.argv[2], c=int(sys.argv[3])); print(json.dumps(d))' "$4" "$2" "$3" \
      >>"$OUT/ws.jsonl" || log "yap bench $2 c=$3 failed"
}

# Starts Yap variant VAR on MODEL at PORT and waits for it; echoes "PID MEM_MIB".
yap_up() { # MODEL VAR PORT
  local base pid
  base="$(gpu_mem)"
  pid="$(start_yap "$1" "$2" "$3")"
  if ! wait_http "http://127.0.0.1:$3/healthz" 240 "$pid"; then
    log "yap $2 did not start on ${1##*/}"
    tail -20 "$WORK/yap-$2-${1##*/}.log" >&2
    stop "$pid"
    return 1
  fi
  cat "$WORK/yap-$2-${1##*/}.log" "$WORK/yap-$2-${1##*/}.server.log" 2>/dev/null |
    grep -m1 -E 'offloads to the GPU|no GPU found' >&2
  warmup "http://127.0.0.1:$3"
  echo "$pid $(($(gpu_mem) - base))"
}

# Phase A: each Yap variant alone (llama-server is still building); the first variant also
# runs `yap bench` over the WebSocket at each level.
phase_a() { # SHAPE
  local m v up c first=1
  m="$(model_path "$1")"
  [ -f "$m" ] || return 1
  for v in $YAP_VARIANTS; do
    [ "$(left)" -gt 150 ] || { log "phase A $1 $v: no time left"; return 0; }
    up="$(yap_up "$m" "$v" 18080)" || continue
    for c in $LEVELS; do
      [ "$(left)" -gt 120 ] || break
      record "$(client http://127.0.0.1:18080 "yap-$v" "$c")" "yap-$v" "$1" "$c" "${up#* }" A
      [ "$first" = 1 ] && ws_bench 18080 "$1" "$c" "$v"
    done
    http_get http://127.0.0.1:18080/metrics >"$WORK/yap-$v-$1-A.metrics" 2>/dev/null
    stop "${up%% *}"
    first=0
  done
}

# The Yap variant with the higher phase-A aggregate tokens/s at the highest level for SHAPE.
best_variant() { # SHAPE
  python3 - "$OUT/results.jsonl" "$1" "${YAP_VARIANTS%% *}" <<'EOF'
import json, sys
path, shape, default = sys.argv[1:4]
try:
    rows = [json.loads(l) for l in open(path) if l.strip()]
except OSError:
    rows = []
rows = [r for r in rows if r.get("phase") == "A" and r["shape"] == shape and r["server"].startswith("yap-") and not r["errors"]]
if not rows:
    print(default); sys.exit()
top = max(r["c"] for r in rows)
best = max((r for r in rows if r["c"] == top), key=lambda r: r["aggregate_tps"] or 0)
print(best["server"][4:])
EOF
}

# Phase B: llama-server (-np = streams) and Yap variants VARIANTS on SHAPE at each level of
# LEVELS_B, the same client, alternating who goes first.
# With PHASE=S the client runs with --shared-persona (one persona shared by all users).
phase_b() { # SHAPE "VARIANTS" "LEVELS_B"
  local shape="$1" m v c lp lbase lmem order s i=0 port=18082 phase="${PHASE:-B}" cargs=()
  [ "$phase" = S ] && cargs=(--shared-persona)
  declare -A ypid yport ymem
  m="$(model_path "$shape")"
  [ -f "$m" ] || return 1
  for v in $2; do
    [ "$(left)" -gt 60 ] || return 0
    up="$(yap_up "$m" "$v" "$port")" || continue
    ypid[$v]="${up%% *}" ymem[$v]="${up#* }" yport[$v]=$port
    port=$((port + 2))
  done
  for c in $3; do
    [ "$(left)" -gt $((c > 32 ? 60 : 45)) ] || { log "phase B $shape c=$c: no time left"; break; }
    lbase="$(gpu_mem)"
    lp="$(start_llama "$m" "$c" 18081)"
    if ! wait_http "http://127.0.0.1:18081/health" 120 "$lp"; then
      log "llama-server did not start"; tail -5 "$WORK/llama-np$c-${m##*/}.log" >&2; stop "$lp"; break
    fi
    warmup http://127.0.0.1:18081
    lmem=$(($(gpu_mem) - lbase))
    order="llama ${!ypid[*]}"
    [ $((i % 2)) = 1 ] && order="${!ypid[*]} llama"
    for s in $order; do
      if [ "$s" = llama ]; then
        record "$(client http://127.0.0.1:18081 llama "$c" "${cargs[@]}")" llama-server "$shape" "$c" "$lmem" "$phase"
      else
        record "$(client "http://127.0.0.1:${yport[$s]}" "yap-$s" "$c" "${cargs[@]}")" "yap-$s" "$shape" "$c" "${ymem[$s]}" "$phase"
      fi
    done
    http_get http://127.0.0.1:18081/metrics >"$WORK/llama-np$c-$shape-$phase.metrics" 2>/dev/null
    stop "$lp"
    i=$((i + 1))
  done
  for v in "${!ypid[@]}"; do
    http_get "http://127.0.0.1:${yport[$v]}/metrics" >"$WORK/yap-$v-$shape-$phase.metrics" 2>/dev/null
    stop "${ypid[$v]}"
  done
}

cmd_smoke() { # SHAPE
  local up
  up="$(yap_up "$(model_path "$1")" smoke 18090)" || return 1
  echo "gpu memory: ${up#* } MiB for yap on $1" >&2
  python3 "$ROOT/scripts/bench-gpu-client.py" --url http://127.0.0.1:18090 -c 1 --cycles 1 \
    --max-tokens 32 --label smoke | tee "$OUT/smoke.json"
  stop "${up%% *}"
}

cmd_collect() { # server logs, build log tail and metrics scrapes → $OUT/logs.tar.xz
  (cd "$WORK" && tar -cJf "$OUT/logs.tar.xz" --ignore-failed-read ./*.log ./*.metrics ./*.err 2>/dev/null)
}

report() {
  python3 "$ROOT/scripts/bench-gpu-report.py" "$OUT" >"$OUT/report.md" 2>&1
  cat "$OUT/report.md"
}

# The machine's info, llama-server's build (in the background), the models — the first one in
# the foreground, the others made while phase A measures the first.
prepare() {
  local first rest mpid
  read -r first rest <<<"$SHAPES"
  cmd_info
  [ -x "$LLAMA_SERVER" ] || cmd_server_build
  cmd_models "$first" || log "models failed"
  cmd_models $rest &
  mpid=$!
  phase_a "$first"
  wait "$mpid" || log "models failed"
}

cmd_all() {
  local s rest
  read -r _ rest <<<"$SHAPES"
  prepare
  for s in $rest; do phase_a "$s"; done
  cmd_collect
  cmd_server_wait $(($(left) - 90)) || { cmd_collect; report; return 1; }
  for s in $SHAPES_B; do phase_b "$s" "$(best_variant "$s")" "$LEVELS"; done
  for s in $SHAPES_B; do phase_b "$s" "$(best_variant "$s")" "$EXTRA_LEVELS"; done
  cmd_collect
  report
  log "done"
}

# The measurement in two device calls (the machine stays warm between them, keeping WORK when
# it lies in the repository's ignored target/): `prep` (info, llama-server's build, the models,
# phase A while it builds) then `compare` (phase B per shape with the variants in VARIANTS_B,
# at LEVELS and EXTRA_LEVELS; then phase S: the 8B shape at 32 streams with one persona).
cmd_prep() {
  prepare
  cmd_collect
  cmd_server_wait $(($(left) - 10))
}

# Yap variants compared in phase B: VARIANTS_B, and for the 1.5B also VARIANTS_SMALL (its steps
# are short, so the batch size matters there).
variants_b() { # SHAPE
  case "$1" in
    qwen2.5-1.5b) echo "${VARIANTS_SMALL:-${VARIANTS_B:-split} split-b2048}" ;;
    *) echo "${VARIANTS_B:-split}" ;;
  esac
}

cmd_compare() {
  local s
  cmd_server_wait "${SERVER_WAIT_S:-240}" || return 1
  for s in $SHAPES_B; do phase_b "$s" "$(variants_b "$s")" "$LEVELS $EXTRA_LEVELS"; done
  PHASE=S phase_b llama-3.1-8b "${VARIANTS_B:-split}" 32
  cmd_collect
  report
  log "done"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  all) cmd_all ;;
  prep) cmd_prep ;;
  compare) cmd_compare ;;
  info) cmd_info ;;
  server-build) cmd_server_build ;;
  server-wait) cmd_server_wait "$@" ;;
  export) cmd_export_objects ;;
  models) cmd_models "$@" ;;
  smoke) cmd_smoke "$@" ;;
  phase-a) for s in "$@"; do phase_a "$s"; done ;;
  measure) for s in "$@"; do phase_b "$s" "$YAP_VARIANTS" "$LEVELS $EXTRA_LEVELS"; done ;;
  collect) cmd_collect ;;
  report) report ;;
  *) sed -n 2,30p "$0"; exit 2 ;;
esac
