#!/usr/bin/env bash
# A private single-node Slurm 22.05 on 127.0.0.1 for development, tests and benchmarks:
# munged, slurmctld, slurmd and slurmrestd (JWT), every file under one directory.
#
#   deploy/dev/slurm.sh start DIR [REST_PORT]
#   deploy/dev/slurm.sh stop DIR                 # everything
#   deploy/dev/slurm.sh stop-rest DIR [NAME]     # only slurmrestd (to test an outage)
#   deploy/dev/slurm.sh start-rest DIR           # slurmrestd again, same port
#   deploy/dev/slurm.sh start-rest DIR NAME PORT PLUGINS  # another slurmrestd, e.g. one
#                                                # serving only openapi/v0.0.36; PORT
#                                                # unix:/path gives rest_auth/local on a socket
#   deploy/dev/slurm.sh stop-ctld DIR | start-ctld DIR   # only slurmctld (state kept)
#   deploy/dev/slurm.sh token DIR USER [SECONDS] # print a JWT minted by `scontrol token`
#   deploy/dev/slurm.sh status DIR
#
# `start` writes DIR/etc/slurm.conf (one node `localhost` with this machine's CPUs and
# memory, partitions `debug` (default) and `short`, JWT key DIR/etc/jwt.key), starts the
# daemons in the background and returns once the node is idle and slurmrestd answers.
# It then writes DIR/env (shell syntax): SLURM_CONF, SLURMRESTD_URL, SLURM_JWT_KEY,
# SLURM_JOB_USER, SLURM_WORKDIR. Ports are free loopback ports chosen here (REST_PORT
# may be given). munged runs with its own key and socket under DIR, so it never touches
# a system munge. Jobs run as the dedicated system user `slurm` (SLURM_JOB_USER); slurmrestd
# runs as that user too (through setpriv), as slurmrestd refuses to run as root.
# Needs root (slurmd starts jobs as other users). Prints nothing but errors.
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 1; }

