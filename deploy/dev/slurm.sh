#!/usr/bin/env bash
# A private single-node Slurm on 127.0.0.1 for development, tests and benchmarks:
# munged, slurmctld, slurmd and slurmrestd (JWT), optionally slurmdbd on MariaDB, every
# file under one directory, of one of three Slurm releases:
#   22.05  this machine's Debian 12 packages (the daemons run here, as before)
#   24.11  Debian 13 (trixie) packages      } installed into a root filesystem (debootstrap
#   26.05  Debian unstable packages          } --variant=minbase) under the cache directory
#                                              ${CONTINUUM_CACHE:-$HOME/.cache/continuum}/slurm-root/<release>,
#          built once per machine (several minutes; `build` does only that, with progress
#          on stderr) and reused; the daemons run in it with chroot on loopback, or with
#          --pivot-root each in a private mount namespace with pivot_root into the root
#          (nothing mounted here; jobs may create user namespaces, e.g. for Apptainer).
#
#   deploy/dev/slurm.sh start DIR [REST_PORT] [--release R] [--accounting] [--pivot-root]
#   deploy/dev/slurm.sh build --release R       # only build R's root (no-op if built)
#   deploy/dev/slurm.sh stop DIR                 # everything, and unmounts what start mounted
#   deploy/dev/slurm.sh stop-rest DIR [NAME]     # only slurmrestd (to test an outage)
#   deploy/dev/slurm.sh start-rest DIR           # slurmrestd again, same port
#   deploy/dev/slurm.sh start-rest DIR NAME PORT PLUGINS  # another slurmrestd, e.g. one
#                                                # serving only openapi/v0.0.36 (22.05) or
#                                                # data_parser/v0.0.40 (24.11+: PLUGINS
#                                                # entries data_parser/* go to -d, others
#                                                # to -s); PORT unix:/path gives
#                                                # rest_auth/local on a socket
#   deploy/dev/slurm.sh stop-ctld DIR | start-ctld DIR   # only slurmctld (state kept)
#   deploy/dev/slurm.sh token DIR USER [SECONDS] # print a JWT minted by `scontrol token`
#   deploy/dev/slurm.sh run DIR CMD [ARG...]     # CMD where the daemons run (in the root
#                                                # for 24.11/26.05) with SLURM_CONF set,
#                                                # e.g. `run DIR sbatch --wrap true`
#   deploy/dev/slurm.sh user DIR NAME            # a system user NAME here and, with the
#                                                # same uid/gid, in the release's root
#   deploy/dev/slurm.sh status DIR
#
# `start` writes DIR/etc/slurm.conf (one node `localhost` with this machine's CPUs and
# memory, partitions `debug` (default) and `short`, JWT key DIR/etc/jwt.key), starts the
# daemons in the background and returns once the node is idle and slurmrestd answers.
# It then writes DIR/env (shell syntax): SLURM_CONF, SLURMRESTD_URL, SLURM_JWT_KEY,
# SLURM_JOB_USER, SLURM_WORKDIR, SLURM_RELEASE (e.g. 24.11.5), SLURM_DATA_PARSERS (the
# API versions slurmrestd serves, newest first: v0.0.38,v0.0.37,v0.0.36 for 22.05, the
# data_parser plugins the release ships for the others), SLURM_ROOT (the root filesystem;
# empty for 22.05), SLURM_ENTER (chroot|pivot_root; empty for 22.05) and SLURM_ACCOUNTING
# (yes|no). Ports are free loopback ports chosen
# here (REST_PORT may be given). For 24.11/26.05 (chroot), start mounts proc and sysfs in the root
# and bind-mounts DIR at the same absolute path inside it, so every path in DIR is the
# same inside and out; `stop` unmounts them (also after a crash: DIR/run/root names the
# root), the root's proc/sys once no other DIR is mounted in it.
# munged runs with its own key and socket under DIR, so it never touches a system munge.
# Jobs run as the dedicated system user `slurm` (SLURM_JOB_USER); slurmrestd runs as that
# user too (through setpriv), as slurmrestd refuses to run as root.
# --accounting: MariaDB (data in DIR/mysql, socket DIR/run/mysqld.sock, a loopback port)
# and slurmdbd (AccountingStorageType=accounting_storage/slurmdbd,
# JobAcctGatherType=jobacct_gather/linux, AccountingStorageEnforce=associations,limits,qos
# as a centre runs it: a job's account and QoS must be the user's), cluster `continuum-dev`,
# account `continuum` with users root and SLURM_JOB_USER; slurmrestd then also serves
# openapi/slurmdbd (24.11+).
# Needs root (slurmd starts jobs as other users). Prints nothing but errors (and the
# root's build progress).
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 1; }
say() { echo "slurm.sh: $*" >&2; }

