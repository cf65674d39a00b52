#!/usr/bin/env bash
# Delete the kind cluster made by hack/kind-up.sh.
set -euo pipefail
cluster="${KIND_CLUSTER:-fluxbee-e2e}"
command -v kind >/dev/null || { echo "kind-down: kind is not installed" >&2; exit 2; }
kind delete cluster --name "$cluster"
