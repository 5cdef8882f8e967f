#!/usr/bin/env bash
# The main job on a fresh machine: services up, build, migrate, run the default pipeline
# (connectors.yaml) in the background, send a realistic mix of events through it, and print
# what happened. connectd is left running; stop it with `kill $(cat .dev/connectd.pid)`.
#
# Environment: COUNT (unique events, default 20000), RATE (events/s, default 0 = max),
# MAX_SECONDS (the load generator's limit, default 600), DRAIN_SECONDS (how long to wait for the
# pipeline to store what was accepted, default 180).
#
# Exit 0 only when the check lines add up; otherwise non-zero with the reason on stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
COUNT="${COUNT:-20000}"
RATE="${RATE:-0}"
MAX_SECONDS="${MAX_SECONDS:-600}"
DRAIN_SECONDS="${DRAIN_SECONDS:-180}"
USERS=500

die() {
  echo "demo.sh: FAILED: $*" >&2
  exit 1
}
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# A failure inside `$(…)` would not stop `eval`: taken apart so that it stops here.
services="$(bash scripts/dev-services.sh up)" || { echo "demo.sh: the local services did not start (see the lines above)" >&2; exit 1; }
eval "$services"
export DATABASE_URL REDIS_URL KAFKA_BROKERS CONNECTD_PYTHON
export CONNECTD_ADMIN="${CONNECTD_ADMIN:-127.0.0.1:9000}" CONNECTD_HTTP="${CONNECTD_HTTP:-127.0.0.1:8080}"
export CONNECTD_DEMO_KEY="${CONNECTD_DEMO_KEY:-demo-key-0123456789abcdef}"

echo "== building (release)" >&2
cargo build --release --locked -p connectd -p connectd-loadgen >&2
BIN=./target/release/connectd
$BIN validate -c connectors.yaml >&2
$BIN migrate >&2
# The store keeps growth_events in daily partitions: convert a table an earlier version left
# unpartitioned (one transaction; nothing happens when it is partitioned already).
$BIN postgres partition --table growth_events --column event_ts --premake 3 >&2

# One demo connectd at a time: stop an earlier one.
if [ -f .dev/connectd.pid ] && kill -0 "$(cat .dev/connectd.pid)" 2>/dev/null; then
  echo "== stopping the connectd of an earlier demo" >&2
  kill -TERM "$(cat .dev/connectd.pid)" || true
  for _ in $(seq 1 100); do kill -0 "$(cat .dev/connectd.pid)" 2>/dev/null || break; sleep 0.2; done
fi
# Something else on our ports (another checkout's demo, another program) would answer in our
# place: refuse rather than measure the wrong process.
for addr in "$CONNECTD_HTTP" "$CONNECTD_ADMIN"; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
    die "$addr is already in use by another process; stop it or set CONNECTD_HTTP / CONNECTD_ADMIN to free addresses"
  fi
done
echo "== starting connectd run (log: .dev/connectd.log)" >&2
setsid $BIN run -c connectors.yaml >>.dev/connectd.log 2>&1 </dev/null &
echo $! >.dev/connectd.pid
for i in $(seq 1 150); do
  if curl -sf "http://$CONNECTD_HTTP/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat .dev/connectd.pid)" 2>/dev/null; then tail -n 30 .dev/connectd.log >&2; echo "connectd exited" >&2; exit 1; fi
  sleep 0.2
done

# enrich's read store: a profile for 9 of every 10 users the load generator draws (the tenth
# gets the defaults, marked "fallback": "not_found").
./target/release/loadgen --key "$CONNECTD_DEMO_KEY" --users "$USERS" --list-users \
  | awk '{ tiers[0] = "free"; tiers[1] = "pro"; tiers[2] = "enterprise"; regions[0] = "eu"; regions[1] = "us"; regions[2] = "apac"
           if (NR % 10 != 0) printf "%s\t%s\t%s\n", $1, tiers[NR % 3], regions[int(NR / 3) % 3] }' \
  | psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "CREATE TEMP TABLE p (user_id uuid, tier text, region text)" -c "COPY p FROM STDIN" \
    -c "INSERT INTO user_profiles (user_id, tier, region) SELECT * FROM p ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier, region = excluded.region, updated_at = now()" >&2

