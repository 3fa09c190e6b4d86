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
cargo test --release --workspace -- --include-ignored
./scripts/openai-compat.sh
./scripts/tool-eval.sh
