#!/usr/bin/env bash
# Replays the TEST split of the hand-written conversations (tools/tool-model/data/splits/test.jsonl)
# against a live server running the default tool model (DEPLOY_MODE=tool: no chat model is loaded),
# each conversation through one session so that history builds up, and fails below the floors:
# accuracy 0.92, every category 0.85, false "yes" right after a "yes" at most 8%.
#   ./scripts/tool-eval.sh [extra yap tool-eval flags, e.g. --cases FILE --verbose]
set -euo pipefail
cd "$(dirname "$0")/.."
YAP=./target/release/yap
PORT="${TOOL_EVAL_PORT:-8791}"
KEY=tool-eval-key
LOG="$(mktemp -d)/server.log"
# No per-connection message limit: a conversation's turns share one connection.
TEXT_API_KEY=$KEY MAX_CONCURRENT_CONNECTIONS=16 DEPLOY_MODE=tool HOST=127.0.0.1 PORT=$PORT \
  WS_MAX_MESSAGES_PER_WINDOW=0 WS_MAX_CANCELS_PER_WINDOW=0 \
  LOG_FILE="$LOG" "$YAP" serve >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "server exited; log: $LOG" >&2; cat "$LOG" >&2 || true; exit 1; }
  sleep 0.2
done
"$YAP" tool-eval --server "ws://127.0.0.1:$PORT/ws" --api-key $KEY --concurrency "${TOOL_EVAL_CONCURRENCY:-4}" \
  --cases tools/tool-model/data/splits/test.jsonl \
  --min-accuracy 0.92 --min-category-accuracy 0.85 --max-false-yes-after-yes 0.08 "$@"
