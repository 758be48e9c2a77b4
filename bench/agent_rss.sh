#!/usr/bin/env bash
# The edge agent's memory at idle (issue 16 item 3, "a lean agent").
#
#   bench/agent_rss.sh [PYTHON [IDLE_S]]      (run from the repository root)
#
# Starts a private Mosquitto (deploy/dev/mosquitto.sh) and `PYTHON -m edge_agent.cli run`
# against it (telemetry every second, a throwaway command key), waits for its second
# telemetry message, leaves it idle IDLE_S seconds (default 10), then prints its
# VmRSS/VmHWM/RssAnon/RssFile (/proc/PID/status) and Pss (/proc/PID/smaps_rollup) and
# stops both. PYTHON defaults to python3; use a venv holding only the base install
# (`pip install .`) to measure what a device runs.
set -euo pipefail

PY=${1:-python3}
IDLE=${2:-10}
D=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
APID=
cleanup() {
  [ -n "$APID" ] && kill "$APID" 2>/dev/null && wait "$APID" 2>/dev/null || true
  deploy/dev/mosquitto.sh stop "$D/broker" || true
}
trap cleanup EXIT

deploy/dev/mosquitto.sh start "$D/broker" "$PORT"
KEY=$("$PY" -c 'import base64
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
k = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
print(base64.b64encode(k).decode())')
"$PY" -m edge_agent.cli run --broker "mqtt://127.0.0.1:$PORT" --device-id rss-probe \
  --state-dir "$D/agent" --telemetry-interval 1 --command-key "$KEY" >"$D/agent.log" 2>&1 &
APID=$!
timeout 60 mosquitto_sub -p "$PORT" -t continuum/v1/devices/rss-probe/telemetry -C 2 >/dev/null \
  || { cat "$D/agent.log" >&2; exit 1; }
sleep "$IDLE"  # idle: connected, hello and status sent, telemetry flowing, no run
"$PY" -c 'import sys; print("python", sys.version.split()[0])'
grep -E '^(VmRSS|VmHWM|RssAnon|RssFile):' "/proc/$APID/status"
grep -E '^Pss:' "/proc/$APID/smaps_rollup"
