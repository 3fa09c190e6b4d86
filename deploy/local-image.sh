#!/usr/bin/env bash
# Builds and proves Yap's CPU image on a machine that cannot reach a container registry:
#
#   1. base image: `debootstrap` of Debian bookworm (minbase + the runtime libraries) from the
#      Debian mirror this machine's apt already uses, then `docker import` -> yap-base:bookworm;
#   2. runtime image: deploy/Dockerfile.local (the runtime stage of deploy/Dockerfile.cpu) on
#      that base with the host-built binary (target/release/yap) -> yap:cpu-local;
#   3. runs it (default models fetched at first start into the volume yap-proof-data), waits for
#      /healthz, passes one turn through it (the `yap warmup` client inside the container prints
#      every frame), shows a few /metrics lines, then `docker stop` (SIGTERM: graceful drain).
#
# Needs root, Debian's `docker.io` and `debootstrap` packages (it installs them when missing) and
# a running dockerd (started when none answers). Not part of CI. Usage:
#   deploy/local-image.sh              # all steps
#   deploy/local-image.sh --base-only  # step 1 only
# Env: DEBIAN_MIRROR (default: the first mirror in this machine's apt sources), YAP_BIN (default
# target/release/yap, built when missing), PORT (default 18000), KEEP=1 keeps the container.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_TAG=yap-base:bookworm
IMAGE_TAG=yap:cpu-local
NAME=yap-proof
VOLUME=yap-proof-data
PORT="${PORT:-18000}"
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
  if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "base image $BASE_TAG exists"
    return
  fi
  local m; m="$(mirror)"
  say "debootstrap bookworm (minbase) into $ROOTFS"
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
  local bin="${YAP_BIN:-target/release/yap}"
  if [ ! -x "$bin" ]; then
    say "building $bin"
    cargo build --release -p yap-cli --bin yap
  fi
  local ctx; ctx="$(mktemp -d)"
  cp "$bin" "$ctx/yap"
  cp deploy/Dockerfile.local "$ctx/Dockerfile"
  say "docker build -> $IMAGE_TAG (FROM $BASE_TAG, host-built binary)"
  DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE_TAG" "$ctx" >/dev/null
  rm -rf "$ctx"
  docker image ls "$IMAGE_TAG" --format 'image {{.Repository}}:{{.Tag}}  size {{.Size}}'
  docker image ls "$BASE_TAG" --format 'base  {{.Repository}}:{{.Tag}}  size {{.Size}}'
  echo "bytes: $(docker image inspect -f '{{.Size}}' "$IMAGE_TAG") (image), $(docker image inspect -f '{{.Size}}' "$BASE_TAG") (base)"
}

run_and_turn() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
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
    -e DEPLOY_MODE=both -e SHUTDOWN_GRACE_S=5 \
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
  echo "healthy after $((SECONDS - t0))s (first start: default models fetched into $VOLUME)"
  curl -s "http://127.0.0.1:$PORT/healthz"; echo
  say "one turn through the container (yap warmup inside it)"
  docker exec "$NAME" yap warmup --server "ws://127.0.0.1:$PORT/ws" --api-key "$KEY" \
    "Hey! Can you look at what's on my screen?"
  say "a few /metrics lines"
  curl -s "http://127.0.0.1:$PORT/metrics" \
    | grep -E '^yap_(turns_total|time_to_first_token_seconds_count|toolcall_latency_seconds_count|engine_ready|completion_tokens_sum)' || true
  say "docker stop (SIGTERM: graceful drain)"
  docker stop -t 30 "$NAME" >/dev/null
  docker logs "$NAME" 2>&1 | grep -E 'shutting down|drained|stopped' | tail -n 3
  [ "${KEEP:-0}" = 1 ] || docker rm "$NAME" >/dev/null
}

need_tools
build_base
[ "${1:-}" = --base-only ] && exit 0
build_runtime
run_and_turn