JOB_USER=${SLURM_DEV_USER:-slurm}
# canonical (no symlinks): mount points are compared with /proc/self/mountinfo
CACHE=$(realpath -m "${CONTINUUM_CACHE:-$HOME/.cache/continuum}/slurm-root")
MIRROR=${CONTINUUM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
MARKER=.continuum-slurm-version   # in a finished root: the Slurm version installed
PACKAGES=(slurmctld slurmd slurmrestd slurm-client slurm-wlm-jwt-plugin munge slurmdbd
          mariadb-server curl ca-certificates python3-minimal)
PLUGIN_DIR=/usr/lib/x86_64-linux-gnu/slurm-wlm

# Where the daemons run: ROOT "" is this machine; IN is the command prefix to get there
# (it execs the command, so `"${IN[@]}" daemon &` leaves the daemon's pid in $!).
# ENTER chroot: `chroot ROOT` (DIR, proc and sysfs are bind-mounted in ROOT on this host
# by mount_root). ENTER pivot_root: each command gets a private mount namespace
# (`unshare -m`) in which ROOT is bind-mounted on itself with proc, the host's /sys and
# /dev and DIR at its own path, then becomes `/` by pivot_root (the old root is detached);
# the kernel drops those mounts with the namespace's last process, so nothing is mounted
# on this host. Jobs are then not "chrooted" in the kernel's sense and may create user
# namespaces, which unprivileged Apptainer needs (in a chroot: "Failed to create user
# namespace: not allowed to create user namespace").
ROOT=""
ENTER=chroot
IN=(env)
# shellcheck disable=SC2016  # expanded by the bash that unshare starts
PIVOT_SCRIPT='set -e; r=$1 d=$2; shift 2; here=$PWD
mount --bind "$r" "$r"
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mkdir -p "$r$d"; mount --bind "$d" "$r$d"
cd "$r"; pivot_root . .; umount -l .
cd "$here" 2>/dev/null || cd /
exec "$@"'
use_root() {  # use_root ROOT [DIR ENTER]
  ROOT=$1 ENTER=${3:-chroot}
  if [ -z "$ROOT" ]; then IN=(env)
  elif [ "$ENTER" = pivot_root ]; then
    IN=(unshare --mount --propagation private bash -c "$PIVOT_SCRIPT" pivot "$ROOT" "$2")
  else IN=(chroot "$ROOT"); fi
}
inside() { "${IN[@]}" "$@"; }

suite_of() {
  case $1 in
    24.11) echo trixie ;;
    26.05) echo unstable ;;
    *) die "unknown Slurm release '$1' (22.05, 24.11 or 26.05)" ;;
  esac
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_until() {  # wait_until SECONDS DESCRIPTION LOG COMMAND...
  local secs=$1 what=$2 log=$3 end; shift 3
  end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then
      [ -f "$log" ] && tail -n 20 "$log" >&2
      die "$what within $secs s (log: $log)"
    fi
    sleep 0.05
  done
}

# --- the root filesystems of 24.11 and 26.05 -------------------------------------------

mounted() { awk -v m="$1" '$5 == m {f=1} END {exit !f}' /proc/self/mountinfo; }

