#!/usr/bin/env bash
# Create a kind cluster, build and load the Fluxbee image, and helm-install the operator with
# one hive.  Idempotent.  Needs docker and kind; uses `helm` if installed, else helm-sdkpy.
#   KIND_CLUSTER (fluxbee-e2e)  FLUXBEE_IMAGE (fluxbee/fluxbee:e2e)  FLUXBEE_NAMESPACE (fluxbee)
set -euo pipefail
cd "$(dirname "$0")/.."
cluster="${KIND_CLUSTER:-fluxbee-e2e}"
image="${FLUXBEE_IMAGE:-fluxbee/fluxbee:e2e}"
ns="${FLUXBEE_NAMESPACE:-fluxbee}"
for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "kind-up: $tool is not installed" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "kind-up: no docker engine answers" >&2; exit 2; }

if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    cat <<CFG | kind create cluster --name "$cluster" --wait 120s --config -
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
CFG
fi
kubectl config use-context "kind-$cluster" >/dev/null
kubectl label nodes --all fluxbee.io/hive=true --overwrite >/dev/null

KIND_CLUSTER="$cluster" hack/build-image.sh "$image"

repo="${image%:*}"; tag="${image##*:}"
values=(--set "image.repository=$repo" --set "image.tag=$tag" --set image.pullPolicy=Never
        --set hive.enabled=true --set hive.name=e2e
        --set "hive.nodeSelector.fluxbee\.io/hive=true")
if command -v helm >/dev/null; then
    helm upgrade --install fluxbee charts/fluxbee -n "$ns" --create-namespace "${values[@]}" --wait --timeout 5m
else
    [[ -x .venv-helm/bin/python ]] || hack/check-chart.sh >/dev/null
    (cd / && "$OLDPWD/.venv-helm/bin/python" -I - "$OLDPWD/charts/fluxbee" "$ns" "$repo" "$tag" <<'PY'
import asyncio, sys
import helm_sdkpy
chart, ns, repo, tag = sys.argv[1:5]
values = {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
          "hive": {"enabled": True, "name": "e2e", "nodeSelector": {"fluxbee.io/hive": "true"}}}
config = helm_sdkpy.Configuration(namespace=ns)
try:
    asyncio.run(helm_sdkpy.Upgrade(config).run("fluxbee", chart, values=values, wait=True, timeout=300))
except helm_sdkpy.HelmError:
    asyncio.run(helm_sdkpy.Install(config).run("fluxbee", chart, values=values, wait=True,
                                               timeout=300, create_namespace=True))
print("helm-sdkpy: release fluxbee installed")
PY
    )
fi
kubectl -n "$ns" rollout status deploy/fluxbee-operator --timeout=180s
kubectl -n "$ns" wait hive/e2e --for=jsonpath='{.status.phase}'=Ready --timeout=300s
echo "kind-up: cluster $cluster ready; hive e2e in namespace $ns"
