#!/usr/bin/env bash
# A private Kubernetes control plane on 127.0.0.1 for development, tests and benchmarks,
# built from the official Go modules: etcd, kube-apiserver (TLS, RBAC, service-account
# tokens), kube-controller-manager, kube-scheduler and kwok (simulated kubelets: nodes that
# report Ready and their capacity, pods that go Running and finish; no containers run).
#
#   deploy/dev/kube.sh build                      # build the pinned versions once (cached)
#   deploy/dev/kube.sh built                      # exit 0 iff they are built
#   deploy/dev/kube.sh start DIR [--nodes N]      # everything; N kwok nodes (default 2)
#   deploy/dev/kube.sh stop DIR                   # everything
#   deploy/dev/kube.sh stop-control-plane DIR     # kube-apiserver, controller-manager,
#   deploy/dev/kube.sh start-control-plane DIR    #   scheduler and kwok (etcd keeps state)
#   deploy/dev/kube.sh add-node DIR NAME [cpu=4] [memory=16Gi] [pods=110] [gpu=0]
#                            [arch=amd64] [label:KEY=VALUE]... [taint:KEY=VALUE:EFFECT]...
#   deploy/dev/kube.sh node-offline DIR NAME | node-online DIR NAME
#   deploy/dev/kube.sh kubectl DIR ARGS...        # kubectl as the cluster admin
#   deploy/dev/kube.sh status DIR
#
# Versions (pinned here; the build goes to ${CONTINUUM_CACHE:-~/.cache/continuum}/kube/):
# Kubernetes v1.37.2 and etcd v3.7.0 (the etcd that k8s.io/kubernetes v1.37.2 requires) from
# deploy/dev/kube/kubernetes/go.mod; kwok v0.8.0 by `go install`. Needs Go >= 1.26 and
# ~4 GB of Go caches; the first build takes ~10 min on 2 cores (docs/kubernetes.md).
#
# `start` writes DIR/pki (an openssl CA, serving and client certificates, the
# service-account signing key), DIR/admin.kubeconfig (system:masters), applies
# deploy/kubernetes/rbac.yaml and writes DIR/sa.kubeconfig (the token of ServiceAccount
# continuum/continuum-adapter, what the docs tell users to give Continuum), creates the
# nodes, and returns once they are Ready. DIR/env (shell syntax): KUBECONFIG (admin),
# KUBE_SA_KUBECONFIG, KUBE_APISERVER_URL, ETCD_URL, KUBE_VERSION, KUBE_BIN.
#
# kwok nodes: annotation kwok.x-k8s.io/node=fake, labels kubernetes.io/hostname,
# kubernetes.io/arch, kubernetes.io/os=linux, type=kwok. `start --nodes N` makes kwok-node-1..N
# (8 cpu, 32Gi, 110 pods; every second one also nvidia.com/gpu: 1 and the label
# nvidia.com/gpu.present=true). Pods (deploy/dev/kube/kwok-stages.yaml): Running at once;
# a pod of a Job ends after the duration in its annotation continuum.dev/kwok-duration (or
# env KWOK_DURATION of its first container; Go duration, default 1s) as Succeeded, or as
# Failed with container exit code continuum.dev/kwok-exit-code (env KWOK_EXIT_CODE) when that
# is not 0. Other pods (Deployments) run until deleted. kwok also serves the kubelet API
# (pod logs: one line, "kwok: a simulated container; no process ran"). node-offline makes kwok report the
# node NotReady (its pods stay as they are, as kwok stops acting for it), node-online Ready.
# Prints nothing but errors (and the build's progress). Needs curl, openssl, kubectl.
set -euo pipefail

