#!/usr/bin/env bash
# Builds and proves Yap's CPU image on a machine that cannot reach a container registry:
#
#   1. base image: `debootstrap` of Debian bookworm (minbase + the runtime libraries) from the
#      Debian mirror this machine's apt already uses, then `docker import` -> yap-base:bookworm;
#   2. runtime image: deploy/Dockerfile.local (the runtime stage of deploy/Dockerfile.cpu) on
#      that base with the host-built binary (target/release/yap) -> yap:cpu-local;
#   3. runs it (default models fetched at first start into the volume yap-proof-data), waits for
#      /healthz, passes one turn through it (the `yap warmup` client inside the container prints
#      every frame), shows a few /metrics lines, then `docker stop` (SIGTERM: graceful drain)
#      while a second turn is in flight (its client runs on the host, so it outlives the
#      container and prints the frames the drain sent).
#
# Needs root, Debian's `docker.io` and `debootstrap` packages (it installs them when missing) and
# a running dockerd (started when none answers). Not part of CI. Usage:
#   deploy/local-image.sh              # all steps
#   deploy/local-image.sh --base-only  # step 1 only
# Env: DEBIAN_MIRROR (default: the first mirror in this machine's apt sources), YAP_BIN (default
# target/release/yap, built when missing), PORT (default 18000), KEEP=1 keeps the container,
# FRESH_BASE=1 rebuilds the base image even when it exists, THREADS (EMBEDDED_THREADS in the
# container, default 0 = all cores), SEED_CACHE=1 copies the host's verified cached models
# (YAP_CACHE_DIR, else ~/.cache/yap: `*.gguf` with their `.sha256` marker, tool-model folders
# with `yap-adapter.sha256`) into the fresh volume before the first start, so nothing is fetched
# that the host already has (SEED_FROM overrides the folder). The volume is recreated on every
# run (KEEP_VOLUME=1 keeps it), so the first start is a real first start.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_TAG=yap-base:bookworm
IMAGE_TAG=yap:cpu-local
NAME=yap-proof
VOLUME=yap-proof-data
PORT="${PORT:-18000}"
BIN="${YAP_BIN:-target/release/yap}"
KEY="proof-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
ROOTFS="${ROOTFS:-/var/tmp/yap-rootfs-bookworm}"

say() { printf '\n== %s\n' "$*"; }

need_tools() {
  local missing=()
  command -v docker >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    say "starting dockerd"
    (dockerd >/var/tmp/yap-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null
  fi
}

# The mirror apt uses here (deb822 `URIs:` or one-line `deb URL suite`), unless DEBIAN_MIRROR.
mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
        | grep -v security | head -n1 || true)"
  if [ -z "$m" ]; then
    m="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1 || true)"
  fi
  [ -n "$m" ] || { echo "no Debian mirror found in apt sources; set DEBIAN_MIRROR" >&2; exit 1; }
  echo "$m"
}

build_base() {
  if [ "${FRESH_BASE:-0}" = 1 ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "FRESH_BASE=1: removing the old $BASE_TAG"
    docker rmi "$BASE_TAG" >/dev/null
  fi
  if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "base image $BASE_TAG exists"
    return
  fi
  local m; m="$(mirror)"
  say "debootstrap bookworm (minbase) into $ROOTFS from $m"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase \
    --include=ca-certificates,libgomp1,libstdc++6,python3,python3-pip,curl \
    bookworm "$ROOTFS" "$m" >/var/tmp/yap-debootstrap.log 2>&1 \
    || { tail -n 30 /var/tmp/yap-debootstrap.log; exit 1; }
  # Slim it: no apt lists, docs or caches in the image.
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
  say "docker import -> $BASE_TAG"
  tar -C "$ROOTFS" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$BASE_TAG" >/dev/null
  rm -rf "$ROOTFS"
}

build_runtime() {
  if [ ! -x "$BIN" ]; then
    say "building $BIN"
    cargo build --release -p yap-cli --bin yap
  fi
  local ctx; ctx="$(mktemp -d)"
  cp "$BIN" "$ctx/yap"
  cp deploy/Dockerfile.local "$ctx/Dockerfile"
  say "docker build -> $IMAGE_TAG (FROM $BASE_TAG, host-built binary $BIN)"
  DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE_TAG" "$ctx" >/dev/null
  rm -rf "$ctx"
  docker image ls "$IMAGE_TAG" --format 'image {{.Repository}}:{{.Tag}}  size {{.Size}}'
  docker image ls "$BASE_TAG" --format 'base  {{.Repository}}:{{.Tag}}  size {{.Size}}'
  echo "bytes: $(docker image inspect -f '{{.Size}}' "$IMAGE_TAG") (image), $(docker image inspect -f '{{.Size}}' "$BASE_TAG") (base)"
}

# A fresh volume (unless KEEP_VOLUME=1); with SEED_CACHE=1 the host's verified cached models are
# copied in first (as root in a throwaway container of the image, then chowned to `yap`).
prepare_volume() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  [ "${KEEP_VOLUME:-0}" = 1 ] || docker volume rm -f "$VOLUME" >/dev/null
  docker volume create "$VOLUME" >/dev/null
  [ "${SEED_CACHE:-0}" = 1 ] || return 0
  local src="${SEED_FROM:-${YAP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/yap}/models}"
  [ -d "$src" ] || { echo "SEED_CACHE=1: no folder $src" >&2; exit 1; }
  say "SEED_CACHE=1: copying the host's cached models from $src into $VOLUME"
  docker run --rm --network none --user 0 --entrypoint sh \
    -v "$VOLUME":/var/lib/yap -v "$src":/seed:ro "$IMAGE_TAG" -c '
      set -e; d=/var/lib/yap/cache/models; mkdir -p "$d"
      for m in /seed/*.sha256; do
        [ -f "$m" ] && [ -f "${m%.sha256}" ] && cp "${m%.sha256}" "$m" "$d/"
      done
      for t in /seed/*/; do
        [ -f "$t/yap-adapter.sha256" ] && cp -r "${t%/}" "$d/"
      done
      chown -R yap:yap /var/lib/yap/cache; ls -l "$d"'
}

