#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real, when missing (needs root):
# Mosquitto 2.0 (the agents' broker), Slurm 22.05 with slurmrestd and its JWT plugin plus
# munge (the Slurm adapter's cluster), Prometheus, node-exporter, pushgateway and the
# blackbox exporter (the metrics collector's sources), kubectl; then builds (or reuses) the
# test bed's Kubernetes from its Go modules (deploy/dev/kube.sh build: needs Go >= 1.26; the
# first build takes ~8 min on 2 cores and prints its progress). Nothing is started here; the
# tests start what they need through deploy/dev/*.sh on loopback.
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
have curl || need+=(curl)
have openssl || need+=(openssl)
have kubectl || need+=(kubectl)
build_kube() { bash "$(dirname "${BASH_SOURCE[0]}")/kube.sh" build; }
[ ${#need[@]} -eq 0 ] && { build_kube; exit 0; }
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps: missing ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install-test-deps: installed ${need[*]}"
build_kube
