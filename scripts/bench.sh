#!/usr/bin/env bash
# Benchmarks (not tests): writes BENCHMARKS.md. Every figure is the median of RUNS runs with
# min–max, next to the ceilings measured in the same run on the same machine.
#
#   bash scripts/bench.sh                 # RUNS=3 COUNT=1000000 E2E_SECONDS=60 E2E_CONCURRENCY=16
#   E2E_ONLY=1 bash scripts/bench.sh      # only the end-to-end runs (the rest of the report: —)
#   PROFILE_ONLY=1 bash scripts/bench.sh  # only the perf profile, added to the last results
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${RUNS:-3}"
COUNT="${COUNT:-1000000}"
SIZE="${SIZE:-100}"
E2E_SECONDS="${E2E_SECONDS:-60}"
E2E_USERS="${E2E_USERS:-10000}"
# Clients of the end-to-end runs. With 8, a pipeline this fast waits on the broker's acks
# (each client sends its next request after the 202) and leaves CPU idle.
E2E_CONCURRENCY="${E2E_CONCURRENCY:-16}"
PROFILE_SECONDS="${PROFILE_SECONDS:-30}"
HTTP_COUNT="${HTTP_COUNT:-300000}"
OUT_DIR="${BENCH_DIR:-bench-results}"

# A failure inside `$(…)` would not stop `eval`: taken apart so that it stops here.
services="$(bash scripts/dev-services.sh up)" || { echo "bench.sh: the local services did not start (see the lines above)" >&2; exit 1; }
eval "$services"
export DATABASE_URL REDIS_URL KAFKA_BROKERS
# The demo's connectd (left running by scripts/demo.sh) polls the broker for its eight
# connectors even when idle: its CPU and the broker's work for it would be counted here.
if [ -f .dev/connectd.pid ] && kill -0 "$(cat .dev/connectd.pid)" 2>/dev/null; then
  echo "== stopping the demo's connectd (pid $(cat .dev/connectd.pid)) so that it does not share the cores" >&2
  kill -TERM "$(cat .dev/connectd.pid)" || true
  for _ in $(seq 1 100); do kill -0 "$(cat .dev/connectd.pid)" 2>/dev/null || break; sleep 0.2; done
fi
# `--bin` selects in every named package: loadgen must be named too, or a fresh target
# directory has no load generator.
cargo build --release --locked -p connectd -p connectd-loadgen --bin connectd --bin loadgen --example kafka_bench --example stream_bench >&2
BIN=target/release/connectd
KB=target/release/examples/kafka_bench
SB=target/release/examples/stream_bench
STREAM_RATE="${STREAM_RATE:-20000}"
STREAM_CLIENTS="${STREAM_CLIENTS:-100}"
STREAM_SECONDS="${STREAM_SECONDS:-20}"
LG=target/release/loadgen
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
$BIN migrate >/dev/null
KEY="bench-key-0123456789abcdef"

record() { # section json-line
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["section"]=sys.argv[1]; print(json.dumps(d))' "$1" "$2" >>"$RESULTS"
}
psql_q() { psql "$DATABASE_URL" -Atc "$1"; }

# Starts connectd on $1 (background); sets CD_PID and CD_ADMIN.
start_connectd() { # config log
  CD_ADMIN=127.0.0.1:$((20000 + RANDOM % 20000))
  CONNECTD_ADMIN=$CD_ADMIN CONNECTD_LOG=warn "$BIN" run -c "$1" 2>"$2" &
  CD_PID=$!
}

# CPU seconds and peak RSS of CD_PID as JSON fields.
proc_stats() {
  local ticks
  ticks=$(getconf CLK_TCK)
  python3 - "$CD_PID" "$ticks" <<'PY'
import sys
pid, ticks = sys.argv[1], int(sys.argv[2])
stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
cpu = (int(stat[11]) + int(stat[12])) / ticks
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
print(f'{{"cpu_seconds": {cpu:.2f}, "peak_rss_mb": {rss/1024:.1f}}}')
PY
}

