# One image for every Fluxbee process in a cluster:
#   fluxbee router …      the hive router sidecar
#   fluxbee operator      the kopf operator
#   fluxbee admin …       the admin HTTP API
#   fluxbee identity serve   SY.identity
#   fluxbee node echo|listener          the built-in example node runtimes
#   opa build -t wasm …   the policy compiler (on PATH, so policies compile to WebAssembly)
# Build: hack/build-image.sh [TAG]
ARG PYTHON=3.11
ARG GO=1.26

# The policy compiler (`opa build -t wasm`), built from source at the version pinned in
# hack/tools/opa (the same pin hack/build-tools.sh uses), static, without build paths.
FROM golang:${GO} AS opa
WORKDIR /src
COPY hack/tools/opa/ ./
RUN CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o /out/opa github.com/open-policy-agent/opa \
 && /out/opa version

FROM python:${PYTHON}-slim AS build
WORKDIR /src
# A C compiler for the router's fast path and the SDK's frame builder (dataplane/_speedups.c).
# Without it pip would still install, silently, the pure-Python path, with a fraction of the
# throughput (BENCHMARKS.md), so the build below refuses an image without the extension.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# The source tree has an `operator/` folder: never let the working directory onto sys.path.
ENV PYTHONSAFEPATH=1
RUN python -m venv /opt/fluxbee
ENV PATH=/opt/fluxbee/bin:$PATH
COPY pyproject.toml setup.py README.md ./
COPY fluxbee ./fluxbee
COPY dataplane ./dataplane
COPY operator ./operator
# The extras of the commands the pods run: the operator, the admin API's cluster backend, the
# router's probes (--metrics-addr) and SY.identity (`fluxbee identity serve`, always given a database
# URL in a cluster, so not [postgres]).  Not [local] or [bench].
RUN pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir '.[operator,admin,metrics,identity]' \
 && python -c "import fluxbee.operator.app, fluxbee.admin.main_kubernetes, fluxbee.dataplane.router.probes, fluxbee.identity.service" \
 && python -c "from fluxbee.dataplane import _native as n; assert n.IMPLEMENTATION == 'c', n.IMPLEMENTATION"

FROM python:${PYTHON}-slim
LABEL org.opencontainers.image.title="fluxbee" \
      org.opencontainers.image.description="Kubernetes-native router for AI agents: router, operator, admin API, node runner" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/fluxbee /opt/fluxbee
COPY --from=opa /out/opa /usr/local/bin/opa
ENV PATH=/opt/fluxbee/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    FLUXBEE_RUN_DIR=/var/run/fluxbee
# The router and nodes share /var/run/fluxbee (a hostPath) and /dev/shm (hostIPC) on each host.
# They run as root by default so that the hostPath socket directory is writable whatever its
# owner on the host; set runAsUser in the chart if the host directory is prepared for it.
RUN mkdir -p /var/run/fluxbee
ENTRYPOINT []
CMD ["fluxbee", "--help"]
