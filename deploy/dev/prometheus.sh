#!/usr/bin/env bash
# A private Prometheus and node-exporter on 127.0.0.1 for development and tests.
#
#   deploy/dev/prometheus.sh start DIR PROM_PORT EXPORTER_PORT [SCRAPE_INTERVAL [BLACKBOX_PORT]]
#   deploy/dev/prometheus.sh target DIR JOB HOST:PORT [HOST:PORT...]
#   deploy/dev/prometheus.sh stop-exporter DIR
#   deploy/dev/prometheus.sh start-exporter DIR
#   deploy/dev/prometheus.sh pause DIR | resume DIR
#   deploy/dev/prometheus.sh stop DIR
#   deploy/dev/prometheus.sh status DIR
#
# `start` starts prometheus-node-exporter on 127.0.0.1:EXPORTER_PORT (systemd collector
# off) and Prometheus on 127.0.0.1:PROM_PORT with a generated DIR/prometheus.yml:
# scrape and rule-evaluation interval SCRAPE_INTERVAL (default 1s); job `node` scrapes
# the node-exporter; any other job reads its targets from DIR/targets/JOB.json
# (file_sd, written by `target`, picked up within seconds), so a control plane started
# later can be added with `target DIR continuum 127.0.0.1:8080`; the recording and
# alert rules shipped in deploy/prometheus/rules/ are loaded. With BLACKBOX_PORT, a
# prometheus-blackbox-exporter runs there too (module tcp_connect) and job `blackbox`
# probes the HOST:PORTs given with `target DIR blackbox ...` (instance = the probed
# target, probe_duration_seconds = its TCP connect time). TSDB, logs and pids live
# in DIR. `start` returns once Prometheus answers /-/ready. `stop-exporter` and
# `start-exporter` stop and restart the node-exporter alone (same port), to make its
# series go stale. `pause`/`resume` SIGSTOP/SIGCONT Prometheus: it accepts connections
# but never answers (a hung server). `stop` stops both and waits for them to exit. Installs the Debian
# packages prometheus and prometheus-node-exporter with apt-get if missing and root.
set -euo pipefail

die() { echo "prometheus.sh: $*" >&2; exit 1; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

find_binary() {  # name, package
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  if [ -x "/usr/bin/$1" ]; then echo "/usr/bin/$1"; return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && \
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1; } \
      || die "$1 is not installed and apt-get install $2 failed"
    [ -x "/usr/bin/$1" ] && { echo "/usr/bin/$1"; return; }
  fi
  die "$1 is not installed; run: apt-get install $2"
}

http_ok() {  # url
  python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=0.5) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

kill_pidfile() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

start_exporter() {
  local dir=$1
  local port; port=$(cat "$dir/exporter.port")
  alive "$dir/exporter.pid" && die "node-exporter from $dir already running"
  local bin; bin=$(find_binary prometheus-node-exporter prometheus-node-exporter)
  "$bin" --web.listen-address="127.0.0.1:$port" --no-collector.systemd \
    >>"$dir/node-exporter.log" 2>&1 &
  echo $! >"$dir/exporter.pid"
  for _ in $(seq 1 200); do
    http_ok "http://127.0.0.1:$port/metrics" && return 0
    alive "$dir/exporter.pid" || { tail -n 20 "$dir/node-exporter.log" >&2; die "node-exporter exited at start"; }
    sleep 0.05
  done
  die "node-exporter did not answer on 127.0.0.1:$port within 10 s (log: $dir/node-exporter.log)"
}

start_blackbox() {
  local dir=$1 port=$2
  local bin; bin=$(find_binary prometheus-blackbox-exporter prometheus-blackbox-exporter)
  printf 'modules:\n  tcp_connect:\n    prober: tcp\n    timeout: 2s\n' >"$dir/blackbox.yml"
  "$bin" --config.file="$dir/blackbox.yml" --web.listen-address="127.0.0.1:$port" \
    >>"$dir/blackbox.log" 2>&1 &
  echo $! >"$dir/blackbox.pid"
  for _ in $(seq 1 200); do
    http_ok "http://127.0.0.1:$port/metrics" && return 0
    alive "$dir/blackbox.pid" || { tail -n 20 "$dir/blackbox.log" >&2; die "blackbox exporter exited at start"; }
    sleep 0.05
  done
  die "blackbox exporter did not answer on 127.0.0.1:$port within 10 s (log: $dir/blackbox.log)"
}

