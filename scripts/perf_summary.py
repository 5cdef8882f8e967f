"""Groups a `perf report` of connectd by what the sampled code belongs to.

    perf report -i perf.data --stdio --no-children -g none --sort dso,sym --percent-limit 0 \
        | python3 scripts/perf_summary.py > profile.json

Prints JSON: {"samples_percent": {group: percent of connectd's samples}, "top": [[percent,
symbol], ...]}. Self time only (no call stacks: the release build has no frame pointers), so
a group is the code that ran, not the code that asked for it — e.g. a memcpy that a JSON parse
caused counts as libc.
"""
import json
import re
import sys

# First match wins: more specific crates before the generic ones their symbols mention.
GROUPS = [
    ("kernel (system calls, sockets, scheduling, page faults)", lambda dso, sym: dso.startswith("[kernel") or dso == "[unknown]" and sym.startswith("0xffff")),
    ("librdkafka (C, the Kafka clients)", lambda dso, sym: dso.startswith("librdkafka") or re.match(r"(rd_|rdk|crc32c|LZ4|ZSTD|lz4|zstd|snappy)", sym) is not None),
    ("memory allocation (jemalloc)", lambda dso, sym: "jemalloc" in sym or re.match(r"(_rjem_|je_|_je_|_?mallocx|_?sdallocx)", sym) is not None),
    ("JSON (serde_json)", lambda dso, sym: "serde_json" in sym),
    ("Parquet, Arrow, zstd", lambda dso, sym: re.search(r"\b(parquet|arrow\w*|zstd\w*|object_store)::", sym) is not None),
    ("PostgreSQL client (sqlx)", lambda dso, sym: "sqlx" in sym),
    ("Redis client (redis)", lambda dso, sym: re.search(r"\bredis::", sym) is not None and "connectd_redis" not in sym),
    ("HTTP (hyper, axum, tower)", lambda dso, sym: re.search(r"\b(hyper|hyper_util|axum|tower|http|httparse|h2)::", sym) is not None),
    ("rust-rdkafka (Rust side of the clients)", lambda dso, sym: re.search(r"\brdkafka::", sym) is not None),
    ("tokio (scheduler, timers, I/O driver)", lambda dso, sym: re.search(r"\b(tokio|mio|parking_lot\w*)::", sym) is not None),
    ("connectd's own code (runtime, connectors)", lambda dso, sym: re.search(r"\b(connectd\w*|connector_core)::", sym) is not None),
    ("libc (memcpy, memmove, syscall wrappers)", lambda dso, sym: dso.startswith("libc") or dso.startswith("ld-linux") or re.match(r"(__memmove|__memcpy|__memset|__memcmp|__strlen|memcpy|memmove|memset)", sym) is not None),
    ("Rust standard library, hashing, formatting", lambda dso, sym: re.search(r"\b(core|alloc|std|hashbrown|foldhash|bytes|chrono|uuid|smallvec)::", sym) is not None),
]
OTHER = "other"

LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*)$")


def group_of(dso, kind, sym):
    if kind == "k":
        return GROUPS[0][0]
    for name, test in GROUPS:
        if test(dso, sym):
            return name
    return OTHER


def main():
    shares, top = {}, []
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        pct, dso, kind, sym = float(m[1]), m[2], m[3], m[4].strip()
        g = group_of(dso, kind, sym)
        shares[g] = shares.get(g, 0.0) + pct
        top.append([pct, sym[:140], g])
    top.sort(key=lambda t: -t[0])
    print(json.dumps({"samples_percent": {k: round(v, 2) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}, "top": top[:15]}))


if __name__ == "__main__":
    main()