build() {  # build RELEASE: the root in $CACHE/RELEASE, once (concurrent builders wait)
  local rel=$1 suite root tmp ver t0
  suite=$(suite_of "$rel")
  root=$CACHE/$rel
  [ -f "$root/$MARKER" ] && return 0
  [ "$(id -u)" = 0 ] || die "building the Slurm $rel root needs root"
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] \
    || die "debootstrap is missing; run: make test-deps (or deploy/dev/install-test-deps.sh)"
  mkdir -p "$CACHE"
  (
    flock 9
    [ -f "$root/$MARKER" ] && exit 0
    [ -e "$root" ] && die "$root exists but is not a finished root (no $MARKER): remove it"
    tmp=$CACHE/.$rel.building
    if mounted "$tmp/proc"; then umount "$tmp/proc"; fi
    rm -rf "$tmp"
    t0=$(date +%s)
    say "building the Slurm $rel root (Debian $suite) in $root: debootstrap and apt-get, several minutes, once per machine"
    /usr/sbin/debootstrap --variant=minbase "$suite" "$tmp" "$MIRROR" 2>&1 \
      | sed -u 's/^/  debootstrap: /' >&2
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"  # no daemon starts in the build
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    mount -t proc proc "$tmp/proc"
    trap 'umount "$tmp/proc" 2>/dev/null || true' EXIT
    say "installing ${PACKAGES[*]} in the $rel root"
    chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends "${PACKAGES[@]}" 2>&1 | sed -u 's/^/  apt-get: /' >&2
    if [ "$suite" = unstable ]; then
      chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends apptainer 2>&1 | sed -u 's/^/  apt-get: /' >&2 \
        || say "apptainer could not be installed in the $rel root; continuing without it"
    fi
    chroot "$tmp" apt-get clean
    umount "$tmp/proc"
    trap - EXIT
    ver=$(chroot "$tmp" dpkg-query -W -f='${Version}' slurmctld)
    ver=${ver#*:}; ver=${ver%%-*}
    case $ver in
      "$rel".*) ;;
      *) die "Debian $suite now ships Slurm $ver, not $rel: the release map in $0 needs updating (the unfinished root is $tmp)" ;;
    esac
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
    echo "$ver" >"$tmp/$MARKER"
    mv "$tmp" "$root"
    say "built the Slurm $ver root in $root in $(( $(date +%s) - t0 )) s"
  ) 9>"$CACHE/$rel.lock"
}

mount_root() {  # mount_root DIR: proc and sysfs in $ROOT, DIR at the same path in $ROOT
  local dir=$1
  (
    flock 9
    mounted "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mounted "$ROOT/sys" || mount -t sysfs sysfs "$ROOT/sys"
    add_hostname
    mkdir -p "$ROOT$dir"
    mounted "$ROOT$dir" || mount --bind "$dir" "$ROOT$dir"
  ) 9>"$ROOT.lock"
}

add_hostname() {  # this machine's name resolves in $ROOT (slurmd looks it up)
  grep -qw "$(hostname)" "$ROOT/etc/hosts" 2>/dev/null \
    || printf '127.0.0.1\t%s\n' "$(hostname)" >>"$ROOT/etc/hosts"
}

unmount_root() {  # unmount_root ROOT DIR: DIR's bind mount; proc and sys once no DIR is left
  local root=$1 dir=$2
  [ -d "$root" ] || return 0
  (
    flock 9
    if mounted "$root$dir"; then umount "$root$dir" 2>/dev/null || umount -l "$root$dir"; fi
    rmdir "$root$dir" 2>/dev/null || true
    if ! awk -v r="$root/" '
        index($5, r) == 1 && $5 != r "proc" && $5 != r "sys" {f=1} END {exit !f}' \
        /proc/self/mountinfo; then
      if mounted "$root/sys"; then umount "$root/sys" 2>/dev/null || umount -l "$root/sys"; fi
      if mounted "$root/proc"; then umount "$root/proc" 2>/dev/null || umount -l "$root/proc"; fi
    fi
  ) 9>"$root.lock"
}

