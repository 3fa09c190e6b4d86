#!/usr/bin/env bash
# Runs the protocol-v1 client (tests/v1_client.py, `websockets` package) against a live
# `yap serve` on the generated tiny chat model, once per deploy mode: both, chat, tool (the tool
# model is the tiny BERT parity fixture).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import websockets.asyncio.client" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check "websockets>=14"
YAP=./target/release/yap
mkdir -p target/v1-client
MODEL=target/v1-client/tiny.gguf
$YAP make-test-model "$MODEL" >/dev/null
TOOL=crates/yap-tool/tests/fixtures/bert
PORT="${YAP_TEST_PORT:-18775}"
for MODE in both chat tool; do
  LOG=target/v1-client/server-$MODE.log
  TEXT_API_KEY=v1-key MAX_CONCURRENT_CONNECTIONS=3 WS_IDLE_TIMEOUT_S=2 WS_MAX_MESSAGES_PER_WINDOW=30 \
  CHAT_MAX_OUT=40 CHAT_MAX_LEN=8192 EMBEDDED_KV_TOKENS=65536 DEPLOY_MODE=$MODE TOOL_MODEL=$TOOL \
  CHAT_HISTORY_MAX_TOKENS=3000 LOG_FILE=target/v1-client/yap-$MODE.log \
    $YAP serve --host 127.0.0.1 --port "$PORT" --model "$MODEL" --threads 1 >"$LOG" 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! python3 tests/v1_client.py --url "ws://127.0.0.1:$PORT/ws" --key v1-key --mode "$MODE"; then
    echo "v1 client failed in mode $MODE; server log:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  kill $SERVER 2>/dev/null || true
  wait $SERVER 2>/dev/null || true
done
