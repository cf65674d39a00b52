#!/usr/bin/env bash
# Build the real Kubernetes tools the integration tests run, from source, with Go and the Go module
# proxy: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and helm; and
# opa, the policy compiler (`opa build -t wasm`).
#
#   hack/build-tools.sh            build what is missing; print the bin directory on stdout
#   hack/build-tools.sh --check    print the bin directory if every tool is built, else exit 1
#   hack/build-tools.sh --opa      build opa alone if it is missing; print the path of the binary
#
# Versions are pinned in one place: the go.mod/go.sum files under hack/tools/ (one module per
# upstream project, because etcd and Kubernetes pin their sibling modules with relative `replace`
# lines that only a module of ours can restate). The binaries are cached outside the work tree,
# in $FLUXBEE_TOOLS_CACHE (default ~/.cache/fluxbee-tools), in a folder named after a digest of
# those files and the Go version, so a fresh clone reuses them and a version bump rebuilds.
# opa has a cache folder and digest of its own (hack/tools/opa only), so pinning or bumping it never
# changes the digest of the Kubernetes build (a cold one takes about 15 minutes); the bin directory
# printed holds a symbolic link to it.
# Idempotent; a half-finished build never leaves a tool in place (each binary is linked to a
# temporary name, then renamed). Without Go it exits 3 with the reason on stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="$here/tools"

command -v go >/dev/null 2>&1 || { echo "build-tools: go is not installed" >&2; exit 3; }

go_version="$(go env GOVERSION)"
# The Kubernetes group's digest covers exactly these module folders, in this order (the order a
# glob gave before opa joined): a new folder under hack/tools/ must not change it.
k8s_dirs=(etcd helm kubernetes kwok)
key="$( { echo "$go_version"; for d in "${k8s_dirs[@]}"; do cat "$tools/$d/go.mod"; done
          for d in "${k8s_dirs[@]}"; do cat "$tools/$d/go.sum"; done; } | sha256sum | cut -c1-16)"
opa_key="$( { echo "$go_version"; cat "$tools/opa/go.mod" "$tools/opa/go.sum" "$tools/opa/tools.go"; } \
            | sha256sum | cut -c1-16)"
cache="${FLUXBEE_TOOLS_CACHE:-$HOME/.cache/fluxbee-tools}"
bin="$cache/$key/bin"
opa_bin="$cache/opa-$opa_key/bin"

build_opa() {  # the pinned opa into its own cache folder, if it is not there yet
    [[ ! -x "$opa_bin/opa" ]] || return 0
    echo "build-tools: building opa into $opa_bin with $go_version" >&2
    local start=$SECONDS tmp="$opa_bin/.opa.tmp.$$"
    mkdir -p "$opa_bin"
    (cd "$tools/opa" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$tmp" github.com/open-policy-agent/opa)
    mv -f "$tmp" "$opa_bin/opa"
    echo "build-tools: opa built in $((SECONDS - start)) s" >&2
}

if [[ "${1:-}" == "--opa" ]]; then
    build_opa
    echo "$opa_bin/opa"
    exit 0
fi

# name  module-dir  package
TOOLS=(
    "etcd                    etcd        go.etcd.io/etcd/server/v3"
    "kube-apiserver          kubernetes  k8s.io/kubernetes/cmd/kube-apiserver"
    "kube-controller-manager kubernetes  k8s.io/kubernetes/cmd/kube-controller-manager"
    "kube-scheduler          kubernetes  k8s.io/kubernetes/cmd/kube-scheduler"
    "kubectl                 kubernetes  k8s.io/kubernetes/cmd/kubectl"
    "kwok                    kwok        sigs.k8s.io/kwok/cmd/kwok"
    "helm                    helm        helm.sh/helm/v4/cmd/helm"
)

# The Kubernetes binaries report the version they were built from (`kubectl version`, the API
# server's /version, which Helm checks against a chart's kubeVersion): upstream stamps it at link
# time, and without the stamp they say v0.0.0-master. A binary whose stamp file does not name the
# pinned version (built before stamping, or for another version) is rebuilt.
k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$tools/kubernetes/go.mod")"
k8s_minor="$(cut -d. -f2 <<<"$k8s_version")"
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
    k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

stamp_ok() {  # NAME DIR: the binary exists and, for Kubernetes, carries the pinned version
    [[ -x "$bin/$1" ]] || return 1
    [[ "$2" != kubernetes ]] || [[ "$(cat "$bin/.$1.version" 2>/dev/null)" == "$k8s_version" ]]
}

missing=()
for line in "${TOOLS[@]}"; do
    read -r name dir _ <<<"$line"
    stamp_ok "$name" "$dir" || missing+=("$line")
done
# kwok needs "stages" (how fake nodes and Pods change state); the pinned kwok module ships them.
stages="$bin/kwok-stages.yaml"
[[ -s "$stages" ]] || missing+=("kwok-stages.yaml - -")
opa_missing=0
[[ -x "$opa_bin/opa" ]] || opa_missing=1
# The link in the shared bin directory must point at the pinned build.
[[ "$(readlink "$bin/opa" 2>/dev/null)" == "$opa_bin/opa" ]] || opa_missing=1

if [[ "${1:-}" == "--check" ]]; then
    [[ ${#missing[@]} -eq 0 && $opa_missing -eq 0 ]] || exit 1
    echo "$bin"
    exit 0
fi

mkdir -p "$bin"
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "build-tools: building ${#missing[@]} tool(s) into $bin with $go_version (a cold build takes a while)" >&2
fi
for line in "${missing[@]}"; do
    read -r name dir pkg <<<"$line"
    if [[ "$name" == kwok-stages.yaml ]]; then
        # Nodes: initialise, then heartbeat through leases (stay Ready); Pods: the fast lifecycle.
        src="$(cd "$tools/kwok" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
        for f in "$src"/node/fast/node-initialize.yaml "$src"/node/heartbeat-with-lease/*.yaml "$src"/pod/fast/pod-*.yaml; do
            echo "---"; cat "$f"
        done > "$stages.tmp.$$"
        mv -f "$stages.tmp.$$" "$stages"
        continue
    fi
    start=$SECONDS
    tmp="$bin/.$name.tmp.$$"
    # -trimpath: no paths of the build machine in the binaries; CGO off: static, like upstream releases.
    ldflags=""
    [[ "$dir" != kubernetes ]] || ldflags="$k8s_ldflags"
    (cd "$tools/$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg")
    mv -f "$tmp" "$bin/$name"
    [[ "$dir" != kubernetes ]] || echo "$k8s_version" > "$bin/.$name.version"
    echo "build-tools: $name built in $((SECONDS - start)) s" >&2
done
build_opa
if [[ "$(readlink "$bin/opa" 2>/dev/null)" != "$opa_bin/opa" ]]; then
    ln -sfn "$opa_bin/opa" "$bin/.opa.link.$$"
    mv -fT "$bin/.opa.link.$$" "$bin/opa"
fi
echo "$bin"
