#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real, when missing (needs root):
# Mosquitto 2.0 (the agents' broker), Slurm 22.05 with slurmrestd and its JWT plugin plus
# munge (the Slurm adapter's cluster), Prometheus, node-exporter, pushgateway and the
# blackbox exporter (the metrics collector's sources), PostgreSQL 15 (the control plane's
# server database, deploy/dev/postgres.sh), kubectl, debootstrap (the Debian roots of
# Slurm 24.11 and 26.05, which `make test-deps` then builds with `deploy/dev/slurm.sh build`,
# as it builds the Kubernetes test bed with `deploy/dev/kube.sh build`), umoci, podman and
# runc (deploy/image/build.sh packs the control plane's OCI image with umoci; the image's
# tests run it with podman on runc, tests/deploy/test_image.py). Nothing is started
# here; the tests start what they need through deploy/dev/*.sh on loopback.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have mosquitto || need+=(mosquitto mosquitto-clients)
have slurmctld || need+=(slurmctld)
have slurmd || need+=(slurmd)
have slurmrestd || need+=(slurmrestd)
have sbatch || need+=(slurm-client)
have munged || need+=(munge)
[ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/auth_jwt.so ] || ls /usr/lib/*/slurm-wlm/auth_jwt.so >/dev/null 2>&1 \
  || need+=(slurm-wlm-jwt-plugin)
have prometheus || need+=(prometheus)
have promtool || need+=(prometheus)
have prometheus-node-exporter || need+=(prometheus-node-exporter)
have prometheus-pushgateway || need+=(prometheus-pushgateway)
have prometheus-blackbox-exporter || need+=(prometheus-blackbox-exporter)
have debootstrap || need+=(debootstrap)  # the Slurm 24.11/26.05 roots (deploy/dev/slurm.sh build)
have umoci || need+=(umoci)      # the OCI image (deploy/image/build.sh)
have podman || need+=(podman)    # runs it in tests/deploy/test_image.py,
have runc || need+=(runc)        # on runc (crun refuses a hybrid cgroup hierarchy)
have curl || need+=(curl)
have openssl || need+=(openssl)
have kubectl || need+=(kubectl)
[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || need+=(postgresql)  # deploy/dev/postgres.sh
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps: missing ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install-test-deps: installed ${need[*]}"