# Where connectd's CPU went, as JSON fields: each connector's busy and blocking time from
# /metrics (connector_core::task), the runtime's busy time, and the CPU of librdkafka's own
# threads (named rdk:*), which no connector's counter sees.
stage_stats() {
  curl -sf "http://$CD_ADMIN/metrics" >"$OUT_DIR/metrics.txt" || : >"$OUT_DIR/metrics.txt"
  python3 - "$CD_PID" "$(getconf CLK_TCK)" "$OUT_DIR/metrics.txt" <<'PY'
import glob, json, re, sys
pid, tck, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
busy, blocking, polls, runtime = {}, {}, {}, 0
bsum, bcount = {}, {}
for line in open(path):
    m = re.match(r'connectd_batch_records_(sum|count)\{connector="([^"]+)"\} ([0-9.]+)', line)
    if m:
        (bsum if m[1] == "sum" else bcount)[m[2]] = float(m[3])
    m = re.match(r'connectd_connector_(busy|blocking)_microseconds_total\{connector="([^"]+)"\} (\d+)', line)
    if m:
        (busy if m[1] == "busy" else blocking)[m[2]] = int(m[3])
    m = re.match(r'connectd_connector_polls_total\{connector="([^"]+)"\} (\d+)', line)
    if m:
        polls[m[1]] = int(m[2])
    m = re.match(r"connectd_runtime_busy_microseconds(?:\{\})? (\d+)", line)
    if m:
        runtime = int(m[1])
rdk = 0
for t in glob.glob(f"/proc/{pid}/task/*/stat"):
    try:
        raw = open(t).read()
    except OSError:
        continue
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    f = raw.rsplit(")", 1)[1].split()
    if comm.startswith("rdk:"):
        rdk += int(f[11]) + int(f[12])
batch = {c: round(bsum[c] / n) for c, n in bcount.items() if n and c in bsum}
print(json.dumps({"busy_us": busy, "blocking_us": blocking, "polls": polls, "runtime_busy_us": runtime, "rdkafka_cpu_seconds": rdk / tck, "batch_records_mean": batch}))
PY
}