# --- daemons -------------------------------------------------------------------------------

load() {  # load DIR: read DIR/env (the running bed's settings)
  [ -f "$1/env" ] || die "$1/env is missing: no Slurm was started in $1"
  # shellcheck disable=SC1091
  . "$1/env"
  use_root "${SLURM_ROOT:-}" "${SLURM_CONF%/etc/slurm.conf}" "${SLURM_ENTER:-chroot}"  # DIR as start saw it
}

check_binaries() {
  local b
  for b in munged slurmctld slurmd slurmrestd scontrol sbatch setpriv; do
    inside sh -c "command -v $b >/dev/null 2>&1 || [ -x /usr/sbin/$b ]" \
      || die "$b is not installed${ROOT:+ in $ROOT}; run: make test-deps (or deploy/dev/install-test-deps.sh)"
  done
  [ -n "$ROOT" ] || ls /usr/lib/*/slurm-wlm/auth_jwt.so >/dev/null 2>&1 \
    || die "the Slurm JWT plugin is missing; run: apt-get install slurm-wlm-jwt-plugin"
  inside id "$JOB_USER" >/dev/null 2>&1 || die "system user '$JOB_USER' is missing${ROOT:+ in $ROOT} (the slurmd package creates it)"
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd starts jobs as user $JOB_USER)"
}

data_parsers() {  # the API versions slurmrestd serves, newest first
  if [ -z "$ROOT" ]; then echo v0.0.38,v0.0.37,v0.0.36; return; fi
  (cd "$ROOT$PLUGIN_DIR" && ls data_parser_v*.so) | sed 's/^data_parser_//; s/\.so$//; s/_/./g' \
    | sort -t. -k3,3nr | paste -sd, -
}

start_rest() {  # start_rest DIR [NAME PORT PLUGINS]: NAME "" is the main instance
  local dir=$1 name=${2:-} port=${3:-} plugins=${4:-} p
  load "$dir"
  local args=()
  if [ -z "$ROOT" ]; then
    args=(-s "${plugins:-openapi/v0.0.38,openapi/v0.0.37,openapi/v0.0.36}")
  else  # 23.02+: openapi/* plugins (-s) serve the endpoints, data_parser/* (-d) the versions
    local s=() d=()
    for p in ${plugins//,/ }; do
      case $p in data_parser/*) d+=("$p") ;; *) s+=("$p") ;; esac
    done
    if [ ${#s[@]} = 0 ]; then
      s=(openapi/slurmctld)
      [ -f "$ROOT$PLUGIN_DIR/openapi_util.so" ] && s+=(openapi/util)
      [ "${SLURM_ACCOUNTING:-no}" = yes ] && s+=(openapi/slurmdbd)
    fi
    if [ ${#d[@]} = 0 ]; then
      for p in ${SLURM_DATA_PARSERS//,/ }; do d+=("data_parser/$p"); done
    fi
    args=(-s "$(IFS=,; echo "${s[*]}")" -d "$(IFS=,; echo "${d[*]}")")
  fi
  [ -n "$port" ] || port=${SLURMRESTD_URL##*:}
  local pidf="$dir/run/slurmrestd${name:+-$name}.pid" log="$dir/log/slurmrestd${name:+-$name}.log"
  alive "$pidf" && return 0
  inside setpriv --reuid="$JOB_USER" --regid="$JOB_USER" --init-groups test -r "$dir/etc/slurm.conf" \
    || die "user $JOB_USER cannot read $dir/etc/slurm.conf: every parent directory of $dir must be searchable by others (e.g. use a directory under /tmp, not pytest's private tmp)"
  if [[ "$port" == unix:* ]]; then  # local mode: munge-authenticated peers of a unix socket
    local sock=${port#unix:}
    mkdir -p "$(dirname "$sock")"; chown "$JOB_USER:$JOB_USER" "$(dirname "$sock")"
    SLURM_CONF="$dir/etc/slurm.conf" \
      "${IN[@]}" setpriv --reuid="$JOB_USER" --regid="$JOB_USER" --init-groups \
      /usr/sbin/slurmrestd -f "$dir/etc/slurm.conf" -a rest_auth/local "${args[@]}" "$port" \
      >>"$log" 2>&1 &
    echo $! >"$pidf"
    wait_until 20 "slurmrestd did not create $sock" "$log" test -S "$sock"
    return 0
  fi
  SLURM_CONF="$dir/etc/slurm.conf" SLURM_JWT=daemon \
    "${IN[@]}" setpriv --reuid="$JOB_USER" --regid="$JOB_USER" --init-groups \
    /usr/sbin/slurmrestd -f "$dir/etc/slurm.conf" -a rest_auth/jwt "${args[@]}" "127.0.0.1:$port" \
    >>"$log" 2>&1 &
  echo $! >"$pidf"
  wait_until 20 "slurmrestd did not listen on 127.0.0.1:$port" "$log" port_open "$port"
}

start_ctld() {  # slurmctld (recovers its state from DIR/state after a stop-ctld)
  local dir=$1 port
  load "$dir"
  port=$(sed -n 's/^SlurmctldPort=//p' "$dir/etc/slurm.conf")
  alive "$dir/run/slurmctld.daemon.pid" && return 0
  "${IN[@]}" /usr/sbin/slurmctld -D -i -f "$dir/etc/slurm.conf" >>"$dir/log/slurmctld.out" 2>&1 &
  echo $! >"$dir/run/slurmctld.daemon.pid"
  wait_until 20 "slurmctld did not listen on port $port" "$dir/log/slurmctld.log" port_open "$port"
}

start_accounting() {  # MariaDB and slurmdbd for DIR; the cluster, account and users in it
  local dir=$1 dbport=$2 dbdport=$3 pass
  mkdir -p "$dir/mysql"
  chmod 700 "$dir/mysql"
  if [ ! -d "$dir/mysql/mysql" ]; then
    inside mariadb-install-db --no-defaults --user=root --datadir="$dir/mysql" \
      --auth-root-authentication-method=socket --skip-test-db >>"$dir/log/mariadb.log" 2>&1 \
      || die "mariadb-install-db failed (log: $dir/log/mariadb.log)"
  fi
  "${IN[@]}" /usr/sbin/mariadbd --no-defaults --user=root --datadir="$dir/mysql" --socket="$dir/run/mysqld.sock" \
    --bind-address=127.0.0.1 --port="$dbport" --pid-file="$dir/run/mariadbd.pid" \
    --log-error="$dir/log/mariadb.log" --innodb-use-native-aio=0 --skip-log-bin \
    --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 >>"$dir/log/mariadb.log" 2>&1 &
  echo $! >"$dir/run/mariadbd.daemon.pid"
  wait_until 60 "MariaDB did not listen on port $dbport" "$dir/log/mariadb.log" port_open "$dbport"
  pass=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  inside mariadb --no-defaults --socket="$dir/run/mysqld.sock" -u root -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" >>"$dir/log/mariadb.log" 2>&1 \
    || die "could not create MariaDB user slurm (log: $dir/log/mariadb.log)"
  cat >"$dir/etc/slurmdbd.conf" <<EOF2
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$dir/etc/jwt.key
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbdport
SlurmUser=root
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$dbport
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF2
  chmod 600 "$dir/etc/slurmdbd.conf"
  # slurmdbd's first connection to a fresh MariaDB sometimes fails its sanity query
  # ("Number of columns in result (=1) ... (=0)") and it exits: start it again (3 tries)
  local try end
  for try in 1 2 3; do
    SLURM_CONF="$dir/etc/slurm.conf" "${IN[@]}" /usr/sbin/slurmdbd -D >>"$dir/log/slurmdbd.out" 2>&1 &
    echo $! >"$dir/run/slurmdbd.daemon.pid"
    end=$(( $(date +%s) + 60 ))
    until port_open "$dbdport" || ! alive "$dir/run/slurmdbd.daemon.pid"; do
      [ "$(date +%s)" -lt "$end" ] || break
      sleep 0.1
    done
    port_open "$dbdport" && break
  done
  port_open "$dbdport" || { tail -n 20 "$dir/log/slurmdbd.log" >&2
    die "slurmdbd did not listen on port $dbdport after $try tries (log: $dir/log/slurmdbd.log)"; }
}

add_associations() {  # the cluster, account `continuum` and its users root and JOB_USER
  local dir=$1 out args
  for args in "add cluster continuum-dev" \
              "add account continuum Description=continuum Organization=continuum" \
              "add user root Account=continuum" "add user $JOB_USER Account=continuum" \
              "modify user where name=root set DefaultAccount=continuum"; do
    # shellcheck disable=SC2086
    out=$(SLURM_CONF="$dir/etc/slurm.conf" inside sacctmgr -i $args 2>&1) \
      || [[ "$out" == *"ready exists"* || "$out" == *"othing new added"* || "$out" == *"othing modified"* ]] \
      || die "sacctmgr -i $args failed: $out"
  done
}

start() {
  local dir=$1 rest_port=${2:-} release=${3:-22.05} accounting=${4:-no} enter=${5:-chroot}
  [ "$release" != 22.05 ] || [ "$enter" = chroot ] \
    || die "--pivot-root needs a release with a root filesystem (24.11 or 26.05), not 22.05"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  alive "$dir/run/slurmctld.daemon.pid" && die "a Slurm started from $dir is already running"
  mkdir -p "$dir/etc" "$dir/run" "$dir/log" "$dir/state" "$dir/spool" "$dir/munge" "$dir/jobs"
  if [ "$release" = 22.05 ]; then
    use_root ""
  else
    build "$release"
    use_root "$(realpath "$CACHE/$release")" "$dir" "$enter"
  fi
  echo "$ROOT" >"$dir/run/root"  # for `stop`, even if start fails from here on
  check_binaries
  chmod 711 "$dir"
  chmod 755 "$dir/etc" "$dir/run" "$dir/log"
  if [ "$ENTER" = pivot_root ]; then add_hostname; mkdir -p "$ROOT$dir"
  elif [ -n "$ROOT" ]; then mount_root "$dir"; fi
  # job output and working directories: writable by the job user
  inside chown "$JOB_USER:$JOB_USER" "$dir/jobs" "$dir/log"; chmod 1777 "$dir/jobs"
  # munge: own key (private dir) and socket (reachable by every local user, as
  # slurmrestd in local mode runs as the job user; munged refuses writable dirs)
  chmod 755 "$dir/munge"
  mkdir -p "$dir/munge/key"; chmod 700 "$dir/munge/key"
  [ -f "$dir/munge/key/munge.key" ] || dd if=/dev/urandom of="$dir/munge/key/munge.key" bs=128 count=1 status=none
  chmod 400 "$dir/munge/key/munge.key"
  # JWT key: 32 random bytes (HS256), readable by slurmctld (root) only
  [ -f "$dir/etc/jwt.key" ] || dd if=/dev/urandom of="$dir/etc/jwt.key" bs=32 count=1 status=none
  chmod 600 "$dir/etc/jwt.key"

  local ctld_port slurmd_port cpus mem version
  ctld_port=$(free_port); slurmd_port=$(free_port)
  [ -n "$rest_port" ] || rest_port=$(free_port)
  [[ "$rest_port" =~ ^[0-9]+$ ]] || die "REST_PORT must be a number, got '$rest_port'"
  cpus=$(nproc)
  mem=$(inside slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  [ -n "$mem" ] || die "could not read RealMemory from 'slurmd -C'"
  mem=$((mem * 9 / 10))
  version=$(inside slurmctld -V | sed -n 's/^slurm[^ ]* \([0-9.]*\).*/\1/p')
  case $version in "$release".*) ;; *) die "slurmctld${ROOT:+ in $ROOT} is Slurm '$version', not $release" ;; esac

  local storage="AccountingStorageType=accounting_storage/none" gather=none dbport="" dbdport=""
  if [ "$accounting" = yes ]; then
    inside sh -c 'command -v slurmdbd && command -v mariadbd' >/dev/null 2>&1 \
      || die "--accounting needs slurmdbd and mariadb-server${ROOT:+ in $ROOT} (apt-get install slurmdbd mariadb-server)"
    dbport=$(free_port); dbdport=$(free_port)
    storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbdport
