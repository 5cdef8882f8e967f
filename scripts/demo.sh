#!/usr/bin/env bash
# The main job on a fresh machine: services up, build, validate and run the default pipeline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

eval "$(bash scripts/dev-services.sh up)"
export DATABASE_URL REDIS_URL KAFKA_BROKERS

cargo build --release --locked -p connectd
./target/release/connectd validate -c connectors.yaml
./target/release/connectd plugins
exec ./target/release/connectd run -c connectors.yaml