# Cumulative CPU seconds of the services (PostgreSQL counts its exited backends too).
svc_cpu() {
  python3 - "$(getconf CLK_TCK)" <<'PY'
import json, os, subprocess, sys
tck = int(sys.argv[1])
def ticks(pid, children=False):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
def pids(*args):
    r = subprocess.run(["pgrep", *args], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]
out = {"tansu": sum(ticks(p) for p in pids("-f", "tansu")),
       "redis": sum(ticks(p) for p in pids("-f", "redis-server"))}
pm = pids("-o", "-x", "postgres")
out["postgres"] = (ticks(pm[0], True) + sum(ticks(p) for p in pids("-P", str(pm[0])))) if pm else 0
out = {k: v / tck for k, v in out.items()}
# Bytes through the loopback interface (every service talks over it; in a topic -> topic run,
# nearly all of it is the broker's produce and fetch traffic).
try:
    lo = next(l for l in open("/proc/net/dev") if l.strip().startswith("lo:"))
    out["loopback_bytes"] = int(lo.split(":", 1)[1].split()[0])
except (OSError, StopIteration):
    out["loopback_bytes"] = 0
print(json.dumps(out))
PY
}
# JSON of per-service CPU seconds between two svc_cpu outputs.
svc_delta() { python3 -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(json.dumps({(k if k.endswith("_bytes") else k+"_cpu_seconds"): round(b[k]-a[k],2) for k in a}))' "$1" "$2"; }

merge() { python3 -c 'import json,sys; a=json.loads(sys.argv[1]); a.update(json.loads(sys.argv[2])); r=a.get("records") or 1; a["cpu_us_per_record"]=round(a.get("cpu_seconds",0)*1e6/r,2) if "cpu_seconds" in a else None; print(json.dumps(a))' "$1" "$2"; }

stop_connectd() { kill -TERM "$CD_PID" 2>/dev/null || true; wait "$CD_PID" 2>/dev/null || true; }

# Runs config $1 until group $2 committed $3 records of topic $4; records section $5. With $6,
# the `details` of connector $6 from the admin API are recorded too.
consume_bench() {
  local cfg=$1 group=$2 count=$3 topic=$4 section=$5 connector=${6:-}
  local line stats before
  before=$(svc_cpu)
  start_connectd "$cfg" "$OUT_DIR/$section.log"
  line=$("$KB" wait-group --group "$group" --topic "$topic" --count "$count")
  stats=$(proc_stats)
  stats=$(merge "$stats" "$(svc_delta "$before" "$(svc_cpu)")")
  if [ -n "$connector" ]; then
    stats=$(merge "$stats" "$(curl -sf "http://$CD_ADMIN/connectors/$connector" | python3 -c 'import json,sys; print(json.dumps({"details": json.load(sys.stdin)["details"]}))')")
  fi
  stop_connectd
  record "$section" "$(merge "$line" "$stats")"
}

# End to end: runs config $2 (an http_source on 127.0.0.1:18081 with key $KEY) under the load
# generator for E2E_SECONDS at full speed with run id $3, waits until table $4 holds every
# accepted event of the run and each "connector:topic" of $5 (default groups, connectd-NAME)
# committed as many, and records section $1 (the run) and $1_stats (CPU of every process, and
# connectd's per connector).
e2e_bench() {
  local section=$1 cfg=$2 run_id=$3 table=$4 waits=$5
  local before lg_cpu accepted rows rows_at_end t0 drain stats stages dupkeys w
  before=$(svc_cpu)
  start_connectd "$cfg" "$OUT_DIR/$section.log"
  for _ in $(seq 1 150); do curl -sf http://127.0.0.1:18081/readyz >/dev/null && break; sleep 0.2; done
  lg_cpu=$(python3 -c 'import resource,subprocess,sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); r=resource.getrusage(resource.RUSAGE_CHILDREN); print(round(r.ru_utime+r.ru_stime,2))' \
    "$LG" --url http://127.0.0.1:18081 --key "$KEY" --count 100000000 --duration "$E2E_SECONDS" --batch 100 --dup-ratio 0.2 --concurrency "$E2E_CONCURRENCY" --users "$E2E_USERS" --run-id "$run_id" --report "$OUT_DIR/$section.json")
  accepted=$(python3 -c 'import json;print(json.load(open("'"$OUT_DIR/$section"'.json"))["accepted_distinct_keys"])')
  rows_at_end=$(psql_q "SELECT count(*) FROM $table WHERE source = '$run_id'")
  t0=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    rows=$(psql_q "SELECT count(*) FROM $table WHERE source = '$run_id'")
    [ "$rows" -ge "$accepted" ] && break
    sleep 0.25
  done
  drain=$(python3 -c "import time;print(round(time.time()-$t0,2))")
  for w in $waits; do
    "$KB" wait-group --group "connectd-${w%%:*}" --topic "${w#*:}" --count "$accepted" --timeout-secs 300 >/dev/null \
      || echo "WARNING: ${w%%:*} did not commit $accepted records of ${w#*:}" >&2
  done
  stats=$(proc_stats)
  stages=$(stage_stats)
  dupkeys=$(psql_q "SELECT count(*) - count(DISTINCT idempotency_key) FROM $table WHERE source = '$run_id'")
  stop_connectd
  record "$section" "$(merge "$(cat "$OUT_DIR/$section.json")" "{\"rows\": $rows, \"rows_at_end_of_load\": $rows_at_end, \"lag_at_end\": $((accepted - rows_at_end)), \"drain_seconds\": $drain, \"duplicate_rows\": $dupkeys, \"users\": $E2E_USERS, \"concurrency\": $E2E_CONCURRENCY, \"stored_per_second\": $(python3 -c "print(round($rows/($E2E_SECONDS+$drain)))")}")"
  record "${section}_stats" "$(merge "$(merge "$(merge "$stats" "$(svc_delta "$before" "$(svc_cpu)")")" "$stages")" "{\"loadgen_cpu_seconds\": $lg_cpu, \"records\": $accepted}")"
}

# connectors.yaml with its topics renamed $1-events.* into $2, and a profile in user_profiles
# for each of the E2E_USERS users the load generator draws.
default_pipeline() {
  sed -E "s/events\.(raw|unique|enriched|dlq|per_minute)/$1-&/g" connectors.yaml >"$2"
  "$LG" --key "$KEY" --users "$E2E_USERS" --list-users \
    | psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "CREATE TEMP TABLE p (user_id uuid)" -c "COPY p FROM STDIN" \
      -c "INSERT INTO user_profiles (user_id, tier, region) SELECT user_id, 'pro', 'eu' FROM p ON CONFLICT (user_id) DO NOTHING" >&2
}

# A CPU profile (perf, self time by symbol, grouped by scripts/perf_summary.py) of connectd
# running the default pipeline under the end-to-end load: PROFILE_SECONDS of load, sampled
# from 5 s in until 5 s before its end. Section `profile`.
profile_bench() {
  if ! perf record -q -o /dev/null -- true 2>/dev/null; then
    echo "perf is not available here (apt-get install linux-perf): no profile" >&2
    return 0
  fi
  local lg_pid
  default_pipeline "p$S" "$OUT_DIR/profile.yaml"
  rm -rf "$OUT_DIR/archive_prof_$S"
  CONNECTD_HTTP=127.0.0.1:18081 CONNECTD_DEMO_KEY=$KEY CONNECTD_ARCHIVE_URL=$OUT_DIR/archive_prof_$S \
    start_connectd "$OUT_DIR/profile.yaml" "$OUT_DIR/profile.log"
  for _ in $(seq 1 150); do curl -sf http://127.0.0.1:18081/readyz >/dev/null && break; sleep 0.2; done
  "$LG" --url http://127.0.0.1:18081 --key "$KEY" --count 100000000 --duration "$PROFILE_SECONDS" --batch 100 --dup-ratio 0.2 \
    --concurrency "$E2E_CONCURRENCY" --users "$E2E_USERS" --run-id "prof$S" --report "$OUT_DIR/profile_load.json" >/dev/null 2>&1 &
  lg_pid=$!
  sleep 5
  perf record -q -F 999 -p "$CD_PID" -o "$OUT_DIR/perf.data" -- sleep $((PROFILE_SECONDS - 10)) >/dev/null 2>&1 || true
  wait "$lg_pid" || true
  stop_connectd
  rm -rf "$OUT_DIR/archive_prof_$S"
  record profile "$(merge "$(perf report -i "$OUT_DIR/perf.data" --stdio --no-children -g none --sort dso,sym --percent-limit 0 2>/dev/null \
    | python3 scripts/perf_summary.py)" "{\"seconds\": $PROFILE_SECONDS}")"
}

if [ -n "${PROFILE_ONLY:-}" ]; then
  # Only the profile, into the results of an earlier run; then the report again.
  S="p$$"
  python3 -c 'import sys; p=sys.argv[1]; k=[l for l in open(p) if "\"section\": \"profile\"" not in l]; open(p,"w").writelines(k)' "$RESULTS"
  profile_bench
  python3 scripts/bench_report.py "$RESULTS" "$COUNT" "$SIZE" >BENCHMARKS.md
  echo "wrote BENCHMARKS.md" >&2
  exit 0
fi
: >"$RESULTS"

for run in $(seq 1 "$RUNS"); do
  echo "== run $run/$RUNS" >&2
  S="b$run$$"
  if [ -z "${E2E_ONLY:-}" ]; then
  # -- ceilings
  record pg_unnest_1 "$("$KB" pg-ceiling --rows "$COUNT" --conns 1 --method unnest)"
  before=$(svc_cpu)
  line=$("$KB" pg-ceiling --rows "$COUNT" --conns 2 --method unnest)
  record pg_unnest_2 "$(merge "$line" "$(svc_delta "$before" "$(svc_cpu)")")"
  record pg_copy_staging_2 "$("$KB" pg-ceiling --rows "$COUNT" --conns 2 --method copy-staging)"
  record pg_copy_1 "$("$KB" pg-ceiling --rows "$COUNT" --conns 1 --method copy)"
  record redis_ceiling "$("$KB" redis-ceiling --keys "$COUNT")"
  record broker_produce "$("$KB" produce --topic "$S-src" --count "$COUNT" --size "$SIZE" --partitions 6)"
  record broker_consume "$("$KB" consume --topic "$S-src" --count "$COUNT")"

  # -- forward: topic -> topic
  cat >"$OUT_DIR/forward.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - { name: fwd, type: forward, input: $S-src, output: $S-copy, group_id: $S-fwd, max_in_flight: 2, batch: { max_records: 5000, linger: 20ms } }
YAML
  consume_bench "$OUT_DIR/forward.yaml" "$S-fwd" "$COUNT" "$S-src" forward

  # -- postgres_sink: 1M envelopes preloaded, 6 partitions, fresh table
  "$KB" envelopes --topic "$S-env" --count "$COUNT" >/dev/null
  psql_q "CREATE TABLE bench_$S (LIKE growth_events INCLUDING ALL)" >/dev/null
  cat >"$OUT_DIR/pg.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - name: store
    type: postgres_sink
    input: $S-env
    group_id: $S-pg
    database_url: \${DATABASE_URL}
    table: bench_$S
    pool_size: 2
    max_in_flight: 2
    batch: { max_records: 5000, linger: 50ms }
YAML
  consume_bench "$OUT_DIR/pg.yaml" "$S-pg" "$COUNT" "$S-env" postgres_sink
  rows=$(psql_q "SELECT count(*) FROM bench_$S")
  [ "$rows" -eq "$COUNT" ] || echo "WARNING: postgres_sink stored $rows of $COUNT" >&2
  # Bytes on disk of the same rows in PostgreSQL (heap, TOAST, primary key and index).
  psql_q "VACUUM bench_$S" >/dev/null
  pg_bytes=$(psql_q "SELECT pg_total_relation_size('bench_$S')")
  psql_q "DROP TABLE bench_$S" >/dev/null

  # -- parquet_sink: the same 1M envelopes into day folders (zstd 3), timed until the commit
  #    log holds every record; ceiling: the same records typed in memory, written by the same
  #    writer settings into the same folders with fsync + rename (kafka_bench parquet-ceiling).
  rm -rf "$OUT_DIR/archive_$S" "$OUT_DIR/ceiling_$S"
  cat >"$OUT_DIR/parquet.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - name: archive
    type: parquet_sink
    input: $S-env
    group_id: $S-pq
    url: $OUT_DIR/archive_$S
    partition_by: [ { date: event_ts } ]
    roll: { max_records: 50000, max_age: 1s }
    max_in_flight: 2
    batch: { max_records: 5000, linger: 50ms }
YAML
  before=$(svc_cpu)
  t0=$(date +%s.%N)
  start_connectd "$OUT_DIR/parquet.yaml" "$OUT_DIR/parquet_sink.log"
  # Polls the commit log: the time of the first commit (and the records it held) and of the
  # one that completes COUNT.
  timing=$(python3 - "$OUT_DIR/archive_$S" "$COUNT" "$t0" <<'PY'
import glob, json, sys, time
root, count, t0 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
first = None
while True:
    n = 0
    for f in glob.glob(root + "/_connectd/log/*/*/*.json"):
        try:
            n += json.load(open(f))["records"]
        except (OSError, ValueError):
            pass
    now = time.time()
    if n and first is None:
        first = (now, n)
    if n >= count:
        break
    time.sleep(0.05)
total = now - t0
steady = (count - first[1]) / (now - first[0]) if now > first[0] else None
print(json.dumps({"what": "parquet_sink", "records": count, "seconds": round(total, 3),
                  "per_second": round(count / total), "steady_per_second": steady and round(steady)}))
PY
)
  stats=$(merge "$(proc_stats)" "$(svc_delta "$before" "$(svc_cpu)")")
  stats=$(merge "$stats" "$(curl -sf "http://$CD_ADMIN/connectors/archive" | python3 -c 'import json,sys; print(json.dumps({"details": json.load(sys.stdin)["details"]}))')")
  stop_connectd
  pq_bytes=$(find "$OUT_DIR/archive_$S" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  pq_files=$(find "$OUT_DIR/archive_$S" -name '*.parquet' | wc -l)
  record parquet_sink "$(merge "$(merge "$timing" "{\"files\": $pq_files, \"bytes\": $pq_bytes}")" "$stats")"
  record parquet_ceiling "$("$KB" parquet-ceiling --count "$COUNT" --dir "$OUT_DIR/ceiling_$S" --flush 50000)"
  record storage_bytes "{\"records\": $COUNT, \"parquet_bytes\": $pq_bytes, \"postgres_bytes\": $pg_bytes}"
  rm -rf "$OUT_DIR/archive_$S" "$OUT_DIR/ceiling_$S"

  # -- redis_dedup: 1M with 20% duplicates
  "$KB" envelopes --topic "$S-dd" --count "$COUNT" --dup-ratio 0.2 >/dev/null
  cat >"$OUT_DIR/dedup.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - name: dedup
    type: redis_dedup
    input: $S-dd
    output: $S-dd-out
    group_id: $S-dd
    redis_url: \${REDIS_URL}
    key_prefix: bench$S
    window: 2m
    max_in_flight: 6
    batch: { max_records: 5000, linger: 20ms }
YAML
  consume_bench "$OUT_DIR/dedup.yaml" "$S-dd" "$COUNT" "$S-dd" redis_dedup

  # -- enrich: 1M envelopes of 50,000 users (hit ratio 95%) looked up in a PostgreSQL table of
  #    their profiles; the same topic through `forward` (the broker-and-runtime ceiling), and
  #    through enrich with the store unreachable (every record takes the fallback path)
  psql_q "CREATE TABLE profiles_$S (user_id uuid PRIMARY KEY, tier text NOT NULL, region text NOT NULL);
    INSERT INTO profiles_$S SELECT format('%s-0000-4000-8000-%s', lpad(to_hex(i), 8, '0'), lpad(to_hex(i), 12, '0'))::uuid,
      (ARRAY['free', 'pro', 'enterprise'])[1 + i % 3], (ARRAY['eu', 'us', 'apac'])[1 + i % 3] FROM generate_series(0, 49999) i" >/dev/null
  before=$(svc_cpu)
  line=$("$KB" lookup-ceiling --table "profiles_$S" --keys 50000 --batch 5000 --conns 2)
  record lookup_ceiling "$(merge "$line" "$(svc_delta "$before" "$(svc_cpu)")")"
  "$KB" envelopes --topic "$S-en" --count "$COUNT" >/dev/null
  cat >"$OUT_DIR/forward_envelopes.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - { name: fwd, type: forward, input: $S-en, output: $S-en-fwd, group_id: $S-en-fwd, max_in_flight: 2, batch: { max_records: 5000, linger: 20ms } }
YAML
  consume_bench "$OUT_DIR/forward_envelopes.yaml" "$S-en-fwd" "$COUNT" "$S-en" forward_envelopes
  # Producer compression: the same forward as a middle stage of a pipeline whose producers all
  # use one codec — it reads a topic written with the codec (by a first forward, not measured)
  # and writes with it.
  for codec in none lz4 zstd; do
    for leg in a b; do
      if [ "$leg" = a ]; then from=$S-en; else from=$S-en-$codec-a; fi
      cat >"$OUT_DIR/compress_$codec$leg.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS}, producer: { compression.type: $codec } }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - { name: fwd, type: forward, input: $from, output: $S-en-$codec-$leg, group_id: $S-en-$codec-$leg, max_in_flight: 2, batch: { max_records: 5000, linger: 20ms } }
YAML
      consume_bench "$OUT_DIR/compress_$codec$leg.yaml" "$S-en-$codec-$leg" "$COUNT" "$from" "forward_${codec}_$leg"
    done
  done
  for mode in up down; do
    if [ "$mode" = up ]; then url='${DATABASE_URL}'; else url="postgres://connectd:connectd@127.0.0.1:1/connectd"; fi
    cat >"$OUT_DIR/enrich_$mode.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - name: enrich$S$mode
    type: enrich
    input: $S-en
    output: $S-en-$mode
    group_id: $S-en-$mode
    key: /user_id
    store:
      type: postgres
      database_url: $url
      query: select user_id, tier, region from profiles_$S where user_id = any(\$1::uuid[])
    defaults: { tier: unknown, region: unknown }
    max_in_flight: 2
    batch: { max_records: 5000, linger: 20ms }
YAML
    consume_bench "$OUT_DIR/enrich_$mode.yaml" "$S-en-$mode" "$COUNT" "$S-en" "enrich_$mode" "enrich$S$mode"
  done
  psql_q "DROP TABLE profiles_$S" >/dev/null

  # -- redis_sink: 1M envelopes, ZINCRBY + XADD per record through the cursor script
  record redis_ops_ceiling "$("$KB" redis-ops-ceiling --records "$COUNT")"
  "$KB" envelopes --topic "$S-rs" --count "$COUNT" >/dev/null
  cat >"$OUT_DIR/redis_sink.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - name: activity
    type: redis_sink
    input: $S-rs
    group_id: $S-rs
    redis_url: \${REDIS_URL}
    max_in_flight: 2
    batch: { max_records: 2000, linger: 20ms }
    operations:
      - zincrby: { key: "rsb$S:lb:{/event_type}", member: /user_id }
      - xadd: { key: "rsb$S:stream", fields: { user_id: /user_id, event_type: /event_type } }
YAML
  consume_bench "$OUT_DIR/redis_sink.yaml" "$S-rs" "$COUNT" "$S-rs" redis_sink
  n=$(redis-cli -u "$REDIS_URL" --no-auth-warning XLEN "rsb$S:stream")
  [ "$n" -eq "$COUNT" ] || echo "WARNING: redis_sink stream holds $n of $COUNT" >&2
  # The seed's replay: a leaderboard from the last 10k stream entries.
  ms=$(REDIS_URL=$REDIS_URL "$BIN" redis rebuild --from-stream "rsb$S:stream" --last 10000 --into "rsb$S:rebuilt" --member-field user_id | sed -E 's/.* in ([0-9.]+) ms$/\1/')
  record redis_rebuild "{\"ms\": $ms, \"entries\": 10000}"
  redis-cli -u "$REDIS_URL" --no-auth-warning --scan --pattern "rsb$S:*" | xargs -r redis-cli -u "$REDIS_URL" --no-auth-warning UNLINK >/dev/null
  redis-cli -u "$REDIS_URL" --no-auth-warning --scan --pattern "connectd:cursor:activity:$S-rs:*" | xargs -r redis-cli -u "$REDIS_URL" --no-auth-warning UNLINK >/dev/null

  # -- aggregate: 1M events of 10k users over 10 minutes into one-minute windows by user
  #    (100k window rows, all still open at the end: allowed_lateness 1h), count + sum
  "$KB" envelopes --topic "$S-agg" --count "$COUNT" --groups 10000 --minutes 10 >/dev/null
  cat >"$OUT_DIR/aggregate.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - name: agg$S
    type: aggregate
    input: $S-agg
    group_id: $S-agg
    database_url: \${DATABASE_URL}
    table: agg_$S
    window: { tumbling: 1m }
    group_by: { user_id: /user_id }
    aggregates: { events: count, amount: { sum: /payload/amount } }
    allowed_lateness: 1h
    max_in_flight: 2
    batch: { max_records: 10000, linger: 50ms }
YAML
  consume_bench "$OUT_DIR/aggregate.yaml" "$S-agg" "$COUNT" "$S-agg" aggregate
  # Its PostgreSQL side alone: the same partials merged from memory, 2 connections.
  record agg_ceiling "$("$KB" agg-ceiling --records "$COUNT" --groups 10000 --minutes 10 --batch 10000 --conns 2)"
  agg=$(psql_q "SELECT sum(events) || ' ' || count(*) || ' ' || count(*) FILTER (WHERE NOT closed) FROM agg_$S")
  read -r agg_events agg_rows agg_open <<<"$agg"
  [ "$agg_events" -eq "$COUNT" ] || echo "WARNING: aggregate counted $agg_events of $COUNT" >&2
  record aggregate_rows "{\"events\": $agg_events, \"rows\": $agg_rows, \"open_rows\": $agg_open}"
  psql_q "DROP TABLE agg_$S" >/dev/null

  # -- http_source alone: 100-event requests
  cat >"$OUT_DIR/http.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - name: ingest
    type: http_source
    output: $S-http
    listen: 127.0.0.1:18080
    static_keys: [ { name: bench, key: $KEY } ]
    max_events: 1000
YAML
  start_connectd "$OUT_DIR/http.yaml" "$OUT_DIR/http.log"
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
  "$LG" --url http://127.0.0.1:18080 --key "$KEY" --count "$HTTP_COUNT" --batch 100 --dup-ratio 0 --concurrency 16 --report "$OUT_DIR/http.json" >/dev/null 2>&1
  stats=$(proc_stats)
  # Half of the rate just measured: latency when the source is not saturated.
  half=$(python3 -c 'import json;print(int(json.load(open("'"$OUT_DIR"'/http.json"))["events_per_second"]/2))')
  "$LG" --url http://127.0.0.1:18080 --key "$KEY" --count "$((HTTP_COUNT / 2))" --rate "$half" --batch 100 --dup-ratio 0 --concurrency 16 --report "$OUT_DIR/http_half.json" >/dev/null 2>&1
  stop_connectd
  record http_source "$(merge "$(cat "$OUT_DIR/http.json")" "$stats")"
  record http_half "$(cat "$OUT_DIR/http_half.json")"

  # -- http_source, the same requests gzip-compressed (Content-Encoding: gzip), a fresh process
  start_connectd "$OUT_DIR/http.yaml" "$OUT_DIR/http_gzip.log"
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
  "$LG" --url http://127.0.0.1:18080 --key "$KEY" --count "$HTTP_COUNT" --batch 100 --dup-ratio 0 --concurrency 16 --gzip --report "$OUT_DIR/http_gzip.json" >/dev/null 2>&1
  stats=$(proc_stats)
  stop_connectd
  record http_gzip "$(merge "$(cat "$OUT_DIR/http_gzip.json")" "$stats")"

  # -- http_source with versioned contracts (one JSON Schema per event type, payload checked),
  #    the same requests as above, a fresh process: the cost of validation, same run
  mkdir -p "$OUT_DIR/contracts"
  for t in page_view signup purchase share invite; do
    mkdir -p "$OUT_DIR/contracts/$t"
    echo '{"type":"object","properties":{"seq":{"type":"integer","minimum":0},"page":{"type":"string","pattern":"^/"}},"required":["seq","page"]}' >"$OUT_DIR/contracts/$t/v1.json"
  done
  { cat "$OUT_DIR/http.yaml"; printf '    contracts: { dir: %s }\n' "$OUT_DIR/contracts"; } >"$OUT_DIR/http_contracts.yaml"
  start_connectd "$OUT_DIR/http_contracts.yaml" "$OUT_DIR/http_contracts.log"
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
  "$LG" --url http://127.0.0.1:18080 --key "$KEY" --count "$HTTP_COUNT" --batch 100 --dup-ratio 0 --concurrency 16 --report "$OUT_DIR/http_contracts.json" >/dev/null 2>&1
  stats=$(proc_stats)
  stop_connectd
  record http_contracts "$(merge "$(cat "$OUT_DIR/http_contracts.json")" "$stats")"

  # -- live stream: STREAM_RATE events/s in 100-event requests, broadcast through Redis Pub/Sub
  #    to STREAM_CLIENTS WebSocket clients; the same load with the stream off is the baseline
  #    whose CPU is subtracted (same run, same process shape).
  for mode in off on; do
    if [ "$mode" = on ]; then stream_cfg="    stream: { client_queue: 4096, max_clients_per_key: 1000 }"; clients=$STREAM_CLIENTS; else stream_cfg=""; clients=0; fi
    cat >"$OUT_DIR/stream_$mode.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
topics: [ { name: $S-stream, partitions: 6 } ]
connectors:
  - name: live$S
    type: http_source
    output: $S-stream
    listen: 127.0.0.1:18082
    redis_url: \${REDIS_URL}
    static_keys: [ { name: bench, key: $KEY } ]
    max_events: 1000
$stream_cfg
YAML
    before=$(svc_cpu)
    start_connectd "$OUT_DIR/stream_$mode.yaml" "$OUT_DIR/stream_$mode.log"
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18082/readyz >/dev/null && break; sleep 0.1; done
    line=$("$SB" --addr 127.0.0.1:18082 --key "$KEY" --clients "$clients" --rate "$STREAM_RATE" --seconds "$STREAM_SECONDS" --batch 100)
    stats=$(proc_stats)
    stop_connectd
    record "stream_$mode" "$(merge "$(merge "$line" "$stats")" "$(svc_delta "$before" "$(svc_cpu)")")"
  done

  fi # E2E_ONLY

  # -- end to end: HTTP -> dedup -> Postgres for E2E_SECONDS at full speed
  psql_q "CREATE TABLE e2e_$S (LIKE growth_events INCLUDING ALL)" >/dev/null
  cat >"$OUT_DIR/e2e.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
topics: [ { name: $S-raw, partitions: 6 }, { name: $S-unique, partitions: 6 } ]
connectors:
  - { name: ingest, type: http_source, output: $S-raw, listen: 127.0.0.1:18081, static_keys: [ { name: bench, key: $KEY } ], max_events: 1000 }
  - { name: dedup, type: redis_dedup, input: $S-raw, output: $S-unique, group_id: $S-e2e-dd, redis_url: \${REDIS_URL}, key_prefix: e2e$S, window: 2m, max_in_flight: 6, batch: { max_records: 5000, linger: 20ms } }
  - { name: store, type: postgres_sink, input: $S-unique, group_id: $S-e2e-pg, database_url: \${DATABASE_URL}, table: e2e_$S, pool_size: 2, max_in_flight: 2, batch: { max_records: 5000, linger: 50ms } }
YAML
  e2e_bench e2e "$OUT_DIR/e2e.yaml" "e2e$S" "e2e_$S" ""
  # The same rows again as a backlog: postgres_sink alone over this run's $S-unique into a
  # fresh table, so that PostgreSQL's CPU per row live and under backlog compare identical rows
  # (the postgres_sink row's synthetic envelopes are smaller and keyed in order).
  replay_rows=$(psql_q "SELECT count(*) FROM e2e_$S")
  psql_q "DROP TABLE e2e_$S; CREATE TABLE e2e_replay_$S (LIKE growth_events INCLUDING ALL)" >/dev/null
  cat >"$OUT_DIR/e2e_replay.yaml" <<YAML
kafka: { brokers: \${KAFKA_BROKERS} }
admin: { listen: \${CONNECTD_ADMIN} }
connectors:
  - { name: store, type: postgres_sink, input: $S-unique, group_id: $S-e2e-replay, database_url: \${DATABASE_URL}, table: e2e_replay_$S, pool_size: 2, max_in_flight: 2, batch: { max_records: 5000, linger: 50ms } }
YAML
  consume_bench "$OUT_DIR/e2e_replay.yaml" "$S-e2e-replay" "$replay_rows" "$S-unique" e2e_replay
  psql_q "DROP TABLE e2e_replay_$S" >/dev/null

  # -- end to end through the default pipeline itself (connectors.yaml: ingest, dedup, enrich,
  #    store, archive, activity, per-minute, daily-active, dead-letters) on topics of this run,
  #    every user with a profile for enrich; timed until every stage after enrich committed
  #    every event.
  default_pipeline "$S" "$OUT_DIR/e2e_full.yaml"
  rm -rf "$OUT_DIR/archive_full_$S"
  CONNECTD_HTTP=127.0.0.1:18081 CONNECTD_DEMO_KEY=$KEY CONNECTD_ARCHIVE_URL=$OUT_DIR/archive_full_$S \
    e2e_bench e2e_full "$OUT_DIR/e2e_full.yaml" "e2ef$S" growth_events \
    "store:$S-events.enriched archive:$S-events.enriched activity:$S-events.enriched per-minute:$S-events.enriched daily-active:$S-events.enriched"
  rm -rf "$OUT_DIR/archive_full_$S"
  profile_bench
done

python3 scripts/bench_report.py "$RESULTS" "$COUNT" "$SIZE" >BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
