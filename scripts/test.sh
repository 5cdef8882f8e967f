#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one: installs and starts the local
# services (PostgreSQL, Redis, Tansu) and Chromium for the status page's test, runs the README's first command in a small form
# (`COUNT=2000 bash scripts/demo.sh`, which must end by itself with its check lines OK), then
# runs every test of the workspace against the services.
#
# The demo step stops a connectd left running by an earlier `scripts/demo.sh` (same pid file)
# and stops its own at the end. DEMO_TIMEOUT (seconds, default 1500) bounds it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# CI builds once from clean: incremental files would only take disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

# A failure inside `$(…)` would not stop `eval`: taken apart so that it stops here.
services="$(bash scripts/dev-services.sh up)" || { echo "test.sh: the local services did not start (see the lines above)" >&2; exit 1; }
eval "$services"
export DATABASE_URL REDIS_URL KAFKA_BROKERS CONNECTD_DEV_DIR TANSU_BIN CONNECTD_PYTHON

stop_demo() {
  if [ -f .dev/connectd.pid ] && kill -0 "$(cat .dev/connectd.pid)" 2>/dev/null; then
    kill -TERM "$(cat .dev/connectd.pid)" || true
    for _ in $(seq 1 150); do kill -0 "$(cat .dev/connectd.pid)" 2>/dev/null || break; sleep 0.2; done
  fi
}

echo "== the README's first command, small: COUNT=2000 bash scripts/demo.sh" >&2
DEMO_OUT=.dev/demo-test.out
DEMO_START=$SECONDS
set +e
COUNT=2000 MAX_SECONDS=300 DRAIN_SECONDS=120 timeout "${DEMO_TIMEOUT:-1500}" bash scripts/demo.sh >"$DEMO_OUT"
DEMO_RC=$?
set -e
stop_demo
cat "$DEMO_OUT"
if [ "$DEMO_RC" -ne 0 ]; then
  [ "$DEMO_RC" -eq 124 ] && echo "scripts/demo.sh did not end within ${DEMO_TIMEOUT:-1500}s" >&2
  echo "FAILED: scripts/demo.sh exited $DEMO_RC (connectd log: .dev/connectd.log)" >&2
  exit 1
fi
for check in "rows + dead letters == accepted" "dead letters == poison accepted" "events counted in Redis == accepted" "events counted per minute == accepted"; do
  if ! grep -F "check: ${check} " "$DEMO_OUT" | grep -Eq ': [0-9]+ == [0-9]+  OK$'; then
    echo "FAILED: the demo's summary has no OK line for '${check}'" >&2
    exit 1
  fi
done
echo "== demo OK in $((SECONDS - DEMO_START))s" >&2

# The status page is tested in a real headless Chromium (Debian packages).
bash scripts/dev-services.sh browser

cargo build --workspace --all-targets --all-features --locked
cargo test --workspace --all-targets --all-features --locked -- --test-threads="${CONNECTD_TEST_THREADS:-8}"
cargo test --workspace --doc --all-features --locked