start() {
  local dir=$1 pport=$2 eport=$3 interval=${4:-1s} bport=${5:-}
  [[ "$pport" =~ ^[0-9]+$ ]] || die "PROM_PORT must be a number, got '$pport'"
  [[ "$eport" =~ ^[0-9]+$ ]] || die "EXPORTER_PORT must be a number, got '$eport'"
  [[ "$interval" =~ ^[0-9]+(ms|s|m)$ ]] || die "SCRAPE_INTERVAL must look like 1s or 500ms, got '$interval'"
  [[ -z "$bport" || "$bport" =~ ^[0-9]+$ ]] || die "BLACKBOX_PORT must be a number, got '$bport'"
  mkdir -p "$dir/targets" "$dir/data"
  dir=$(cd "$dir" && pwd)
  alive "$dir/prometheus.pid" && die "a Prometheus started from $dir is already running"
  local bin; bin=$(find_binary prometheus prometheus)
  echo "$eport" >"$dir/exporter.port"
  echo "$pport" >"$dir/prometheus.port"
  cat >"$dir/prometheus.yml" <<EOF
# generated by deploy/dev/prometheus.sh
global:
  scrape_interval: $interval
  evaluation_interval: $interval
  scrape_timeout: $interval
rule_files:
  - $REPO/deploy/prometheus/rules/*.yml
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:$eport"]
  - job_name: continuum
    file_sd_configs:
      - files: ["$dir/targets/continuum.json"]
        refresh_interval: 1s
EOF
  if [ -n "$bport" ]; then
    cat >>"$dir/prometheus.yml" <<EOF
  - job_name: blackbox
    metrics_path: /probe
    params:
      module: [tcp_connect]
    file_sd_configs:
      - files: ["$dir/targets/blackbox.json"]
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: 127.0.0.1:$bport
EOF
    start_blackbox "$dir" "$bport"
  fi
  start_exporter "$dir"
  "$bin" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$pport" >>"$dir/prometheus.log" 2>&1 &
  echo $! >"$dir/prometheus.pid"
  for _ in $(seq 1 400); do
    http_ok "http://127.0.0.1:$pport/-/ready" && return 0
    alive "$dir/prometheus.pid" || { tail -n 20 "$dir/prometheus.log" >&2; die "prometheus exited at start (config $dir/prometheus.yml)"; }
    sleep 0.05
  done
  die "prometheus was not ready on 127.0.0.1:$pport within 20 s (log: $dir/prometheus.log)"
}

target() {
  local dir=$1 job=$2; shift 2
  [[ "$job" =~ ^[a-z_]+$ ]] || die "JOB must be a lower-case name, got '$job'"
  [ -d "$dir/targets" ] || die "$dir has no targets directory; run start first"
  local list=""
  for t in "$@"; do
    [[ "$t" =~ ^[^:]+:[0-9]+$ ]] || die "target must be HOST:PORT, got '$t'"
    list="$list${list:+, }\"$t\""
  done
  echo "[{\"targets\": [$list], \"labels\": {}}]" >"$dir/targets/.$job.json.tmp"
  mv "$dir/targets/.$job.json.tmp" "$dir/targets/$job.json"
}

stop() {
  local dir=$1
  kill_pidfile "$dir/prometheus.pid"
  kill_pidfile "$dir/exporter.pid"
  kill_pidfile "$dir/blackbox.pid"
}

case "${1:-}" in
  start) [ $# -ge 4 ] || die "usage: $0 start DIR PROM_PORT EXPORTER_PORT [SCRAPE_INTERVAL [BLACKBOX_PORT]]"; start "$2" "$3" "$4" "${5:-1s}" "${6:-}" ;;
  target) [ $# -ge 3 ] || die "usage: $0 target DIR JOB [HOST:PORT...]"; target "$2" "$3" "${@:4}" ;;
  stop-exporter) [ $# -ge 2 ] || die "usage: $0 stop-exporter DIR"; kill_pidfile "$2/exporter.pid" ;;
  start-exporter) [ $# -ge 2 ] || die "usage: $0 start-exporter DIR"; start_exporter "$(cd "$2" && pwd)" ;;
  pause) [ $# -ge 2 ] || die "usage: $0 pause DIR"; alive "$2/prometheus.pid" || die "no Prometheus running from $2"; kill -STOP "$(cat "$2/prometheus.pid")" ;;
  resume) [ $# -ge 2 ] || die "usage: $0 resume DIR"; alive "$2/prometheus.pid" || die "no Prometheus running from $2"; kill -CONT "$(cat "$2/prometheus.pid")" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; { [ -f "$2/prometheus.pid" ] && kill -CONT "$(cat "$2/prometheus.pid")" 2>/dev/null; } || true; stop "$2" ;;
  status) [ $# -ge 2 ] || die "usage: $0 status DIR"; alive "$2/prometheus.pid" ;;
  *) die "usage: $0 start DIR PROM_PORT EXPORTER_PORT [SCRAPE_INTERVAL] | target DIR JOB HOST:PORT... | stop-exporter DIR | start-exporter DIR | pause DIR | resume DIR | stop DIR | status DIR" ;;
esac
