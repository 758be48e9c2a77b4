#!/usr/bin/env bash
# A private Mosquitto on 127.0.0.1 for development and tests.
#
#   deploy/dev/mosquitto.sh start DIR PORT [PASSWORD_FILE [ACL_FILE [CERT_FILE KEY_FILE]]]
#   deploy/dev/mosquitto.sh stop DIR
#   deploy/dev/mosquitto.sh status DIR
#
# `start` writes DIR/mosquitto.conf (listener on 127.0.0.1:PORT, persistence false,
# log to DIR/mosquitto.log; anonymous clients allowed unless a password file is given).
# Secured mode, as the control plane manages it (docs/security.md): PASSWORD_FILE and
# ACL_FILE (Mosquitto reads them again on SIGHUP), and with CERT_FILE and KEY_FILE the
# listener speaks TLS only (e.g. broker.pem / broker.key of `continuum pki init`);
# starts the broker in the background (pid in DIR/mosquitto.pid) and returns once the
# port accepts connections. `stop` stops it and waits for it to exit. Prints nothing
# but errors. Installs the Debian package `mosquitto` with apt-get if the binary is
# missing and we are root.
#
# With MOSQUITTO_BRIDGE=HOST:PORT in the environment, `start` makes an edge broker: it
# bridges `continuum/#` both ways (QoS 1, retain flags kept) to the broker at HOST:PORT,
# as a site's own broker would to the control plane's (bench/control_plane/fleet.py
# spreads a fleet larger than one process's file descriptors over several of them).
set -euo pipefail

die() { echo "mosquitto.sh: $*" >&2; exit 1; }

find_binary() {
  if command -v mosquitto >/dev/null 2>&1; then command -v mosquitto; return; fi
  if [ -x /usr/sbin/mosquitto ]; then echo /usr/sbin/mosquitto; return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && \
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null 2>&1; } \
      || die "mosquitto is not installed and apt-get install mosquitto failed"
    [ -x /usr/sbin/mosquitto ] && { echo /usr/sbin/mosquitto; return; }
  fi
  die "mosquitto is not installed; run: apt-get install mosquitto"
}

port_open() {
  python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(0.2)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

is_running() {
  [ -f "$1/mosquitto.pid" ] && kill -0 "$(cat "$1/mosquitto.pid")" 2>/dev/null
}

start() {
  local dir=$1 port=$2 pwfile=${3:-} aclfile=${4:-} certfile=${5:-} keyfile=${6:-}
  if [ -n "$certfile" ] && [ -z "$keyfile" ]; then die "CERT_FILE needs KEY_FILE"; fi
  [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  is_running "$dir" && die "a broker started from $dir is already running (pid $(cat "$dir/mosquitto.pid"))"
  local bin; bin=$(find_binary)
  {
    echo "listener $port 127.0.0.1"
    echo "persistence false"
    echo "log_dest stdout"
    echo "log_type error"
    echo "log_type warning"
    echo "log_type notice"
    echo "max_packet_size 1048576"
    # Sized for a fleet's connection surge: every device's retained hello and status
    # reach the control plane's client at once, and beyond max_queued_messages (default
    # 1,000) Mosquitto drops them; 250,000 covers 100k devices' two announcements.
    echo "max_queued_messages 250000"
    if [ "$(id -u)" = 0 ]; then echo "user root"; fi
    if [ -n "$pwfile" ]; then
      echo "allow_anonymous false"
      echo "password_file $pwfile"
    else
      echo "allow_anonymous true"
    fi
    if [ -n "$aclfile" ]; then echo "acl_file $aclfile"; fi
    if [ -n "$certfile" ]; then
      echo "certfile $certfile"
      echo "keyfile $keyfile"
    fi
    if [ -n "${MOSQUITTO_BRIDGE:-}" ]; then
      echo "connection edge-$port"
      echo "address ${MOSQUITTO_BRIDGE}"
      echo "topic continuum/# both 1"
      echo "bridge_protocol_version mqttv311"
      echo "try_private true"
      echo "notifications false"
      echo "cleansession true"
    fi
  } >"$dir/mosquitto.conf"
  "$bin" -c "$dir/mosquitto.conf" >>"$dir/mosquitto.log" 2>&1 &
  echo $! >"$dir/mosquitto.pid"
  for _ in $(seq 1 100); do
    if port_open "$port"; then return 0; fi
    if ! is_running "$dir"; then
      tail -n 20 "$dir/mosquitto.log" >&2 || true
      die "mosquitto exited at start (config $dir/mosquitto.conf)"
    fi
    sleep 0.05
  done
  die "mosquitto did not listen on 127.0.0.1:$port within 5 s (log: $dir/mosquitto.log)"
}

stop() {
  local dir=$1
  [ -f "$dir/mosquitto.pid" ] || return 0
  local pid; pid=$(cat "$dir/mosquitto.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/mosquitto.pid"
}

case "${1:-}" in
  start) [ $# -ge 3 ] || die "usage: $0 start DIR PORT [PASSWORD_FILE [ACL_FILE [CERT_FILE KEY_FILE]]]"; start "$2" "$3" "${4:-}" "${5:-}" "${6:-}" "${7:-}" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  status) [ $# -ge 2 ] || die "usage: $0 status DIR"; is_running "$2" ;;
  *) die "usage: $0 start DIR PORT [PASSWORD_FILE [ACL_FILE [CERT_FILE KEY_FILE]]] | stop DIR | status DIR" ;;
esac
