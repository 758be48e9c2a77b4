#!/usr/bin/env bash
# A private PostgreSQL 15 on 127.0.0.1 for development and tests.
#
#   deploy/dev/postgres.sh start DIR [PORT]   # initdb (once) and start; prints the port
#   deploy/dev/postgres.sh stop DIR           # fast shutdown (open sessions are ended)
#   deploy/dev/postgres.sh status DIR         # exit 0 when running
#   deploy/dev/postgres.sh url DIR [DBNAME]   # postgresql+psycopg://postgres@127.0.0.1:PORT/DBNAME
#
# `start` creates the cluster in DIR/data on first use (`initdb -A trust -U postgres`:
# the superuser `postgres`, no password, for loopback tests only), listens on 127.0.0.1
# only with its Unix socket in DIR, logs to DIR/log, and returns once it accepts
# connections. PORT defaults to a free loopback port; the port is recorded in DIR/port
# and printed. Starting a running cluster prints its port and does nothing else (it
# fails if a different PORT is asked). As root, the server runs as the OS user
# `postgres` (initdb and postgres refuse root) and DIR is made theirs, so DIR's parent
# directories must be traversable by that user (e.g. a directory under /tmp, not
# pytest's root-only temporary directories). `url` prints the SQLAlchemy URL of
# database DBNAME (default `postgres`) of a started cluster. The binaries are Debian's
# postgresql-15 (/usr/lib/postgresql/15/bin, or PG_BIN=...); installed with apt-get if
# missing and we are root. Prints nothing but errors and what is asked.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

find_bin() {
  local d
  for d in "${PG_BIN:-}" /usr/lib/postgresql/15/bin; do
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
  done
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && \
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null 2>&1; } \
      || die "PostgreSQL 15 is not installed and apt-get install postgresql-15 failed"
    [ -x /usr/lib/postgresql/15/bin/pg_ctl ] && { echo /usr/lib/postgresql/15/bin; return; }
  fi
  die "PostgreSQL 15 is not installed; run: apt-get install postgresql-15 (or set PG_BIN)"
}

# Run a PostgreSQL binary as the cluster's owner: `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

is_running() {
  local bin=$1 dir=$2
  [ -f "$dir/data/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

start() {
  local dir=$1 port=${2:-}
  [ -z "$port" ] || [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local bin; bin=$(find_bin)
  if is_running "$bin" "$dir"; then
    local have; have=$(cat "$dir/port")
    [ -z "$port" ] || [ "$port" = "$have" ] \
      || die "the cluster in $dir already runs on port $have, not $port"
    echo "$have"
    return 0
  fi
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "the OS user postgres is missing (it comes with the postgresql-15 package)"
    chown postgres: "$dir"
    runuser -u postgres -- test -w "$dir" \
      || die "the OS user postgres cannot reach $dir: choose a directory whose parents it can traverse (e.g. under /tmp)"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-instructions \
      >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed in $dir/data"; }
  fi
  [ -n "$port" ] || port=$(free_port)
  echo "$port" >"$dir/port"
  if ! as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null; then
    tail -n 20 "$dir/log" >&2 || true
    die "PostgreSQL did not start on 127.0.0.1:$port (log: $dir/log)"
  fi
  echo "$port"
}

stop() {
  local dir=$1
  [ -f "$dir/data/PG_VERSION" ] || return 0
  local bin; bin=$(find_bin)
  is_running "$bin" "$dir" || return 0
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
}

status() {
  local bin; bin=$(find_bin)
  is_running "$bin" "$1"
}

url() {
  local dir=$1 db=${2:-postgres}
  [ -f "$dir/port" ] || die "no cluster was started in $dir (no $dir/port)"
  echo "postgresql+psycopg://postgres@127.0.0.1:$(cat "$dir/port")/$db"
}

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [PORT]"; start "$2" "${3:-}" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  status) [ $# -ge 2 ] || die "usage: $0 status DIR"; status "$2" ;;
  url) [ $# -ge 2 ] || die "usage: $0 url DIR [DBNAME]"; url "$2" "${3:-}" ;;
  *) die "usage: $0 start DIR [PORT] | stop DIR | status DIR | url DIR [DBNAME]" ;;
esac
