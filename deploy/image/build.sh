#!/usr/bin/env bash
# The Continuum control plane as an OCI image, built without any registry or daemon:
#
#   deploy/image/build.sh [--tag TAG] [--name NAME] OUT   # OUT: an oci-archive tarball
#   deploy/image/build.sh --layout DIR ...    # also (or only, without OUT) an OCI layout dir
#   deploy/image/build.sh --print-key         # the cache key of this tree's image; no build
#   deploy/image/build.sh --base              # only the Debian root of step 1 (make test-deps)
#
# 1. a Debian 12 root filesystem from `debootstrap --variant=minbase` with python3 and
#    python3-venv and the user `continuum` (uid/gid 10001, home /var/lib/continuum),
#    cached as ${CONTINUUM_CACHE:-~/.cache/continuum}/image/base-<key> (key: the suite and
#    package list below; a minute or two, once per machine; remove it to take Debian's
#    updates);
# 2. a copy of it with a virtualenv /opt/continuum holding Continuum from this working
#    tree, `pip install '.[server]'` (no dev extra), run in the root with chroot (PyPI is
#    reached from there, with --no-cache-dir: pip's HTTP cache stores nothing behind this
#    machine's proxy, and downloading is the small part of the step);
# 3. packed as a single-layer OCI image with umoci (init, new, insert, config): entrypoint
#    /opt/continuum/bin/continuum, command `server` (so `podman run IMAGE` is `continuum
#    server` and `podman run IMAGE db upgrade` is `continuum db upgrade`), user 10001:10001,
#    working directory and CONTINUUM_STATE_DIR /var/lib/continuum, CONTINUUM_HOST 0.0.0.0,
#    port 8080.
# Steps 2 and 3 are cached by a hash of what goes in (the base key, this script, and every
# file of the Python distribution: pyproject.toml, README.md and the package directories,
# tracked or not, as git lists them): an unchanged tree reuses
# ${CONTINUUM_CACHE:-~/.cache/continuum}/image/<key>/ (the OCI layout and its oci-archive),
# and OUT is a copy of that archive; the three newest images are kept. Concurrent
# builders wait for each other (flock).
# The tag (default: the version in pyproject.toml) is the layout's
# org.opencontainers.image.ref.name, and NAME:TAG (NAME default localhost/continuum) its
# io.containerd.image.name, the name `podman load -i OUT` and `ctr images import OUT`
# give it; `skopeo copy oci-archive:OUT docker-daemon:NAME:TAG` imports it into Docker
# (docs/deploy.md).
# Needs root (debootstrap, chroot, file ownership in the layer), debootstrap and umoci
# (`apt-get install debootstrap umoci`). Progress and timings go to stderr; stdout gets
# nothing but --print-key's key.
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }
say() { echo "build.sh: $*" >&2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=$(realpath -m "${CONTINUUM_CACHE:-$HOME/.cache/continuum}/image")
MIRROR=${CONTINUUM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILD_CA=${CONTINUUM_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}  # trusted by pip in the build
SUITE=bookworm              # Debian 12: Python 3.11, what Continuum requires and is tested on
PACKAGES=(python3 python3-venv ca-certificates)
UID_GID=10001
HOME_DIR=/var/lib/continuum
VENV=/opt/continuum
# what the Python distribution is made of (pyproject.toml: readme and packages.find)
SOURCES=(pyproject.toml README.md continuum control_plane adapters edge_agent placement monitoring)
# the root's recipe: a change here builds a new base root
BASE_RECIPE="1 $SUITE ${PACKAGES[*]} uid=$UID_GID home=$HOME_DIR"

tag="" name=localhost/continuum out="" layout="" print_key=0 base_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag=$2; shift 2 ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; name=$2; shift 2 ;;
    --layout) [ $# -ge 2 ] || die "--layout needs a directory"; layout=$2; shift 2 ;;
    --print-key) print_key=1; shift ;;
    --base) base_only=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (--tag TAG, --name NAME, --layout DIR, --print-key, --base)" ;;
    *) [ -z "$out" ] || die "one OUT only (got '$out' and '$1')"; out=$1; shift ;;
  esac
done
if [ -z "$tag" ]; then
  tag=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)
  [ -n "$tag" ] || die "no version in pyproject.toml; pass --tag"
fi
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "--tag '$tag' is not an image tag ([A-Za-z0-9_][A-Za-z0-9._-]*)"
[[ "$name" =~ ^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]] \
  || die "--name '$name' is not an image name (e.g. registry.example.org/hpc/continuum)"

