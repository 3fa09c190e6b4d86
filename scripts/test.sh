#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and end-to-end tests on a generated tiny model,
# the tests on the real default chat and tool models (fetched into the cache on first run), the
# OpenAI-package tests, and the tool model's accuracy on the shipped case file over a live server.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release
YAP_DEFAULT_MODEL="$(./target/release/yap fetch-model | tail -n 1)"
export YAP_DEFAULT_MODEL
YAP_DEFAULT_TOOL_MODEL="$(./target/release/yap fetch-model --tool | tail -n 1)"
export YAP_DEFAULT_TOOL_MODEL
# Real engines for crates/yap-cli/tests/llama_server.rs: llama.cpp's llama-server (built from
# source once, ~10 min) and vllm-router (PyPI, in a venv); with YAP_REQUIRE_REAL_ENGINES=1 those
# tests fail instead of skipping when either is missing.
./scripts/build-llama-server.sh >/dev/null
[ -x target/router-venv/bin/vllm-router ] || { python3 -m venv target/router-venv &&
  target/router-venv/bin/pip install -q --disable-pip-version-check vllm-router==0.1.17; }
export YAP_REQUIRE_REAL_ENGINES=1
cargo test --release --workspace -- --include-ignored
./scripts/openai-compat.sh
./scripts/tool-eval.sh
