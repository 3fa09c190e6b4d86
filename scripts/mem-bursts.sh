#!/usr/bin/env bash
# Memory after bursts with each global allocator (issue 10): builds `yap` with the system
# allocator, jemalloc and mimalloc, runs scripts/mem-bursts.py against each on the tiny model,
# and prints one JSON line per allocator. Takes a few minutes (three links of the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import websockets.asyncio.client" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check "websockets>=14"
mkdir -p target/mem
for ALLOC in system jemalloc mimalloc; do
  FEATURES=dev-tools
  [ "$ALLOC" != system ] && FEATURES="dev-tools,$ALLOC"
  cargo build --release -q -p yap-cli --features "$FEATURES"
  cp target/release/yap "target/mem/yap-$ALLOC"
done
target/mem/yap-system make-test-model target/mem/tiny.gguf >/dev/null
PORT="${YAP_TEST_PORT:-18795}"
for ALLOC in system jemalloc mimalloc; do
  TEXT_API_KEY=mem-key MAX_CONCURRENT_CONNECTIONS=600 DEPLOY_MODE=chat CHAT_MAX_OUT=64 CHAT_MAX_LEN=8192 \
  EMBEDDED_KV_TOKENS=65536 WS_MAX_MESSAGES_PER_WINDOW=0 LOG_FILE=target/mem/yap-$ALLOC.log \
    "target/mem/yap-$ALLOC" serve --host 127.0.0.1 --port "$PORT" --model target/mem/tiny.gguf --threads 1 \
    >"target/mem/server-$ALLOC.out" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  ulimit -n 4096 2>/dev/null || true
  printf '%s ' "$ALLOC"
  python3 scripts/mem-bursts.py --url "ws://127.0.0.1:$PORT/ws" --key mem-key --pid "$SERVER"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
done
