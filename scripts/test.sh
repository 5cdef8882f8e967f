#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one: installs and starts the local
# services (PostgreSQL, Redis, Tansu), then runs every test of the workspace against them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

eval "$(bash scripts/dev-services.sh up)"
export DATABASE_URL REDIS_URL KAFKA_BROKERS CONNECTD_DEV_DIR TANSU_BIN

cargo build --workspace --all-targets --all-features --locked
cargo test --workspace --all-targets --all-features --locked -- --test-threads="${CONNECTD_TEST_THREADS:-8}"
cargo test --workspace --doc --all-features --locked