redis_q() { redis-cli -u "$REDIS_URL" --no-auth-warning "$@"; }
REDIS_TOTAL_BEFORE=$(redis_q GET events:total)
REDIS_TOTAL_BEFORE=${REDIS_TOTAL_BEFORE:-0}
RUN="demo-$(date +%s)"
# A live-stream client (GET /v1/stream over WebSocket) follows what ingest accepts.
$BIN stream --url "ws://$CONNECTD_HTTP/v1/stream" --key "$CONNECTD_DEMO_KEY" >.dev/stream.jsonl 2>.dev/stream.err </dev/null &
STREAM_PID=$!
for _ in $(seq 1 50); do grep -q '^connected' .dev/stream.err 2>/dev/null && break; sleep 0.1; done
grep -q '^connected' .dev/stream.err || { cat .dev/stream.err >&2; die "connectd stream did not connect to ws://$CONNECTD_HTTP/v1/stream"; }
echo "== sending $COUNT events (+20% duplicates and client retries, 1% invalid, 0.5% poison) as run $RUN" >&2
rm -f .dev/loadgen-report.json
if ! ./target/release/loadgen --url "http://$CONNECTD_HTTP" --key "$CONNECTD_DEMO_KEY" --count "$COUNT" --rate "$RATE" \
  --batch 100 --dup-ratio 0.2 --invalid-ratio 0.01 --poison-ratio 0.005 --users "$USERS" --concurrency 8 \
  --max-seconds "$MAX_SECONDS" --run-id "$RUN" --report .dev/loadgen-report.json; then
  trap - ERR
  tail -n 20 .dev/connectd.log >&2 || true
  die "the load generator failed (its reason is above; report in .dev/loadgen-report.json, connectd log in .dev/connectd.log)"
fi

psql_q() { psql "$DATABASE_URL" -Atc "$1"; }
ACCEPTED=$(python3 -c 'import json;print(json.load(open(".dev/loadgen-report.json"))["accepted_distinct_keys"])')
POISON=$(python3 -c 'import json;print(json.load(open(".dev/loadgen-report.json"))["accepted_poison_keys"])')
# Dead letters of this run written by one connector (store and archive each dead-letter the
# poison events they refuse).
dead_q() {
  psql_q "SELECT count(*) FROM dead_letters WHERE connector = '$1' AND (payload_json->>'source' = '$RUN' OR convert_from(payload, 'UTF8') LIKE '%\"source\":\"$RUN\"%')"
}
# The archive read back by DuckDB: rows of this run, files and bytes (all runs).
ARCHIVE_DIR="${CONNECTD_ARCHIVE_URL:-.dev/archive}"
archive_q() {
  "$CONNECTD_PYTHON" - "$ARCHIVE_DIR" "$RUN" <<'PY'
import duckdb, glob, os, sys
root, run = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
if not files:
    print(0, 0, 0)
    sys.exit()
n = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?) WHERE source = ?", [files, run]).fetchone()[0]
print(n, len(files), sum(os.path.getsize(f) for f in files))
PY
}
echo "== waiting for the pipeline to drain (at most ${DRAIN_SECONDS}s)" >&2
DRAIN_START=$SECONDS
while :; do
  ROWS=$(psql_q "SELECT count(*) FROM growth_events WHERE source = '$RUN'")
  DEAD=$(dead_q store)
  ARCHIVE_DEAD=$(dead_q archive)
  read -r ARCHIVED ARCHIVE_FILES ARCHIVE_BYTES < <(archive_q)
  COUNTED=$(( $(redis_q GET events:total) - REDIS_TOTAL_BEFORE ))
  PER_MINUTE=$(psql_q "SELECT coalesce(sum(events), 0) FROM event_counts_per_minute WHERE source = '$RUN'")
  [ $((ROWS + DEAD)) -ge "$ACCEPTED" ] && [ $((ARCHIVED + ARCHIVE_DEAD)) -ge "$ACCEPTED" ] && [ "$COUNTED" -ge "$ACCEPTED" ] && [ "$PER_MINUTE" -ge "$ACCEPTED" ] && break
  [ $((SECONDS - DRAIN_START)) -ge "$DRAIN_SECONDS" ] && break
  sleep 0.5
