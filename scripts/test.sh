#!/usr/bin/env bash
# The whole test suite (what CI runs: .ci/run calls exactly this):
#   formatting and lints; unit and end-to-end tests on a generated tiny model; the tests on the
#   real default chat and tool models (fetched into the cache on first run) and on real engines
#   (llama.cpp's llama-server built from source, vllm-router from PyPI); the OpenAI-package and
#   protocol-v1 client scripts; the tool model's accuracy on the test split over a live server.
# Each step prints its duration; the total must stay under 60 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
step() { # NAME CMD...
  local t=$SECONDS name="$1"
  shift
  echo "== test.sh: $name" >&2
  "$@"
  echo "== test.sh: $name: $((SECONDS - t)) s (total $((SECONDS - START)) s)" >&2
}
# The test kit (yap make-test-model, yap engine-double) is in test builds only.
FEATURES=(--features yap-cli/dev-tools)

step setup ./scripts/setup.sh
step fmt cargo fmt --all --check
step clippy cargo clippy --release --workspace --all-targets "${FEATURES[@]}" -- -D warnings
# yap-core and yap-server build without llama.cpp (issue 10): the engine is a crate of its own.
step "core without llama.cpp" bash -c \
  '! cargo tree -p yap-core -p yap-server -e normal | grep -q llama-cpp && echo "yap-core, yap-server: no llama.cpp"'
# The test build (dev-dependencies unify some crates' features differently from a plain
# `cargo build`, which would compile them twice); it also builds target/release/yap.
step build cargo test --release --workspace "${FEATURES[@]}" --no-run
YAP_DEFAULT_MODEL="$(./target/release/yap fetch-model | tail -n 1)"
export YAP_DEFAULT_MODEL
YAP_DEFAULT_TOOL_MODEL="$(./target/release/yap fetch-model --tool | tail -n 1)"
export YAP_DEFAULT_TOOL_MODEL
# Real engines for crates/yap-cli/tests/llama_server.rs: llama.cpp's llama-server (built from
# source once, ~10 min on 2 cores) and vllm-router (PyPI, in a venv); with
# YAP_REQUIRE_REAL_ENGINES=1 those tests fail instead of skipping when either is missing.
step llama-server ./scripts/build-llama-server.sh
install_router() {
  [ -x target/router-venv/bin/vllm-router ] && return 0
  python3 -m venv target/router-venv &&
    target/router-venv/bin/pip install -q --disable-pip-version-check vllm-router==0.1.17
}
step vllm-router install_router
export YAP_REQUIRE_REAL_ENGINES=1
step "cargo test" cargo test --release --workspace "${FEATURES[@]}" -- --include-ignored
step openai-compat ./scripts/openai-compat.sh
step v1-client ./scripts/v1-client.sh
step tool-eval ./scripts/tool-eval.sh
echo "test.sh: all passed in $((SECONDS - START)) s" >&2
