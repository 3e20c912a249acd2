#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, Rust end-to-end tests, browser tests.
# Installs missing tools first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check) # its own workspace
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
# The chat store suite runs against SQLite and against a throwaway PostgreSQL server the tests
# start themselves (initdb/pg_ctl, which setup.sh installs); so do the shared-store e2e tests.
echo "== cargo test (unit + end-to-end; the fault tests come after, alone)"
cargo test --workspace -- --skip faults::
# The fault tests measure latency and start peers (debug builds that encode video) in network
# namespaces: beside the other end-to-end tests on 2 cores they time out; alone they do not.
echo "== fault tests"
cargo test -p confab --test e2e faults:: -- --test-threads 1
echo "== fuzz targets (a short run of each; scripts/fuzz.sh for longer)"
scripts/fuzz.sh 12
echo "== web type check"
(cd tests/browser && npx --no-install tsc -p ../../web/tsconfig.json)
echo "== browser tests"
cargo build -p confab
CONFAB_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/confab" node --test tests/browser/
