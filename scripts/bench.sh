#!/usr/bin/env bash
# Benchmarks (not tests): writes BENCHMARKS.md. Every figure is the median of RUNS runs with
# min–max, next to the ceiling measured in the same run on the same machine.
#
#   bash scripts/bench.sh            # RUNS=3 COUNT=1000000 by default
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${RUNS:-3}"
COUNT="${COUNT:-1000000}"
SIZE="${SIZE:-100}"
OUT_DIR="${BENCH_DIR:-bench-results}"

eval "$(bash scripts/dev-services.sh up)"
export DATABASE_URL REDIS_URL KAFKA_BROKERS
cargo build --release --locked -p connectd --bin connectd --example kafka_bench >/dev/null
BIN=target/release/connectd
KB=target/release/examples/kafka_bench
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
: >"$RESULTS"

record() { # section json-line
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["section"]=sys.argv[1]; print(json.dumps(d))' "$1" "$2" >>"$RESULTS"
}

# Runs connectd on $1 until group $2 has committed $COUNT records of topic $3; records rate,
# CPU seconds and peak RSS of the connectd process.
measure_connectd() { # config group topic section
  local cfg=$1 group=$2 topic=$3 section=$4 admin_port=$((20000 + RANDOM % 20000))
  CONNECTD_ADMIN=127.0.0.1:$admin_port CONNECTD_LOG=warn "$BIN" run -c "$cfg" 2>"$OUT_DIR/$section.log" &
  local pid=$! peak=0 line
  local ticks
  ticks=$(getconf CLK_TCK)
  line=$("$KB" wait-group --group "$group" --topic "$topic" --count "$COUNT" &
    wpid=$!
    while kill -0 $wpid 2>/dev/null; do
      rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
      echo "$rss" >"$OUT_DIR/.rss"
      sleep 0.5
    done
    wait $wpid)
  peak=$(awk '/VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null || cat "$OUT_DIR/.rss")
  local cpu
  cpu=$(awk -v t="$ticks" '{printf "%.2f", ($14+$15)/t}' /proc/$pid/stat)
  kill -TERM $pid; wait $pid || true
  line=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["cpu_seconds"]=float(sys.argv[2]); d["peak_rss_mb"]=round(int(sys.argv[3])/1024,1); d["cpu_us_per_record"]=round(float(sys.argv[2])*1e6/d["records"],2); print(json.dumps(d))' "$line" "$cpu" "$peak")
  record "$section" "$line"
}

for run in $(seq 1 "$RUNS"); do
  echo "== run $run/$RUNS" >&2
  t="bench-src-$run-$$"
  record broker_produce "$("$KB" produce --topic "$t" --count "$COUNT" --size "$SIZE" --partitions 6)"
  record broker_consume "$("$KB" consume --topic "$t" --count "$COUNT")"

  # forward: topic -> topic, 1M small records already in the input topic.
  cfg="$OUT_DIR/forward-$run.yaml"
  cat >"$cfg" <<YAML
kafka:
  brokers: \${KAFKA_BROKERS}
admin:
  listen: \${CONNECTD_ADMIN}
connectors:
  - name: fwd
    type: forward
    input: $t
    output: $t.copy
    group_id: bench-fwd-$run-$$
    max_in_flight: 2
    batch:
      max_records: 5000
      linger: 20ms
YAML
  measure_connectd "$cfg" "bench-fwd-$run-$$" "$t" forward
done

python3 scripts/bench_report.py "$RESULTS" "$COUNT" "$SIZE" >BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
