#!/usr/bin/env bash
# Replays the shipped case file against a live server running the default tool model
# (DEPLOY_MODE=tool: no chat model is loaded) and fails below 90% accuracy.
#   ./scripts/tool-eval.sh [extra yap tool-eval flags]
set -euo pipefail
cd "$(dirname "$0")/.."
YAP=./target/release/yap
PORT="${TOOL_EVAL_PORT:-8791}"
KEY=tool-eval-key
LOG="$(mktemp -d)/server.log"
TEXT_API_KEY=$KEY MAX_CONCURRENT_CONNECTIONS=16 DEPLOY_MODE=tool HOST=127.0.0.1 PORT=$PORT \
  LOG_FILE="$LOG" "$YAP" serve >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.2
done
"$YAP" tool-eval --server "ws://127.0.0.1:$PORT/ws" --api-key $KEY --concurrency "${TOOL_EVAL_CONCURRENCY:-4}" \
  --min-accuracy 0.9 "$@"