AccountingStoragePass=$dir/munge/munge.socket
AccountingStorageEnforce=associations,limits,qos
JobAcctGatherFrequency=task=1"
    gather=linux
  fi

  cat >"$dir/etc/slurm.conf" <<EOF2
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
JobAcctGatherType=jobacct_gather/$gather
$storage
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
EOF2
  chmod 644 "$dir/etc/slurm.conf"
  # 23.02+ slurmd initialises a cgroup plugin even with proctrack/linuxproc; the root has
  # no /sys/fs/cgroup mounted (and jobs need no confinement here)
  [ -z "$ROOT" ] || echo "CgroupPlugin=disabled" >"$dir/etc/cgroup.conf"

  cat >"$dir/env" <<EOF2
SLURM_CONF=$dir/etc/slurm.conf
SLURMRESTD_URL=http://127.0.0.1:$rest_port
SLURM_JWT_KEY=$dir/etc/jwt.key
SLURM_JOB_USER=$JOB_USER
SLURM_WORKDIR=$dir/jobs
SLURM_RELEASE=$version
SLURM_DATA_PARSERS=$(data_parsers)
SLURM_ROOT=$ROOT
SLURM_ENTER=${ROOT:+$ENTER}
SLURM_ACCOUNTING=$accounting
EOF2

  inside /usr/sbin/munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/key/munge.key" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/key/munged.seed" 2>>"$dir/log/munged.log" \
    || die "munged did not start (log: $dir/log/munged.log)"
  wait_until 10 "munged did not create its socket" "$dir/log/munged.log" test -S "$dir/munge/munge.socket"

  [ "$accounting" = yes ] && start_accounting "$dir" "$dbport" "$dbdport"
  start_ctld "$dir"
  [ "$accounting" = yes ] && add_associations "$dir"
  "${IN[@]}" /usr/sbin/slurmd -D -N localhost -f "$dir/etc/slurm.conf" >>"$dir/log/slurmd.out" 2>&1 &
  echo $! >"$dir/run/slurmd.daemon.pid"
  export SLURM_CONF="$dir/etc/slurm.conf"
  wait_until 30 "node localhost did not become idle" "$dir/log/slurmd.log" \
    inside sh -c "sinfo -h -n localhost -o %t | grep -q '^idle'"
  start_rest "$dir"
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

