#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, Rust end-to-end tests, browser tests.
# Installs missing tools first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test (unit + end-to-end)"
cargo test --workspace
echo "== fuzz targets (a short run of each; scripts/fuzz.sh for longer)"
scripts/fuzz.sh 12
echo "== web type check"
(cd tests/browser && npx --no-install tsc -p ../../web/tsconfig.json)
echo "== browser tests"
cargo build -p confab
CONFAB_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/confab" node --test tests/browser/