source_files() {  # the distribution's files, NUL-separated, sorted, relative to REPO
  if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard -- "${SOURCES[@]}" \
      | while IFS= read -r -d '' f; do [ -f "$REPO/$f" ] && printf '%s\0' "$f"; done
  else
    (cd "$REPO" && find "${SOURCES[@]}" -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0)
  fi | sort -z
}

base_key=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-16)
key=$( { echo "$base_key $name:$tag"; sha256sum "$0" | cut -d' ' -f1
         source_files | (cd "$REPO" && xargs -0 -r sha256sum); } | sha256sum | cut -c1-16)
if [ "$print_key" = 1 ]; then echo "$key"; exit 0; fi
[ -n "$out$layout" ] || [ "$base_only" = 1 ] || die "usage: $0 [--tag TAG] [--name NAME] [--layout DIR] OUT.tar (at least one of OUT, --layout; --help)"

[ "$(id -u)" = 0 ] || die "building the image needs root (debootstrap, chroot, root-owned files in the layer)"
[ -x /usr/sbin/debootstrap ] || die "debootstrap is missing: apt-get install debootstrap"
command -v umoci >/dev/null 2>&1 || die "umoci is missing: apt-get install umoci"
mkdir -p "$CACHE"

mounted() { awk -v m="$1" '$5 == m {f=1} END {exit !f}' /proc/self/mountinfo; }

