#!/usr/bin/env bash
# The edge agent's memory at idle (issue 16 item 3, "a lean agent").
#
#   bench/agent_rss.sh [PYTHON [IDLE_S]]
#
# Starts a private Mosquitto (deploy/dev/mosquitto.sh) and `PYTHON -m edge_agent.cli run`
# against it (telemetry every second, a throwaway command key), waits for its second
# telemetry message, leaves it idle IDLE_S seconds (default 10), then prints its
# VmRSS/VmHWM/RssAnon/RssFile (/proc/PID/status) and Pss (/proc/PID/smaps_rollup). It then
# sends one signed RunCommand (argv `true`), waits for its Succeeded update, leaves the
# agent idle IDLE_S seconds again and prints the same figures ("after one run": what a
# device that ran work holds), and stops both.
#
# The agent and the signing helper run in a scratch directory, so PYTHON imports the
# edge_agent it has installed, not a checkout's: use a venv holding only the base install
# (`pip install .`) to measure what a device runs. PYTHON defaults to python3.
set -euo pipefail

PY=${1:-python3}
IDLE=${2:-10}
REPO=$(cd "$(dirname "$0")/.." && pwd)
D=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
T=continuum/v1/devices/rss-probe
APID=
cleanup() {
  [ -n "$APID" ] && kill "$APID" 2>/dev/null && wait "$APID" 2>/dev/null || true
  "$REPO/deploy/dev/mosquitto.sh" stop "$D/broker" || true
}
trap cleanup EXIT
report() {
  echo "== $1"
  grep -E '^(VmRSS|VmHWM|RssAnon|RssFile):' "/proc/$APID/status"
  grep -E '^Pss:' "/proc/$APID/smaps_rollup"
}

"$REPO/deploy/dev/mosquitto.sh" start "$D/broker" "$PORT"
cd "$D"
KEY=$("$PY" -c 'import base64, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
k = Ed25519PrivateKey.generate()
open(sys.argv[1], "wb").write(k.private_bytes_raw())
print(base64.b64encode(k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode())' \
  "$D/command.key")
"$PY" -m edge_agent.cli run --broker "mqtt://127.0.0.1:$PORT" --device-id rss-probe \
  --state-dir "$D/agent" --telemetry-interval 1 --command-key "$KEY" >"$D/agent.log" 2>&1 &
APID=$!
timeout 60 mosquitto_sub -p "$PORT" -t "$T/telemetry" -C 2 >/dev/null \
  || { cat "$D/agent.log" >&2; exit 1; }
sleep "$IDLE"  # idle: connected, hello and status sent, telemetry flowing, no run
"$PY" -c 'import sys; print("python", sys.version.split()[0])'
report "idle"

"$PY" -c 'import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edge_agent.protocol import RunCommand, RunSpec
from edge_agent.protocol.signing import sign_command
k = Ed25519PrivateKey.from_private_bytes(open(sys.argv[1], "rb").read())
cmd = RunCommand(id="c-1", spec=RunSpec(run_id="r-1", workflow_id="w", task="t", argv=["true"]))
open(sys.argv[2], "wb").write(sign_command(cmd, "rss-probe", k.sign))' "$D/command.key" "$D/cmd.json"
mosquitto_pub -p "$PORT" -t "$T/commands" -q 1 -f "$D/cmd.json"
for _ in $(seq 30); do  # the run's latest update is retained
  LAST=$(mosquitto_sub -p "$PORT" -t "$T/runs/r-1" -C 1 -W 2 2>/dev/null || true)
  case "$LAST" in *'"Succeeded"'*) break ;; esac
done
case "$LAST" in *'"Succeeded"'*) ;; *) echo "run r-1: $LAST" >&2; cat "$D/agent.log" >&2; exit 1 ;; esac
sleep "$IDLE"  # idle again after the run
report "after one run"