stop() {  # every daemon at once (each takes 1-2 s to exit), then SIGKILL stragglers after 5 s;
          # then the mounts start made (DIR/run/root names the root; also after a crash)
  local dir f pid pids=() files=() root="" m
  dir=$(realpath -m "$1")  # DIR may be gone already: its mounts are still looked for
  for f in "$dir"/run/slurmrestd*.pid "$dir/run/slurmd.daemon.pid" \
           "$dir/run/slurmctld.daemon.pid" "$dir/run/slurmdbd.daemon.pid" \
           "$dir/run/mariadbd.daemon.pid" "$dir/run/munged.pid"; do
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
  [ -f "$dir/run/root" ] && root=$(cat "$dir/run/root")
  # any root with DIR mounted in it (e.g. started with another CONTINUUM_CACHE)
  while read -r m; do
    [ -f "${m%"$dir"}/$MARKER" ] && [ "${m%"$dir"}" != "$root" ] && unmount_root "${m%"$dir"}" "$dir"
  done < <(awk -v d="$dir" 'length($5) > length(d) && substr($5, length($5) - length(d) + 1) == d {print $5}' /proc/self/mountinfo)
  [ -z "$root" ] || unmount_root "$root" "$dir"
  rm -f "$dir/run/root"
}

token() {
  local dir=$1 user=$2 life=${3:-3600}
  load "$dir"
  SLURM_CONF="$dir/etc/slurm.conf" inside scontrol token "username=$user" "lifespan=$life" \
    | sed -n 's/^SLURM_JWT=//p'
}

