#!/usr/bin/env bash
# Starts `yap serve` on a generated tiny model and runs the OpenAI-compatibility tests with the
# official `openai` Python package against it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check openai
YAP=./target/release/yap
mkdir -p target/openai-compat
MODEL=target/openai-compat/tiny.gguf
$YAP make-test-model "$MODEL" >/dev/null
PORT="${YAP_TEST_PORT:-18765}"
LOG=target/openai-compat/server.log
TEXT_API_KEY=compat-key MAX_CONCURRENT_CONNECTIONS=2 WS_HANDSHAKE_ACQUIRE_TIMEOUT_S=0.2 CHAT_MAX_LEN=8192 EMBEDDED_KV_TOKENS=65536 \
  $YAP serve --host 127.0.0.1 --port "$PORT" --model "$MODEL" --threads 1 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
YAP_BASE_URL="http://127.0.0.1:$PORT/v1" YAP_API_KEY=compat-key python3 tests/openai_compat.py