done
# Anything still on its way (a duplicate row, a second dead letter) would show up now.
sleep 1
ROWS=$(psql_q "SELECT count(*) FROM growth_events WHERE source = '$RUN'")
DEAD=$(dead_q store)
ARCHIVE_DEAD=$(dead_q archive)
read -r ARCHIVED ARCHIVE_FILES ARCHIVE_BYTES < <(archive_q)
COUNTED=$(( $(redis_q GET events:total) - REDIS_TOTAL_BEFORE ))
PER_MINUTE=$(psql_q "SELECT coalesce(sum(events), 0) FROM event_counts_per_minute WHERE source = '$RUN'")
kill "$STREAM_PID" 2>/dev/null || true
wait "$STREAM_PID" 2>/dev/null || true
STREAMED=$(RUN="$RUN" python3 -c '
import json, os
run = os.environ["RUN"]
keys = set()
for line in open(".dev/stream.jsonl"):
    e = json.loads(line)
    if e.get("source") == run:
        keys.add(e["idempotency_key"])
print(len(keys))')
DUPS=$(curl -s "http://$CONNECTD_ADMIN/connectors/dedup" | python3 -c 'import json,sys;print(json.load(sys.stdin)["details"].get("duplicates_dropped",0))')
SENT=$(python3 -c 'import json;print(json.load(open(".dev/loadgen-report.json"))["events_sent"])')
INVALID=$(python3 -c 'import json;print(json.load(open(".dev/loadgen-report.json"))["invalid_events_sent"])')
REPLAYS=$(python3 -c 'import json;print(json.load(open(".dev/loadgen-report.json"))["replayed_responses"])')
# What enrich attached (growth_events.context), checked against user_profiles.
read -r ENRICHED MATCHED NOT_FOUND LOOKUP_FALLBACK NO_CONTEXT UNKNOWN_USERS_ROWS < <(psql_q "
  SELECT count(*) FILTER (WHERE g.context IS NOT NULL AND g.context->>'fallback' IS NULL),
         count(*) FILTER (WHERE g.context->>'fallback' IS NULL AND g.context->>'tier' = p.tier AND g.context->>'region' = p.region),
         count(*) FILTER (WHERE g.context->>'fallback' = 'not_found'),
         count(*) FILTER (WHERE g.context->>'fallback' = 'lookup_error'),
         count(*) FILTER (WHERE g.context IS NULL),
         count(*) FILTER (WHERE p.user_id IS NULL)
  FROM growth_events g LEFT JOIN user_profiles p USING (user_id) WHERE g.source = '$RUN'" | tr '|' ' ')
HIT_RATIO=$(curl -s "http://$CONNECTD_ADMIN/connectors/enrich" | python3 -c 'import json,sys;d=json.load(sys.stdin)["details"];print("%.3f" % d.get("hit_ratio",0))')
ok() { [ "$1" -eq "$2" ] && echo OK || echo MISMATCH; }
CHECK_ENRICHED=$(ok "$MATCHED" "$ENRICHED")
CHECK_CONTEXT=$(ok $((ENRICHED + NOT_FOUND + LOOKUP_FALLBACK)) "$ROWS")
CHECK_ROWS=$(ok $((ROWS + DEAD)) "$ACCEPTED")
CHECK_DEAD=$(ok "$DEAD" "$POISON")
CHECK_ARCHIVE=$(ok $((ARCHIVED + ARCHIVE_DEAD)) "$ACCEPTED")
read -r PARTS FIRST_DAY LAST_DAY IN_DEFAULT < <(psql_q "
  SELECT count(*), min(substr(c.relname, length('growth_events_p') + 1)), max(substr(c.relname, length('growth_events_p') + 1)),
         (SELECT count(*) FROM growth_events_default WHERE source = '$RUN')
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  WHERE i.inhparent = 'growth_events'::regclass AND c.relname ~ '^growth_events_p[0-9]{8}$'" | tr '|' ' ')
CHECK_REDIS=$(ok "$COUNTED" "$ACCEPTED")
CHECK_MINUTE=$(ok "$PER_MINUTE" "$ACCEPTED")
TODAY=$(date -u +%F)

cat <<SUMMARY

================ connectd demo: run $RUN ================
events sent over HTTP (with duplicates/retries) : $SENT
invalid events refused with 400                 : $INVALID
client retries answered from the Idempotency-Key store : $REPLAYS
distinct events accepted (202)                  : $ACCEPTED
duplicates dropped by redis_dedup               : $DUPS
rows stored in growth_events                    : $ROWS
dead letters in dead_letters (poison)           : $DEAD   (poison accepted: $POISON)
check: rows + dead letters == accepted          : $((ROWS + DEAD)) == $ACCEPTED  $CHECK_ROWS
check: dead letters == poison accepted          : $DEAD == $POISON  $CHECK_DEAD
growth_events daily partitions (hot tier)       : $PARTS, $FIRST_DAY .. $LAST_DAY (retention 14d, 3 days ahead); rows of this run in growth_events_default: $IN_DEFAULT
rows enriched from user_profiles (enrich)       : $ENRICHED   (cache hit ratio $HIT_RATIO)
check: enriched rows carry their user's profile : $MATCHED == $ENRICHED  $CHECK_ENRICHED
rows with defaults: user has no profile         : $NOT_FOUND   (rows of users without a profile: $UNKNOWN_USERS_ROWS)
rows with defaults: store unavailable           : $LOOKUP_FALLBACK
check: enriched + defaults == rows              : $((ENRICHED + NOT_FOUND + LOOKUP_FALLBACK)) == $ROWS  $CHECK_CONTEXT
events counted in Redis by redis_sink (activity): $COUNTED
check: events counted in Redis == accepted      : $COUNTED == $ACCEPTED  $CHECK_REDIS
events in event_counts_per_minute (aggregate)   : $PER_MINUTE
check: events counted per minute == accepted    : $PER_MINUTE == $ACCEPTED  $CHECK_MINUTE
rows archived as Parquet (archive, DuckDB)      : $ARCHIVED   (dead letters: $ARCHIVE_DEAD; all runs: $ARCHIVE_FILES files, $ARCHIVE_BYTES bytes in $ARCHIVE_DIR)
check: archived + dead letters == accepted      : $((ARCHIVED + ARCHIVE_DEAD)) == $ACCEPTED  $CHECK_ARCHIVE
distinct events seen live on /v1/stream         : $STREAMED of $ACCEPTED (one "connectd stream" client; Pub/Sub is a live view, at most once)

top purchasers today in Redis (ZREVRANGE leaderboard:purchase:$TODAY, all runs):
$(redis_q ZREVRANGE "leaderboard:purchase:$TODAY" 0 4 WITHSCORES | paste - - | awk '{printf "  %s  %s\n", $2, $1}')

busiest minutes of this run (event_counts_per_minute; closed = the watermark passed the minute):
$(psql "$DATABASE_URL" -c "SELECT to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS minute_utc, event_type, events, users, closed FROM event_counts_per_minute WHERE source = '$RUN' ORDER BY events DESC, 1, 2 LIMIT 5")

daily active users (daily_active, all runs, UTC days):
$(psql "$DATABASE_URL" -c "SELECT (window_start AT TIME ZONE 'UTC')::date AS day, active_users, events, closed FROM daily_active ORDER BY 1 DESC LIMIT 3")

connectd keeps running (pid $(cat .dev/connectd.pid)):
  status  http://$CONNECTD_ADMIN/   (the status page: connectors, pause/resume, live tail)
  admin   http://$CONNECTD_ADMIN/connectors   http://$CONNECTD_ADMIN/metrics
  stream  $BIN stream --url ws://$CONNECTD_HTTP/v1/stream --key $CONNECTD_DEMO_KEY
  ingest  curl -H 'x-api-key: $CONNECTD_DEMO_KEY' -H 'content-type: application/json' -d '{...}' http://$CONNECTD_HTTP/v1/events
  stop    kill \$(cat .dev/connectd.pid)
SUMMARY
[ "$CHECK_ROWS" = OK ] || die "rows + dead letters ($((ROWS + DEAD))) != distinct events accepted ($ACCEPTED) after ${DRAIN_SECONDS}s; connectd log: .dev/connectd.log"
[ "$CHECK_ENRICHED" = OK ] || die "$((ENRICHED - MATCHED)) enriched rows do not carry their user's profile; connectd log: .dev/connectd.log"
[ "$CHECK_CONTEXT" = OK ] || die "$NO_CONTEXT stored rows have no context from enrich; connectd log: .dev/connectd.log"
[ "$CHECK_REDIS" = OK ] || die "events counted by redis_sink ($COUNTED) != distinct events accepted ($ACCEPTED); connectd log: .dev/connectd.log"
[ "$CHECK_MINUTE" = OK ] || die "events counted per minute by the aggregate ($PER_MINUTE) != distinct events accepted ($ACCEPTED); connectd log: .dev/connectd.log"
[ "$CHECK_ARCHIVE" = OK ] || die "rows archived by parquet_sink + its dead letters ($((ARCHIVED + ARCHIVE_DEAD))) != distinct events accepted ($ACCEPTED); connectd log: .dev/connectd.log"
[ "$CHECK_DEAD" = OK ] || die "dead letters ($DEAD) != poison events accepted ($POISON); connectd log: .dev/connectd.log"