build_base() {  # the Debian root with python3 and the user, in $CACHE/base-$base_key
  local root=$CACHE/base-$base_key tmp t0
  [ -f "$root/.continuum-base" ] && return 0
  tmp=$CACHE/.base-$base_key.building
  if mounted "$tmp/proc"; then umount "$tmp/proc"; fi
  rm -rf "$tmp"
  t0=$(date +%s)
  say "building the image's Debian $SUITE root in $root (debootstrap, once per machine) ..."
  /usr/sbin/debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" 2>&1 \
    | sed -u 's/^/  debootstrap: /' >&2
  [ "${PIPESTATUS[0]}" = 0 ] || die "debootstrap failed (the unfinished root is $tmp)"
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"; chmod 755 "$tmp/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$tmp/etc/resolv.conf"
  mount -t proc proc "$tmp/proc"
  trap 'umount "'"$tmp"'/proc" 2>/dev/null || true' EXIT
  chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${PACKAGES[@]}" 2>&1 | sed -u 's/^/  apt-get: /' >&2
  [ "${PIPESTATUS[0]}" = 0 ] || die "apt-get install in the root failed (the unfinished root is $tmp)"
  chroot "$tmp" groupadd --gid "$UID_GID" continuum
  chroot "$tmp" useradd --uid "$UID_GID" --gid "$UID_GID" --home-dir "$HOME_DIR" \
    --no-create-home --shell /usr/sbin/nologin continuum
  install -d -m 0750 -o "$UID_GID" -g "$UID_GID" "$tmp$HOME_DIR"
  chroot "$tmp" apt-get clean
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* \
    "$tmp"/var/log/*.log "$tmp"/var/cache/debconf/*-old "$tmp/usr/sbin/policy-rc.d"
  umount "$tmp/proc"; trap - EXIT
  date -u +%FT%TZ >"$tmp/.continuum-base"
  mv "$tmp" "$root"
  say "built the base root in $(( $(date +%s) - t0 )) s"
}

build_image() {  # the venv in a copy of the base, packed with umoci, in $CACHE/$key
  local dir=$CACHE/$key tmp root t0 t1
  [ -f "$dir/image.tar" ] && return 0
  tmp=$CACHE/.$key.building
  if mounted "$tmp/root/proc"; then umount "$tmp/root/proc"; fi
  rm -rf "$tmp"; mkdir -p "$tmp"
  root=$tmp/root
  t0=$(date +%s)
  say "installing Continuum ($tag, tree $key) into a copy of the base root ..."
  cp -a "$CACHE/base-$base_key" "$root"
  rm -f "$root/.continuum-base"
  mkdir -p "$root/tmp/src"
  source_files | (cd "$REPO" && tar --null -T - -cf -) | tar -C "$root/tmp/src" -xf -
  mount -t proc proc "$root/proc"
  trap 'umount "'"$root"'/proc" 2>/dev/null || true' EXIT
  # pip trusts this machine's CA bundle during the build (a TLS-intercepting proxy's CA
  # may be there): Debian's pip reads only the system bundle, so it stands in for the
  # root's own, which is put back afterwards
  local bundle=$root/etc/ssl/certs/ca-certificates.crt
  mv "$bundle" "$bundle.image"; cp "$BUILD_CA" "$bundle"
  local pipenv=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
                PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1)
  local v
  for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_DEFAULT_TIMEOUT HTTPS_PROXY HTTP_PROXY \
           https_proxy http_proxy NO_PROXY no_proxy; do
    [ -n "${!v:-}" ] && pipenv+=("$v=${!v}")
  done
  chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin python3 -m venv "$VENV"
  chroot "$root" "${pipenv[@]}" "$VENV/bin/pip" install -q --upgrade pip 2>&1 \
    | sed -u 's/^/  pip: /' >&2
  chroot "$root" "${pipenv[@]}" "$VENV/bin/pip" install -q "/tmp/src[server]" 2>&1 \
    | sed -u 's/^/  pip: /' >&2
  [ "${PIPESTATUS[0]}" = 0 ] || die "pip install in the root failed (the unfinished root is $root)"
  chroot "$root" env -i HOME=/tmp "$VENV/bin/continuum" --help >/dev/null || die "continuum --help fails in the root"
  umount "$root/proc"; trap - EXIT
  mv "$bundle.image" "$bundle"
  rm -rf "$root/tmp/src" "$root/root/.cache" "$root/etc/resolv.conf"
  find "$root$VENV" -name '__pycache__' -path '*/pip/*' -prune -exec rm -rf {} +
  : >"$root/etc/resolv.conf"   # the runtime (podman, the kubelet) provides it
  t1=$(date +%s)
  say "installed in $(( t1 - t0 )) s ($(du -sm "$root" | cut -f1) MiB); packing with umoci ..."
  local img=$tmp/oci:$tag
  umoci init --layout "$tmp/oci"
  umoci new --image "$img"
  umoci insert --image "$img" --history.created_by "deploy/image/build.sh (debootstrap $SUITE + pip install .[server])" \
    "$root" /
  umoci config --image "$img" --author "Continuum deploy/image/build.sh" \
    --config.user "$UID_GID:$UID_GID" \
    --config.entrypoint "$VENV/bin/continuum" --config.cmd server \
    --config.workingdir "$HOME_DIR" --config.exposedports 8080/tcp \
    --config.env "PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.env "HOME=$HOME_DIR" --config.env "CONTINUUM_STATE_DIR=$HOME_DIR" \
    --config.env CONTINUUM_HOST=0.0.0.0 --config.env MPLCONFIGDIR=/tmp/matplotlib \
    --config.env PYTHONUNBUFFERED=1 \
    --config.label "org.opencontainers.image.title=continuum" \
    --config.label "org.opencontainers.image.version=$tag" \
    --config.label "dev.continuum.tree=$key"
  umoci gc --layout "$tmp/oci"
  # the full name, for podman load and containerd (umoci's tags are tags only)
  sed -i "s#\"org.opencontainers.image.ref.name\":\"$tag\"#&,\"io.containerd.image.name\":\"$name:$tag\"#" \
    "$tmp/oci/index.json"
  grep -q "io.containerd.image.name" "$tmp/oci/index.json" || die "could not name the image in $tmp/oci/index.json"
  tar -C "$tmp/oci" -cf "$tmp/image.tar" .
  rm -rf "$root"
  mv "$tmp" "$dir"
  # the cache keeps the three newest images (each ~450 MiB: the layout and its archive)
  local old
  for old in $(cd "$CACHE" && ls -dt -- */ 2>/dev/null | sed 's#/$##' \
               | grep -E '^[0-9a-f]{16}$' | tail -n +4); do
    rm -rf "${CACHE:?}/$old"
  done
  say "packed in $(( $(date +%s) - t1 )) s: $dir/image.tar ($(du -m "$dir/image.tar" | cut -f1) MiB)"
}

t_all=$(date +%s)
(
  flock 9
  build_base
  [ "$base_only" = 1 ] && exit 0
  build_image
) 9>"$CACHE/.lock"
[ "$base_only" = 1 ] && exit 0
if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  cp "$CACHE/$key/image.tar" "$out.tmp.$$" && mv "$out.tmp.$$" "$out"
fi
if [ -n "$layout" ]; then
  rm -rf "$layout"; mkdir -p "$(dirname "$layout")"; cp -a "$CACHE/$key/oci" "$layout"
fi
say "image $name:$tag (tree $key) ready in $(( $(date +%s) - t_all )) s${out:+: $out}${layout:+ (layout $layout)}"