die() { echo "kube.sh: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KUBE_VERSION=v1.37.2
KUBE_MINOR=37
KWOK_VERSION=v0.8.0
CACHE=${CONTINUUM_CACHE:-$HOME/.cache/continuum}/kube
BIN=$CACHE/$KUBE_VERSION/bin
KWOK_BIN=$CACHE/kwok-$KWOK_VERSION/bin
MOD=$HERE/kube/kubernetes

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_until() {  # wait_until SECONDS DESCRIPTION LOG COMMAND...
  local secs=$1 what=$2 log=$3; shift 3
  local n=$((secs * 10))
  for _ in $(seq 1 "$n"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  [ -f "$log" ] && tail -n 20 "$log" >&2
  die "$what within $secs s (log: $log)"
}

wait_up() {  # wait_up SECONDS NAME COMMAND...: COMMAND succeeds while daemon NAME runs
  local secs=$1 name=$2; shift 2
  local log=$DIR/log/$name.log n=$((secs * 10))
  for _ in $(seq 1 "$n"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! alive "$DIR/run/$name.pid"; then
      tail -n 20 "$log" >&2; die "$name exited (log: $log)"
    fi
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  die "$name was not ready within $secs s (log: $log)"
}

stop_pid() {  # stop_pid PIDFILE...: SIGTERM all, wait up to 10 s, SIGKILL stragglers
  local f pid pids=()
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; pids+=("$pid"); fi
    rm -f "$f"
  done
  for _ in $(seq 1 100); do
    local any=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && any=1; done
    [ "$any" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

# --- build ---------------------------------------------------------------------------

built() {
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$BIN/$b" ] || return 1
  done
  [ -x "$KWOK_BIN/kwok" ]
}

build() {
  built && return 0
  command -v go >/dev/null 2>&1 \
    || die "Go is not installed (Go >= 1.26 from https://go.dev/dl/ builds the test bed's Kubernetes)"
  local gov
  gov=$(go env GOVERSION)
  [[ "$gov" =~ ^go1\.(2[6-9]|[3-9][0-9]) ]] || die "Go >= 1.26 is needed, found $gov"
  local t0 tmp
  t0=$(date +%s)
  mkdir -p "$CACHE"
  if ! [ -x "$BIN/kube-apiserver" ] || ! [ -x "$BIN/etcd" ]; then
    echo "kube.sh: building Kubernetes $KUBE_VERSION and etcd into $BIN (the first time ~8 min on 2 cores and ~4 GB of Go caches) ..." >&2
    tmp=$(mktemp -d "$CACHE/build.XXXXXX")
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$KUBE_MINOR"
    ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
    (cd "$MOD" && go build -mod=readonly -ldflags "$ldflags" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler) || { rm -rf "$tmp"; die "building Kubernetes failed"; }
    echo "kube.sh: ... Kubernetes built after $(( $(date +%s) - t0 )) s; building etcd ..." >&2
    (cd "$MOD" && go build -mod=readonly -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3) \
      || { rm -rf "$tmp"; die "building etcd failed"; }
    chmod 755 "$tmp"; mkdir -p "$(dirname "$BIN")"; rm -rf "$BIN"; mv "$tmp" "$BIN"
  fi
  if ! [ -x "$KWOK_BIN/kwok" ]; then
    echo "kube.sh: building kwok $KWOK_VERSION into $KWOK_BIN (~2 min) ..." >&2
    tmp=$(mktemp -d "$CACHE/build.XXXXXX")
    GOBIN=$tmp go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" \
      || { rm -rf "$tmp"; die "building kwok failed"; }
    chmod 755 "$tmp"; mkdir -p "$(dirname "$KWOK_BIN")"; rm -rf "$KWOK_BIN"; mv "$tmp" "$KWOK_BIN"
  fi
  echo "kube.sh: built in $(( $(date +%s) - t0 )) s" >&2
}

# --- certificates and kubeconfigs -----------------------------------------------------

cert() {  # cert PKI NAME SUBJECT EXTENSIONS: an EC key and a certificate signed by the CA
  local pki=$1 name=$2 subj=$3 ext=$4
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  printf '%b\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

pki() {
  local pki=$1/pki
  [ -f "$pki/ca.crt" ] && return 0
  mkdir -p "$pki"; chmod 700 "$pki"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$pki/ca.key" -subj "/CN=continuum-dev-kubernetes-ca" -days 3650 \
    -out "$pki/ca.crt" 2>/dev/null || die "openssl could not make the CA"
  local client="keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth"
  cert "$pki" apiserver "/CN=kube-apiserver" \
    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  cert "$pki" admin "/O=system:masters/CN=continuum-dev-admin" "$client"
  cert "$pki" controller-manager "/CN=system:kube-controller-manager" "$client"
  cert "$pki" scheduler "/CN=system:kube-scheduler" "$client"
  cert "$pki" kwok "/O=system:masters/CN=kwok" "$client"
  cert "$pki" apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

b64() { base64 -w0 <"$1"; }

kubeconfig() {  # kubeconfig OUT URL CA USER (client cert pki/USER.crt) | OUT URL CA - TOKEN
  local out=$1 url=$2 ca=$3 user=$4 auth
  if [ "$user" = - ]; then
    auth="    token: $5"; user=continuum-adapter
  else
    auth="    client-certificate-data: $(b64 "$(dirname "$ca")/$user.crt")
    client-key-data: $(b64 "$(dirname "$ca")/$user.key")"
  fi
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: continuum-dev
  cluster:
    server: $url
    certificate-authority-data: $(b64 "$ca")
users:
- name: $user
  user:
$auth
contexts:
- name: continuum-dev
  context:
    cluster: continuum-dev
    user: $user
current-context: continuum-dev
EOF
  chmod 600 "$out"
}

# --- daemons --------------------------------------------------------------------------

kctl() { kubectl --kubeconfig "$DIR/admin.kubeconfig" "$@"; }

healthy() {  # healthy URL: HTTPS GET answers 200 "ok" (admin certificate)
  curl -sf --max-time 2 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" \
    --key "$DIR/pki/admin.key" "$1" | grep -q '^ok$'
}

start_etcd() {
  alive "$DIR/run/etcd.pid" && return 0
  # shellcheck disable=SC1091
  . "$DIR/ports"
  "$BIN/etcd" --name continuum-dev --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "continuum-dev=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls "http://127.0.0.1:$ETCD_METRICS_PORT" \
    --unsafe-no-fsync --log-level warn >>"$DIR/log/etcd.log" 2>&1 &
  echo $! >"$DIR/run/etcd.pid"
  wait_up 30 etcd bash -c "curl -sf http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"
}

start_control_plane() {
  # shellcheck disable=SC1091
  . "$DIR/ports"
  local pki=$DIR/pki
  if ! alive "$DIR/run/kube-apiserver.pid"; then
    "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
      --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
      --endpoint-reconciler-type none --cert-dir "$pki" \
      --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
      --client-ca-file "$pki/ca.crt" --authorization-mode RBAC --anonymous-auth=false \
      --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
      --service-account-issuer https://kubernetes.default.svc.cluster.local \
      --api-audiences https://kubernetes.default.svc.cluster.local \
      --service-cluster-ip-range 10.96.0.0/16 --allow-privileged \
      --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
      --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
      --kubelet-preferred-address-types InternalIP \
      --profiling=false >>"$DIR/log/kube-apiserver.log" 2>&1 &
    echo $! >"$DIR/run/kube-apiserver.pid"
  fi
  wait_up 90 kube-apiserver healthy "https://127.0.0.1:$APISERVER_PORT/readyz"
  if ! alive "$DIR/run/kube-controller-manager.pid"; then
    "$BIN/kube-controller-manager" --kubeconfig "$DIR/controller-manager.kubeconfig" \
      --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
      --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$CM_PORT" --leader-elect=false \
      --use-service-account-credentials --service-account-private-key-file "$pki/sa.key" \
      --root-ca-file "$pki/ca.crt" --cluster-name continuum-dev \
      --controllers '*,-persistentvolume-binder-controller,-persistentvolume-attach-detach-controller,-persistentvolume-expander-controller,-node-ipam-controller' \
      --node-monitor-grace-period 20s --concurrent-job-syncs 10 \
      --profiling=false >>"$DIR/log/kube-controller-manager.log" 2>&1 &
    echo $! >"$DIR/run/kube-controller-manager.pid"
  fi
  if ! alive "$DIR/run/kube-scheduler.pid"; then
    "$BIN/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
      --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
      --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false \
      --profiling=false >>"$DIR/log/kube-scheduler.log" 2>&1 &
    echo $! >"$DIR/run/kube-scheduler.pid"
  fi
  if ! alive "$DIR/run/kwok.pid"; then
    # kwok also plays the kubelet API on KWOK_PORT (HTTP and HTTPS), where kube-apiserver
    # reads pod logs: every container "logs" DIR/kwok/container.log (CRI log format)
    mkdir -p "$DIR/kwok"
    echo "$(date -u +%Y-%m-%dT%H:%M:%S.000000000Z) stdout F kwok: a simulated container; no process ran" \
      >"$DIR/kwok/container.log"
    printf '%s\n' "apiVersion: kwok.x-k8s.io/v1alpha1" "kind: ClusterLogs" \
      "metadata: {name: every-container}" \
      "spec: {logs: [{logsFile: '$DIR/kwok/container.log', follow: false}]}" \
      >"$DIR/kwok/logs.yaml"
    "$KWOK_BIN/kwok" --kubeconfig "$DIR/kwok.kubeconfig" --config "$REPO/deploy/dev/kube/kwok-stages.yaml" \
      --config "$DIR/kwok/logs.yaml" \
      --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
      --server-address "127.0.0.1:$KWOK_PORT" --node-port "$KWOK_PORT" \
      --node-ip 127.0.0.1 --cidr 10.244.0.0/16 \
      --node-lease-duration-seconds 10 >>"$DIR/log/kwok.log" 2>&1 &
    echo $! >"$DIR/run/kwok.pid"
  fi
  # their serving certificates are self-signed (--cert-dir default); /healthz needs no client
  wait_up 60 kube-controller-manager bash -c "curl -skf https://127.0.0.1:$CM_PORT/healthz | grep -q '^ok$'"
  wait_up 60 kube-scheduler bash -c "curl -skf https://127.0.0.1:$SCHEDULER_PORT/healthz | grep -q '^ok$'"
  wait_up 60 kwok bash -c "curl -sf http://127.0.0.1:$KWOK_PORT/healthz"
}

stop_control_plane() {
  # kwok holds each node's Lease under a random identity: a new kwok waits for the old
  # Leases to expire, so they go with it (while the API server still answers)
  stop_pid "$DIR/run/kwok.pid"
  if alive "$DIR/run/kube-apiserver.pid"; then
    kctl -n kube-node-lease delete leases --all --wait=false >/dev/null 2>&1 || true
  fi
  stop_pid "$DIR/run/kube-scheduler.pid" "$DIR/run/kube-controller-manager.pid" \
    "$DIR/run/kube-apiserver.pid"
}

# --- nodes ----------------------------------------------------------------------------

add_node() {  # add_node NAME [cpu=N] [memory=Q] [pods=N] [gpu=N] [arch=A] [label:K=V]... [taint:K=V:E]...
  local name=$1; shift
  local cpu=4 memory=16Gi pods=110 gpu=0 arch=amd64 labels="" taints="" a kv k v e
  for a in "$@"; do
    case "$a" in
      cpu=*) cpu=${a#cpu=} ;;
      memory=*) memory=${a#memory=} ;;
      pods=*) pods=${a#pods=} ;;
      gpu=*) gpu=${a#gpu=} ;;
      arch=*) arch=${a#arch=} ;;
      label:*=*) kv=${a#label:}; labels+="    \"${kv%%=*}\": \"${kv#*=}\""$'\n' ;;
      taint:*) kv=${a#taint:}; e=${kv##*:}; kv=${kv%:*}; k=${kv%%=*}; v=""
        [[ "$kv" == *=* ]] && v=${kv#*=}
        taints+="  - {key: \"$k\", value: \"$v\", effect: \"$e\"}"$'\n' ;;
      *) die "add-node: unknown argument '$a' (cpu= memory= pods= gpu= arch= label:K=V taint:K=V:EFFECT)" ;;
    esac
  done
  local res="    cpu: \"$cpu\"
    memory: \"$memory\"
    pods: \"$pods\""
  [ "$gpu" = 0 ] || res+="
    nvidia.com/gpu: \"$gpu\""
  kctl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: "$name"
    kubernetes.io/arch: "$arch"
    kubernetes.io/os: linux
    type: kwok
$labels
spec:
${taints:+  taints:
$taints}
status:
  allocatable:
$res
  capacity:
$res
  nodeInfo:
    architecture: "$arch"
    operatingSystem: linux
EOF
}

node_ready() {  # node_ready NAME STATUS: the node's Ready condition is STATUS (True: and
  # the node lifecycle controller has lifted its not-ready taints, so pods schedule there)
  local got
  got=$(kctl get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}' 2>/dev/null) || return 1
  case "$2" in
    True) [[ "$got" == True* && "$got" != *node.kubernetes.io/not-ready* && "$got" != *node.kubernetes.io/unreachable* ]] ;;
    *) [[ "$got" == "$2"* ]] ;;
  esac
}

# --- commands -------------------------------------------------------------------------

start() {
  local nodes=2
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) [ $# -ge 2 ] || die "--nodes needs a number"; nodes=$2; shift 2 ;;
      *) die "start: unknown argument '$1'" ;;
    esac
  done
  [[ "$nodes" =~ ^[0-9]+$ ]] || die "--nodes must be a number, got '$nodes'"
  command -v kubectl >/dev/null 2>&1 || die "kubectl is not installed (apt-get install kubectl)"
  command -v openssl >/dev/null 2>&1 || die "openssl is not installed"
  build
  mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
  alive "$DIR/run/kube-apiserver.pid" && die "a cluster started from $DIR is already running"
  mkdir -p "$DIR/run" "$DIR/log"
  pki "$DIR"
  if ! [ -f "$DIR/ports" ]; then
    cat >"$DIR/ports" <<EOF
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
ETCD_METRICS_PORT=$(free_port)
APISERVER_PORT=$(free_port)
CM_PORT=$(free_port)
SCHEDULER_PORT=$(free_port)
KWOK_PORT=$(free_port)
EOF
  fi
  # shellcheck disable=SC1091
  . "$DIR/ports"
  local url=https://127.0.0.1:$APISERVER_PORT
  kubeconfig "$DIR/admin.kubeconfig" "$url" "$DIR/pki/ca.crt" admin
  kubeconfig "$DIR/controller-manager.kubeconfig" "$url" "$DIR/pki/ca.crt" controller-manager
  kubeconfig "$DIR/scheduler.kubeconfig" "$url" "$DIR/pki/ca.crt" scheduler
  kubeconfig "$DIR/kwok.kubeconfig" "$url" "$DIR/pki/ca.crt" kwok
  start_etcd
  start_control_plane

  kctl apply -f "$REPO/deploy/kubernetes/rbac.yaml" >/dev/null
  wait_until 60 "the token controller did not fill secret continuum/continuum-adapter-token" \
    "$DIR/log/kube-controller-manager.log" \
    bash -c "[ -n \"\$(kubectl --kubeconfig '$DIR/admin.kubeconfig' -n continuum get secret continuum-adapter-token -o jsonpath='{.data.token}')\" ]"
  local token
  token=$(kctl -n continuum get secret continuum-adapter-token -o jsonpath='{.data.token}' | base64 -d)
  kubeconfig "$DIR/sa.kubeconfig" "$url" "$DIR/pki/ca.crt" - "$token"

  local i
  for i in $(seq 1 "$nodes"); do
    if [ $((i % 2)) = 0 ]; then
      add_node "kwok-node-$i" cpu=8 memory=32Gi gpu=1 label:nvidia.com/gpu.present=true
    else
      add_node "kwok-node-$i" cpu=8 memory=32Gi
    fi
  done
  for i in $(seq 1 "$nodes"); do
    wait_until 60 "node kwok-node-$i did not become Ready" "$DIR/log/kwok.log" node_ready "kwok-node-$i" True
  done
  # the default ServiceAccount must exist before pods can be created in a namespace
  wait_until 30 "the ServiceAccount controller did not create continuum/default" \
    "$DIR/log/kube-controller-manager.log" kctl -n continuum get serviceaccount default

  cat >"$DIR/env" <<EOF
KUBECONFIG=$DIR/admin.kubeconfig
KUBE_SA_KUBECONFIG=$DIR/sa.kubeconfig
KUBE_APISERVER_URL=$url
ETCD_URL=http://127.0.0.1:$ETCD_PORT
KUBE_VERSION=$KUBE_VERSION
KUBE_BIN=$BIN
EOF
}

stop() {
  [ -d "$DIR/run" ] || return 0
  stop_control_plane
  stop_pid "$DIR/run/etcd.pid"
}

offline() {  # offline NAME true|false
  if [ "$2" = true ]; then
    kctl annotate --overwrite node "$1" continuum.dev/kwok-offline=true >/dev/null
    wait_until 30 "node $1 did not become NotReady" "$DIR/log/kwok.log" node_ready "$1" False
  else
    kctl annotate node "$1" continuum.dev/kwok-offline- >/dev/null
    wait_until 30 "node $1 did not become Ready" "$DIR/log/kwok.log" node_ready "$1" True
  fi
}

cmd=${1:-}
case "$cmd" in
  build) build; exit 0 ;;
  built) built || die "not built yet: run deploy/dev/kube.sh build (or make test-deps)"; exit 0 ;;
  start|stop|status|add-node|node-offline|node-online|kubectl|stop-control-plane|start-control-plane)
    [ $# -ge 2 ] || die "usage: $0 $cmd DIR ..."; DIR=$2; shift 2 ;;
  *) die "usage: $0 build | start DIR [--nodes N] | stop DIR | status DIR | add-node DIR NAME [cpu=N memory=Q pods=N gpu=N arch=A label:K=V taint:K=V:EFFECT]... | node-offline DIR NAME | node-online DIR NAME | stop-control-plane DIR | start-control-plane DIR | kubectl DIR ARGS..." ;;
esac
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  status) alive "$DIR/run/kube-apiserver.pid" ;;
  add-node) [ $# -ge 1 ] || die "usage: $0 add-node DIR NAME [KEY=VALUE]..."
    add_node "$@"; wait_until 60 "node $1 did not become Ready" "$DIR/log/kwok.log" node_ready "$1" True ;;
  node-offline) [ $# -ge 1 ] || die "usage: $0 node-offline DIR NAME"; offline "$1" true ;;
  node-online) [ $# -ge 1 ] || die "usage: $0 node-online DIR NAME"; offline "$1" false ;;
  kubectl) kctl "$@" ;;
  stop-control-plane) stop_control_plane ;;
  start-control-plane) DIR=$(cd "$DIR" && pwd); start_etcd; start_control_plane ;;
esac
