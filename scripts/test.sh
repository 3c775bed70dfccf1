#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end suite in tests/ (which runs
# the sample apps and the probe fixture as real wasm components).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
# The tests build the guests themselves too; doing it here shows the output.
(cd sample-apps && cargo build --target wasm32-wasip2 --release)
(cd tests/fixtures && cargo build --target wasm32-wasip2 --release)
cargo fmt --all -- --check
cargo test --workspace "$@"