run_in() {  # run_in DIR CMD...: CMD where the daemons run, with SLURM_CONF set
  local dir=$1; shift
  load "$dir"
  SLURM_CONF="$dir/etc/slurm.conf" inside "$@"
}

add_user() {  # add_user DIR NAME: a system user here and, same uid/gid, in DIR's root
  local dir=$1 name=$2 pw gr
  load "$dir"
  id "$name" >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$name"
  [ -n "$ROOT" ] || return 0
  (
    flock 9
    pw=$(getent passwd "$name"); gr=$(getent group "$(id -g "$name")")
    if ! grep -q "^$name:" "$ROOT/etc/passwd"; then
      awk -F: -v u="$(id -u "$name")" '$3 == u {exit 1}' "$ROOT/etc/passwd" \
        || die "uid $(id -u "$name") of $name is taken by another user in $ROOT"
      grep -q "^${gr%%:*}:" "$ROOT/etc/group" || echo "$gr" >>"$ROOT/etc/group"
      echo "$pw" >>"$ROOT/etc/passwd"
    fi
  ) 9>"$ROOT.lock"
}

# options anywhere: --release R, --accounting
RELEASE=22.05 ACCOUNTING=no ENTER_OPT=chroot ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --pivot-root) ENTER_OPT=pivot_root; shift ;;
    --release) [ $# -ge 2 ] || die "--release needs a value (22.05, 24.11 or 26.05)"; RELEASE=$2; shift 2 ;;
    --release=*) RELEASE=${1#--release=}; shift ;;
    --accounting) ACCOUNTING=yes; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ "$RELEASE" = 22.05 ] || suite_of "$RELEASE" >/dev/null
