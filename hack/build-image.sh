#!/usr/bin/env bash
# Build the single Fluxbee image: hack/build-image.sh [IMAGE] (default fluxbee/fluxbee:dev).
# With KIND_CLUSTER set, also load it into that kind cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-${FLUXBEE_IMAGE:-fluxbee/fluxbee:dev}}"
if ! command -v docker >/dev/null 2>&1; then
    echo "build-image: docker is not installed" >&2
    exit 2
fi
if ! docker info >/dev/null 2>&1; then
    echo "build-image: docker is installed but no engine answers (is the daemon running?)" >&2
    exit 2
fi
docker build -t "$image" .
echo "built $image"
if [[ -n "${KIND_CLUSTER:-}" ]]; then
    kind load docker-image "$image" --name "$KIND_CLUSTER"
    echo "loaded $image into kind cluster $KIND_CLUSTER"
fi