JOB_USER=${SLURM_DEV_USER:-slurm}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() {
  python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(0.2)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_until() {  # wait_until SECONDS DESCRIPTION LOG COMMAND...
  local secs=$1 what=$2 log=$3; shift 3
  local n=$((secs * 20))
  for _ in $(seq 1 "$n"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  [ -f "$log" ] && tail -n 20 "$log" >&2
  die "$what within $secs s (log: $log)"
}

check_binaries() {
  local b
  for b in munged slurmctld slurmd slurmrestd scontrol sbatch setpriv; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] \
      || die "$b is not installed; run: make test-deps (or deploy/dev/install-test-deps.sh)"
  done
  ls /usr/lib/*/slurm-wlm/auth_jwt.so >/dev/null 2>&1 \
    || die "the Slurm JWT plugin is missing; run: apt-get install slurm-wlm-jwt-plugin"
  id "$JOB_USER" >/dev/null 2>&1 || die "system user '$JOB_USER' is missing (the slurmd package creates it)"
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd starts jobs as user $JOB_USER)"
}

start_rest() {  # start_rest DIR [NAME PORT PLUGINS]: NAME "" is the main instance
  local dir=$1 name=${2:-} port=${3:-} plugins=${4:-openapi/v0.0.38,openapi/v0.0.37,openapi/v0.0.36}
  # shellcheck disable=SC1091
  . "$dir/env"
  [ -n "$port" ] || port=${SLURMRESTD_URL##*:}
  local pidf="$dir/run/slurmrestd${name:+-$name}.pid" log="$dir/log/slurmrestd${name:+-$name}.log"
  alive "$pidf" && return 0
  setpriv --reuid="$JOB_USER" --regid="$JOB_USER" --init-groups test -r "$dir/etc/slurm.conf" \
    || die "user $JOB_USER cannot read $dir/etc/slurm.conf: every parent directory of $dir must be searchable by others (e.g. use a directory under /tmp, not pytest's private tmp)"
  if [[ "$port" == unix:* ]]; then  # local mode: munge-authenticated peers of a unix socket
    local sock=${port#unix:}
    mkdir -p "$(dirname "$sock")"; chown "$JOB_USER:$JOB_USER" "$(dirname "$sock")"
    SLURM_CONF="$dir/etc/slurm.conf" \
      setpriv --reuid="$JOB_USER" --regid="$JOB_USER" --init-groups \
      /usr/sbin/slurmrestd -f "$dir/etc/slurm.conf" -a rest_auth/local -s "$plugins" "$port" \
      >>"$log" 2>&1 &
    echo $! >"$pidf"
    wait_until 20 "slurmrestd did not create $sock" "$log" test -S "$sock"
    return 0
  fi
  SLURM_CONF="$dir/etc/slurm.conf" SLURM_JWT=daemon \
    setpriv --reuid="$JOB_USER" --regid="$JOB_USER" --init-groups \
    /usr/sbin/slurmrestd -f "$dir/etc/slurm.conf" -a rest_auth/jwt -s "$plugins" "127.0.0.1:$port" \
    >>"$log" 2>&1 &
  echo $! >"$pidf"
  wait_until 20 "slurmrestd did not listen on 127.0.0.1:$port" "$log" port_open "$port"
}

start_ctld() {  # slurmctld (recovers its state from DIR/state after a stop-ctld)
  local dir=$1 port
  port=$(sed -n 's/^SlurmctldPort=//p' "$dir/etc/slurm.conf")
  alive "$dir/run/slurmctld.daemon.pid" && return 0
  /usr/sbin/slurmctld -D -i -f "$dir/etc/slurm.conf" >>"$dir/log/slurmctld.out" 2>&1 &
  echo $! >"$dir/run/slurmctld.daemon.pid"
  wait_until 20 "slurmctld did not listen on port $port" "$dir/log/slurmctld.log" port_open "$port"
}

stop_pid() {  # stop_pid PIDFILE
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

start() {
  local dir=$1 rest_port=${2:-}
  check_binaries
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  alive "$dir/run/slurmctld.pid" && die "a Slurm started from $dir is already running"
  mkdir -p "$dir/etc" "$dir/run" "$dir/log" "$dir/state" "$dir/spool" "$dir/munge" "$dir/jobs"
  chmod 711 "$dir"
  chmod 755 "$dir/etc" "$dir/run" "$dir/log"
  # job output and working directories: writable by the job user
  chown "$JOB_USER:$JOB_USER" "$dir/jobs"; chmod 1777 "$dir/jobs"
  chown "$JOB_USER:$JOB_USER" "$dir/log"
  # munge: own key (private dir) and socket (reachable by every local user, as
  # slurmrestd in local mode runs as the job user; munged refuses writable dirs)
  chmod 755 "$dir/munge"
  mkdir -p "$dir/munge/key"; chmod 700 "$dir/munge/key"
  [ -f "$dir/munge/key/munge.key" ] || dd if=/dev/urandom of="$dir/munge/key/munge.key" bs=128 count=1 status=none
  chmod 400 "$dir/munge/key/munge.key"
  # JWT key: 32 random bytes (HS256), readable by slurmctld (root) only
  [ -f "$dir/etc/jwt.key" ] || dd if=/dev/urandom of="$dir/etc/jwt.key" bs=32 count=1 status=none
  chmod 600 "$dir/etc/jwt.key"

  local ctld_port slurmd_port cpus mem
  ctld_port=$(free_port); slurmd_port=$(free_port)
  [ -n "$rest_port" ] || rest_port=$(free_port)
  [[ "$rest_port" =~ ^[0-9]+$ ]] || die "REST_PORT must be a number, got '$rest_port'"
  cpus=$(nproc)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  [ -n "$mem" ] || die "could not read RealMemory from 'slurmd -C'"
  mem=$((mem * 9 / 10))

  cat >"$dir/etc/slurm.conf" <<EOF
ClusterName=continuum-dev
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$dir/etc/jwt.key
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=100000,batch_sched_delay=0,bf_interval=1
ReturnToService=2
MpiDefault=none
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
KillWait=2
MinJobAge=600
InactiveLimit=0
Waittime=0
MessageTimeout=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=localhost Default=NO MaxTime=00:10:00 State=UP
EOF
  chmod 644 "$dir/etc/slurm.conf"

  cat >"$dir/env" <<EOF
SLURM_CONF=$dir/etc/slurm.conf
SLURMRESTD_URL=http://127.0.0.1:$rest_port
SLURM_JWT_KEY=$dir/etc/jwt.key
SLURM_JOB_USER=$JOB_USER
SLURM_WORKDIR=$dir/jobs
EOF

  /usr/sbin/munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/key/munge.key" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/key/munged.seed" 2>>"$dir/log/munged.log" \
    || die "munged did not start (log: $dir/log/munged.log)"
  wait_until 10 "munged did not create its socket" "$dir/log/munged.log" test -S "$dir/munge/munge.socket"

  start_ctld "$dir"
  /usr/sbin/slurmd -D -N localhost -f "$dir/etc/slurm.conf" >>"$dir/log/slurmd.out" 2>&1 &
  echo $! >"$dir/run/slurmd.daemon.pid"
  export SLURM_CONF="$dir/etc/slurm.conf"
  wait_until 30 "node localhost did not become idle" "$dir/log/slurmd.log" \
    bash -c "sinfo -h -n localhost -o %t | grep -q '^idle'"
  start_rest "$dir"
}

stop() {  # every daemon at once (each takes 1-2 s to exit), then SIGKILL stragglers after 5 s
  local dir=$1 f pid pids=() files=()
  [ -d "$dir/run" ] || return 0
  for f in "$dir"/run/slurmrestd*.pid "$dir/run/slurmd.daemon.pid" \
           "$dir/run/slurmctld.daemon.pid" "$dir/run/munged.pid"; do
    [ -f "$f" ] || continue
    files+=("$f")
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.05
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -f "${files[@]}"
}

token() {
  local dir=$1 user=$2 life=${3:-3600}
  SLURM_CONF="$dir/etc/slurm.conf" scontrol token "username=$user" "lifespan=$life" \
    | sed -n 's/^SLURM_JWT=//p'
}

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [REST_PORT]"; start "$2" "${3:-}" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  stop-rest) [ $# -ge 2 ] || die "usage: $0 stop-rest DIR [NAME]"; stop_pid "$2/run/slurmrestd${3:+-$3}.pid" ;;
  start-rest) [ $# -ge 2 ] || die "usage: $0 start-rest DIR [NAME PORT PLUGINS]"
    start_rest "$(cd "$2" && pwd)" "${3:-}" "${4:-}" "${5:-}" ;;
  stop-ctld) [ $# -ge 2 ] || die "usage: $0 stop-ctld DIR"; stop_pid "$2/run/slurmctld.daemon.pid" ;;
  start-ctld) [ $# -ge 2 ] || die "usage: $0 start-ctld DIR"; start_ctld "$(cd "$2" && pwd)" ;;
  token) [ $# -ge 3 ] || die "usage: $0 token DIR USER [SECONDS]"; token "$2" "$3" "${4:-3600}" ;;
  status) [ $# -ge 2 ] || die "usage: $0 status DIR"; alive "$2/run/slurmctld.daemon.pid" ;;
  *) die "usage: $0 start DIR [REST_PORT] | stop DIR | stop-rest DIR | start-rest DIR | token DIR USER [SECONDS] | status DIR" ;;
esac
