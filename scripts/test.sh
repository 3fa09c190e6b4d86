#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and end-to-end tests on a generated tiny model,
# and the smoke test on the real default model (fetched into the cache on first run).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release
YAP_DEFAULT_MODEL="$(./target/release/yap fetch-model)"
export YAP_DEFAULT_MODEL
cargo test --release --workspace -- --include-ignored
./scripts/openai-compat.sh