run_and_turn() {
  # This machine reaches PyPI only through its own CA bundle: hand it to the container so the
  # first-start model fetch (pip) trusts the same roots as the host.
  local ca=()
  [ -f /etc/ssl/certs/ca-certificates.crt ] && \
    ca=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
        -e PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
  say "docker run $IMAGE_TAG (volume $VOLUME for the models; host network, port $PORT)"
  docker run -d --name "$NAME" --network host "${ca[@]}" \
    -v "$VOLUME":/var/lib/yap \
    -e TEXT_API_KEY="$KEY" -e MAX_CONCURRENT_CONNECTIONS=16 -e PORT="$PORT" \
    -e DEPLOY_MODE=both -e SHUTDOWN_GRACE_S=5 -e EMBEDDED_THREADS="${THREADS:-0}" \
    "$IMAGE_TAG" >/dev/null
  local t0=$SECONDS code=""
  while [ $((SECONDS - t0)) -lt 900 ]; do
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz" || true)"
    [ "$code" = 200 ] && break
    if [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" != true ]; then
      docker logs --tail 40 "$NAME"; exit 1
    fi
    sleep 2
  done
  [ "$code" = 200 ] || { docker logs --tail 40 "$NAME"; exit 1; }
  echo "healthy after $((SECONDS - t0))s (first start on volume $VOLUME; SEED_CACHE=${SEED_CACHE:-0})"
  docker logs "$NAME" 2>&1 | grep -E 'Fetching|cached at|listening' || true
  curl -s "http://127.0.0.1:$PORT/healthz"; echo
  say "one turn through the container (yap warmup inside it)"
  docker exec "$NAME" yap warmup --server "ws://127.0.0.1:$PORT/ws" --api-key "$KEY" \
    "Hey! Can you look at what's on my screen?"
  say "a few /metrics lines"
  curl -s "http://127.0.0.1:$PORT/metrics" \
    | grep -E '^yap_(turns_total|time_to_first_token_seconds_count|toolcall_latency_seconds_count|engine_ready|completion_tokens_sum)' || true
  stop_during_turn
  [ "${KEEP:-0}" = 1 ] || docker rm "$NAME" >/dev/null
}

# `docker stop` while a turn streams: the host-side client prints the frames up to the drain's
# terminal frame (the turn finishes within SHUTDOWN_GRACE_S or ends `cancelled`) and the close.
stop_during_turn() {
  say "docker stop during a second turn (SIGTERM: graceful drain; this turn's client runs on the host)"
  local out; out="$(mktemp)"
  "$BIN" warmup --server "ws://127.0.0.1:$PORT/ws" --api-key "$KEY" \
    "Tell me a long story about a lighthouse keeper and his cat." >"$out" 2>&1 &
  local client=$!
  for _ in $(seq 1 300); do grep -q '"token"' "$out" && break; sleep 0.2; done
  local t0; t0="$(date +%s.%N)"
  echo "turn streaming; docker stop at $(date -u +%T.%3N)"
  docker stop -t 30 "$NAME" >/dev/null
  echo "container stopped after $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }")s, exit code $(docker inspect -f '{{.State.ExitCode}}' "$NAME")"
  wait "$client" && echo "client exit 0" || echo "client exit $?"
  cat "$out"; rm -f "$out"
  echo "-- server log at the stop:"
  docker logs "$NAME" 2>&1 | grep -E 'shutting down|drained|stopped' | tail -n 3
}

need_tools
build_base
[ "${1:-}" = --base-only ] && exit 0
build_runtime
prepare_volume
run_and_turn