set -- "${ARGS[@]}"

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [REST_PORT] [--release R] [--accounting] [--pivot-root]"
    start "$2" "${3:-}" "$RELEASE" "$ACCOUNTING" "$ENTER_OPT" ;;
  build) [ "$RELEASE" != 22.05 ] || exit 0; build "$RELEASE" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  stop-rest) [ $# -ge 2 ] || die "usage: $0 stop-rest DIR [NAME]"; stop_pid "$2/run/slurmrestd${3:+-$3}.pid" ;;
  start-rest) [ $# -ge 2 ] || die "usage: $0 start-rest DIR [NAME PORT PLUGINS]"
    start_rest "$(cd "$2" && pwd -P)" "${3:-}" "${4:-}" "${5:-}" ;;
  stop-ctld) [ $# -ge 2 ] || die "usage: $0 stop-ctld DIR"; stop_pid "$2/run/slurmctld.daemon.pid" ;;
  start-ctld) [ $# -ge 2 ] || die "usage: $0 start-ctld DIR"; start_ctld "$(cd "$2" && pwd -P)" ;;
  token) [ $# -ge 3 ] || die "usage: $0 token DIR USER [SECONDS]"; token "$2" "$3" "${4:-3600}" ;;
  run) [ $# -ge 3 ] || die "usage: $0 run DIR CMD [ARG...]"; dir=$(cd "$2" && pwd -P); shift 2; run_in "$dir" "$@" ;;
  user) [ $# -ge 3 ] || die "usage: $0 user DIR NAME"; add_user "$2" "$3" ;;
  status) [ $# -ge 2 ] || die "usage: $0 status DIR"; alive "$2/run/slurmctld.daemon.pid" ;;
  *) die "usage: $0 start DIR [REST_PORT] [--release R] [--accounting] [--pivot-root] | build --release R | stop DIR | stop-rest DIR | start-rest DIR | stop-ctld DIR | start-ctld DIR | token DIR USER [SECONDS] | run DIR CMD... | user DIR NAME | status DIR" ;;
esac
