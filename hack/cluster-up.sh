#!/usr/bin/env bash
# Start a real, local Kubernetes control plane on loopback, built from source (hack/build-tools.sh):
# etcd, kube-apiserver (its own CA and service-account keys, default admission plugins, RBAC on),
# kube-controller-manager, kube-scheduler, and kwok running 3 fake nodes that take Pods to Running.
#
#   hack/cluster-up.sh DIR     start it; all state, logs and pids under DIR
#   source DIR/env             puts the built tools on PATH and sets KUBECONFIG=DIR/kubeconfig
#   hack/cluster-down.sh DIR   stop everything this started
#
# Returns once the API answers and the 3 nodes are Ready (exit 0), or prints the failing
# component's log tail and exits non-zero (after stopping what it started). Ports are chosen free
# at start, so several clusters can run side by side. Nothing listens beyond 127.0.0.1.
# Environment: FLUXBEE_CLUSTER_NODES (3), FLUXBEE_CLUSTER_TIMEOUT (120 s),
# FLUXBEE_CLUSTER_NODE_PODS (110: the Pods each fake node accepts, as a kubelet's --max-pods;
# hack/bench-operator-real.py raises it, since 500 FluxNode Pods do not fit on 3 nodes of 110).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
dir="$(cd "$1" && pwd)"
nodes="${FLUXBEE_CLUSTER_NODES:-3}"
timeout="${FLUXBEE_CLUSTER_TIMEOUT:-120}"
node_pods="${FLUXBEE_CLUSTER_NODE_PODS:-110}"
[[ "$node_pods" =~ ^[1-9][0-9]*$ ]] || { echo "cluster-up: FLUXBEE_CLUSTER_NODE_PODS must be a positive integer, not '$node_pods'" >&2; exit 2; }

if [[ -s "$dir/pids" ]]; then
    echo "cluster-up: $dir already has a running cluster (run hack/cluster-down.sh $dir first)" >&2
    exit 2
fi

bin="$("$here/build-tools.sh")"
mkdir -p "$dir/pki" "$dir/logs" "$dir/etcd"
: > "$dir/pids"

fail() {
    echo "cluster-up: $1" >&2
    if [[ -n "${2:-}" && -f "$dir/logs/$2.log" ]]; then
        echo "--- last lines of $dir/logs/$2.log:" >&2
        tail -n 20 "$dir/logs/$2.log" >&2
    fi
    "$here/cluster-down.sh" "$dir" >&2 || true
    exit 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---- certificates -------------------------------------------------------------------------
pki="$dir/pki"
ssl() { openssl "$@" >/dev/null 2>&1; }
ssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=fluxbee-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt"
# A client (or serving) certificate signed by the CA: name, subject, [extensions file].
issue() {
    local name="$1" subject="$2" ext="${3:-}"
    ssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$pki/$name.key" -out "$pki/$name.csr"
    if [[ -n "$ext" ]]; then
        ssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
            -days 30 -out "$pki/$name.crt" -extfile "$ext"
    else
        ssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
            -days 30 -out "$pki/$name.crt"
    fi
}
cat > "$pki/apiserver.ext" <<EXT
subjectAltName = IP:127.0.0.1, IP:10.96.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage = serverAuth
EXT
issue apiserver "/CN=kube-apiserver" "$pki/apiserver.ext"
issue admin "/O=system:masters/CN=fluxbee-admin"
issue controller-manager "/CN=system:kube-controller-manager"
issue scheduler "/CN=system:kube-scheduler"
# kwok plays the kubelet of every fake node: it writes node and pod status.
issue kwok "/O=system:masters/CN=kwok"
ssl genrsa -out "$pki/sa.key" 2048
ssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
[[ -s "$pki/admin.crt" && -s "$pki/sa.pub" ]] || fail "openssl could not create the certificates"

etcd_port="$(free_port)"; etcd_peer="$(free_port)"; api_port="$(free_port)"
cm_port="$(free_port)"; sched_port="$(free_port)"; kwok_port="$(free_port)"
server="https://127.0.0.1:$api_port"

kubeconfig() {  # file user
    cat > "$1" <<CFG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$pki/$2.crt", client-key: "$pki/$2.key"}
contexts:
- name: local
  context: {cluster: local, user: $2, namespace: default}
current-context: local
CFG
}
kubeconfig "$dir/kubeconfig" admin
kubeconfig "$dir/controller-manager.kubeconfig" controller-manager
kubeconfig "$dir/scheduler.kubeconfig" scheduler
kubeconfig "$dir/kwok.kubeconfig" kwok

# ---- processes ------------------------------------------------------------------------------
start() {  # name command...
    local name="$1"; shift
    setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    echo "$name $!" >> "$dir/pids"
}

start etcd "$bin/etcd" --name local --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer" --listen-metrics-urls "" \
    --quota-backend-bytes 2147483648 --unsafe-no-fsync

start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer "https://kubernetes.default.svc.cluster.local" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode Node,RBAC \
    --endpoint-reconciler-type none \
    --allow-privileged=true

cat > "$dir/env" <<ENV
# source this file: the tools built by hack/build-tools.sh and this cluster's admin kubeconfig
export PATH="$bin:\$PATH"
export KUBECONFIG="$dir/kubeconfig"
ENV

kubectl() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
deadline=$((SECONDS + timeout))
alive() {
    local name pid
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || fail "$name exited during start-up" "$name"
    done < "$dir/pids"
}
until kubectl get --raw /readyz >/dev/null 2>&1; do
    alive
    (( SECONDS < deadline )) || fail "the API server did not become ready in ${timeout} s" kube-apiserver
    sleep 0.5
done

# The controllers log in with RBAC roles the API server bootstraps: start them once it is ready.
start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$cm_port" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials --leader-elect=false \
    --controllers '*,-node-ipam-controller'

start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false

start kwok "$bin/kwok" --kubeconfig "$dir/kwok.kubeconfig" --config "$bin/kwok-stages.yaml" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --server-address "127.0.0.1:$kwok_port" --node-ip 127.0.0.1 --node-lease-duration-seconds 40

for i in $(seq 0 $((nodes - 1))); do
    cat <<NODE
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "$node_pods"}
  capacity: {cpu: "32", memory: 256Gi, pods: "$node_pods"}
NODE
done | kubectl apply -f - >/dev/null || fail "could not create the fake nodes" kube-apiserver

until [[ "$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True)" -ge "$nodes" ]]; do
    alive
    (( SECONDS < deadline )) || fail "the $nodes kwok nodes did not become Ready in ${timeout} s" kwok
    sleep 0.5
done
# The default ServiceAccount appears once the controller-manager runs; Pods need it.
until kubectl get serviceaccount default >/dev/null 2>&1; do
    alive
    (( SECONDS < deadline )) || fail "the controller-manager did not create the default ServiceAccount" kube-controller-manager
    sleep 0.5
done
echo "cluster-up: API $server, $nodes nodes Ready; source $dir/env" >&2
