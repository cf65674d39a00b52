"""Hive → DaemonSet, ConfigMap, Services, admin Deployment (pure builders, no I/O).

One hive pod per selected host: the router sidecar owns ``/dev/shm`` regions (``hostIPC``)
and the socket directory on a hostPath that node Pods on the same host mount too.  The hive
config is a mounted ConfigMap, so route/VPN edits reach the router by file reload, never by a
pod restart: nothing derived from the routes is put in the pod template.

The admin API is not part of the hive pods: it is one Deployment (``spec.admin.replicas``) and
its Service.  Its pods run on hosts that run a hive pod (required pod affinity) with the same
host IPC and socket hostPath, so each reaches the router of its own host as ``SY.admin``; its
deployment and drift history lives in a ConfigMap the admin processes share
(``fluxbee.admin.kube_history``), so a replica or a replacement pod on another host sees it all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from fluxbee.dataplane import env as E
from fluxbee.dataplane.names import ADMIN_NODE, IDENTITY_NODE
from fluxbee.models import Hive
from fluxbee.operator import labels as L
from fluxbee.operator.hive.links import (
    LINK_VOLUME_MOUNT,
    MESH_LABEL,
    MESH_PORT_NAME,
    link_volume,
    mesh_args,
)
from fluxbee.operator.settings import OperatorSettings

CONFIG_KEY = "hive.yaml"
CONFIG_MOUNT = "/etc/fluxbee/hive"
SDK_HIVE_KEY = "sdk-hive.yaml"
"""The ``hive.yaml`` nodes built with the original SDKs read from their config dir (``hive_id``, ``role``);
FluxNode Pods mount it at :data:`SDK_HIVE_FILE` (``fluxbee.operator.fluxnode.build``)."""
SDK_CONFIG_DIR = "/etc/fluxbee"
SDK_HIVE_FILE = f"{SDK_CONFIG_DIR}/hive.yaml"
RUN_DIR = "/var/run/fluxbee"

# The credential contract between the operator, the router and the node SDK: a process proves a
# claimed node name with a token (64 hex chars) from the file named by CREDENTIAL_ENV; the router
# (``--claims-dir``) holds one file per claimed name with the token's sha256, never the token.
CREDENTIAL_ENV = E.NODE_CREDENTIAL_FILE.name
# Not under RUN_DIR: that is a hostPath, and a mount inside it would leave a folder on every host.
CREDENTIAL_DIR = f"{SDK_CONFIG_DIR}/credential"
CREDENTIAL_KEY = "token"
CREDENTIAL_FILE = f"{CREDENTIAL_DIR}/{CREDENTIAL_KEY}"
CLAIMS_MOUNT = "/etc/fluxbee/claims"
# The hive's routing policy: a ConfigMap the Policy's reconcile writes (``fluxbee.operator.policy``),
# mounted optional (a hive without a Policy starts all the same) and read by ``router --policy-dir``.
POLICY_MOUNT = "/etc/fluxbee/policy"
POLICY_ARTEFACT_KEY = "artefact"
POLICY_VERSION_KEY = "version"
POLICY_SHA256_KEY = "sha256"
_TOKEN_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HiveNames:
    daemon_set: str
    config_map: str
    gateway_service: str
    admin_service: str
    admin_deployment: str
    admin_history: str
    admin_secret: str
    claims_config_map: str
    system_credentials: str


def names(hive: Hive) -> HiveNames:
    base = hive.metadata.name
    return HiveNames(
        daemon_set=f"{base}-hive",
        config_map=f"{base}-hive-config",
        gateway_service=f"{base}-gateway",
        admin_service=f"{base}-admin",
        admin_deployment=f"{base}-admin",
        admin_history=f"{base}-admin-history",
        admin_secret=hive.spec.admin.token_secret or f"{base}-admin-token",
        claims_config_map=claims_config_map_name(base),
        system_credentials=f"{base}-system-credentials",
    )


def policy_config_map_name(hive_name: str) -> str:
    """The hive's policy ConfigMap: the artefact its routers run, written by the Policy's reconcile."""
    return f"{hive_name}-policy"


def claims_config_map_name(hive_name: str) -> str:
    """The hive's claims ConfigMap: one key per claimed node name, mounted into the router."""
    return f"{hive_name}-claims"


IDENTITY_REPLICA_NODE = "SY.identity.replica"
SYSTEM_NODES = (ADMIN_NODE, IDENTITY_NODE, IDENTITY_REPLICA_NODE)
"""Every SY.* name a hive's pods can run (its claims key is the Hive's, never a FluxNode's)."""


def identity_primary(hive: Hive) -> bool:
    """Whether this hive runs SY.identity's primary (a Deployment with PostgreSQL)."""
    return hive.spec.identity.enabled and hive.spec.role == "motherbee"


def identity_primary_hive(hive: Hive) -> str | None:
    """The hive whose SY.identity the replicas follow: a motherbee's own, a worker's ``primaryHive``."""
    if not hive.spec.identity.enabled:
        return None
    return hive.hive_id if hive.spec.role == "motherbee" else hive.spec.identity.primary_hive


def identity_replica_node(hive: Hive) -> str:
    """The replica's name: on a worker it is the hive's SY.identity (answering NOT_PRIMARY to writes,
    as ``fluxbee up`` runs it); on a motherbee SY.identity is the primary, so the replicas take
    another name and writes addressed to SY.identity never land on one."""
    return IDENTITY_REPLICA_NODE if hive.spec.role == "motherbee" else IDENTITY_NODE


def system_nodes(hive: Hive) -> list[str]:
    """The SY.* names the hive's pods run, each proven by a token of the system-credentials Secret."""
    out = [ADMIN_NODE] if hive.spec.admin.enabled else []
    if identity_primary(hive):
        out.append(IDENTITY_NODE)
    if identity_primary_hive(hive) is not None:
        out.append(identity_replica_node(hive))
    return sorted(set(out))


def credential_volume(system_node: str) -> str:
    """Name of the volume that carries one SY.* container's token."""
    return f"credential-{system_node.lower().replace('.', '-')}"


def credential_sha256(token: str) -> str:
    """What the router keeps of a credential: lowercase hex sha256 of the token's UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


def claim_value(hashes: Iterable[str]) -> str:
    """One claims-file body: ``{"credential_sha256": [...]}`` (the router's format)."""
    return json.dumps({"credential_sha256": sorted(set(hashes))}, sort_keys=True)


def claim_hashes(text: object) -> list[str]:
    """The credential hashes of one claims-file body (none if it is not the router's format)."""
    if not isinstance(text, str):
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    hashes = value.get("credential_sha256") if isinstance(value, dict) else None
    return [h for h in hashes if isinstance(h, str)] if isinstance(hashes, list) else []


def claims_patch(key: str, hashes: Iterable[str]) -> dict[str, Any]:
    """JSON merge patch of one claims key: other keys (other nodes' claims) are left as they are;
    no hashes left removes the key (``null``), so the name is no longer provable at all."""
    wanted = sorted(set(hashes))
    return {"data": {key: claim_value(wanted) if wanted else None}}


def secret_tokens(secret: Mapping[str, Any]) -> dict[str, str]:
    """The well-formed tokens of a credential Secret, by key (``data`` is base64; ``stringData``
    is what a create may still show before the API server folds it into ``data``)."""
    out: dict[str, str] = {}
    for key, raw in (secret.get("data") or {}).items():
        try:
            text = base64.b64decode(str(raw), validate=True).decode("ascii").strip()
        except (binascii.Error, ValueError):
            continue
        if _TOKEN_RE.match(text):
            out[str(key)] = text
    for key, text in (secret.get("stringData") or {}).items():
        if isinstance(text, str) and _TOKEN_RE.match(text.strip()) and key not in out:
            out[str(key)] = text.strip()
    return out


def credential_data(tokens: Mapping[str, str]) -> dict[str, str]:
    """Secret ``data`` holding ``tokens`` (base64, as the API server stores it)."""
    return {k: base64.b64encode(v.encode()).decode() for k, v in sorted(tokens.items())}


def build_claims_config_map(hive: Hive, namespace: str, data: Mapping[str, str]) -> dict[str, Any]:
    """The claims ConfigMap with ``data``.  Owned by the Hive, whoever creates it first: the
    Hive's reconcile writes its system nodes' keys, each FluxNode's reconcile merges in its own."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names(hive).claims_config_map, "namespace": namespace, "labels": _labels(hive)},
        "data": dict(data),
    }


def build_system_claims(hive: Hive, namespace: str, hashes: Mapping[str, str]) -> dict[str, Any]:
    """The claims ConfigMap as the Hive's reconcile wants it: its system nodes' keys."""
    return build_claims_config_map(hive, namespace, {name: claim_value([h]) for name, h in sorted(hashes.items())})


def build_system_credentials(hive: Hive, namespace: str, tokens: Mapping[str, str]) -> dict[str, Any]:
    """The tokens of the hive pods' SY.* containers, one key per name (created once, never
    rotated by the operator: a new token would lock out the running containers until restart)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names(hive).system_credentials, "namespace": namespace, "labels": _labels(hive)},
        "type": "Opaque",
        "data": credential_data(tokens),
    }


def pod_selector(hive_name: str) -> dict[str, str]:
    """Labels selecting a hive's pods (stable: DaemonSet selectors are immutable)."""
    return {L.HIVE: hive_name, L.COMPONENT: "hive"}


def admin_pod_selector(hive_name: str) -> dict[str, str]:
    """Labels selecting a hive's admin API pods (never the hive pods: the gateway Service must
    not send traffic to them, nor the admin Service to a router)."""
    return {L.HIVE: hive_name, L.COMPONENT: ADMIN_COMPONENT}


ADMIN_COMPONENT = "admin"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
ADMIN_EVICTION_SECONDS = 30
"""How long an admin pod stays on a host that stopped answering before it is evicted (and replaced)."""


def labels(hive: Hive, component: str = "hive") -> dict[str, str]:
    """The labels of every object the operator makes for ``hive``."""
    return _labels(hive, component)


def _labels(hive: Hive, component: str = "hive") -> dict[str, str]:
    return {**L.common(component, hive.metadata.name), L.HIVE: hive.metadata.name}


def router_config(hive: Hive, version: int) -> dict[str, Any]:
    """The file the router reads (and reloads on change) via ``--config``."""
    return {
        "hive_id": hive.hive_id,
        "router_name": hive.spec.router_name,
        "version": version,
        "routes": [r.model_dump(mode="json") for r in hive.spec.routes],
        "vpns": [v.model_dump(mode="json") for v in hive.spec.vpns],
    }


def sdk_hive_yaml(hive: Hive) -> str:
    """What the original SDKs need before they connect: ``hive_id`` (they append ``@hive_id``) and ``role``."""
    return yaml.safe_dump({"hive_id": hive.hive_id, "role": hive.spec.role}, sort_keys=False)


def build_config_map(hive: Hive, namespace: str, version: int) -> dict[str, Any]:
    text = yaml.safe_dump(router_config(hive, version), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names(hive).config_map,
            "namespace": namespace,
            "labels": _labels(hive),
        },
        "data": {CONFIG_KEY: text, SDK_HIVE_KEY: sdk_hive_yaml(hive)},
    }


def router_container(hive: Hive, namespace: str, settings: OperatorSettings, image: str,
                     extra_args: list[str] | None = None,
                     extra_ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A router of the hive: meshing with the others, presenting the hive's certificate."""
    port = settings.metrics_port
    container: dict[str, Any] = {
        "name": "router",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "fluxbee",
            "router",
            "--hive-id",
            hive.hive_id,
            "--run-dir",
            RUN_DIR,
            "--config",
            f"{CONFIG_MOUNT}/{CONFIG_KEY}",
            "--router-name",
            hive.spec.router_name,
            "--scheduling",
            hive.spec.router_scheduling,
            *(("--busy-poll-us", str(hive.spec.router_busy_poll_us)) if hive.spec.router_busy_poll_us else ()),
            "--metrics-addr",
            f"0.0.0.0:{port}",
            "--claims-dir",
            CLAIMS_MOUNT,
            "--policy-dir",
            POLICY_MOUNT,
            *mesh_args(hive, namespace),
            *(extra_args or []),
        ],
        "env": [
            {"name": E.RUN_DIR.name, "value": RUN_DIR},
            {"name": E.HIVE_ID.name, "value": hive.hive_id},
        ],
        "ports": [
            {"name": MESH_PORT_NAME, "containerPort": hive.spec.mesh_port, "protocol": "TCP"},
            *(extra_ports or []),
            {"name": "metrics", "containerPort": port, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "volumeMounts": [
            {"name": "sockets", "mountPath": RUN_DIR},
            {"name": "hive-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "claims", "mountPath": CLAIMS_MOUNT, "readOnly": True},
            {"name": "policy", "mountPath": POLICY_MOUNT, "readOnly": True},
            dict(LINK_VOLUME_MOUNT),
        ],
    }
    if hive.spec.resources is not None:
        container["resources"] = hive.spec.resources.model_dump(exclude_defaults=True)
    return container


def _admin_container(hive: Hive, settings: OperatorSettings, image: str) -> dict[str, Any]:
    admin = hive.spec.admin
    return {
        "name": "admin",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "fluxbee",
            "admin",
            "--listen",
            f"0.0.0.0:{admin.port}",
            "--backend",
            "kubernetes",
        ],
        "env": [
            {"name": E.RUN_DIR.name, "value": RUN_DIR},
            {"name": E.HIVE_ID.name, "value": hive.hive_id},
            {"name": E.HIVE_RESOURCE.name, "value": hive.metadata.name},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": E.ADMIN_TOKEN.name,
                "valueFrom": {"secretKeyRef": {"name": names(hive).admin_secret, "key": "token"}},
            },
            {"name": CREDENTIAL_ENV, "value": CREDENTIAL_FILE},
        ],
        "ports": [{"name": "admin", "containerPort": admin.port, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "admin"}, "periodSeconds": 5},
        "volumeMounts": [
            {"name": "sockets", "mountPath": RUN_DIR},
            {"name": credential_volume(ADMIN_NODE), "mountPath": CREDENTIAL_DIR, "readOnly": True},
        ],
    }


def _identity_replica_container(hive: Hive, settings: OperatorSettings, image: str,
                                primary_hive: str) -> dict[str, Any]:
    """SY.identity as a replica of the primary's: it follows the primary over the links and
    writes this host's identity region (the hive pod shares the host's IPC namespace)."""
    node = identity_replica_node(hive)
    return {
        "name": "identity-replica",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["fluxbee", "identity", "serve", "--hive-id", hive.hive_id, "--run-dir", RUN_DIR,
                    "--primary", f"{IDENTITY_NODE}@{primary_hive}", "--node-name", node],
        "env": [
            {"name": "FLUXBEE_RUN_DIR", "value": RUN_DIR},
            {"name": "FLUXBEE_HIVE_ID", "value": hive.hive_id},
            {"name": CREDENTIAL_ENV, "value": CREDENTIAL_FILE},
        ],
        "volumeMounts": [
            {"name": "sockets", "mountPath": RUN_DIR},
            {"name": credential_volume(node), "mountPath": CREDENTIAL_DIR, "readOnly": True},
        ],
    }


def system_credential_volume(hive: Hive, name: str) -> dict[str, Any]:
    """One SY.* container's token (its own key of the system-credentials Secret) as ``token``."""
    return {"name": credential_volume(name),
            "secret": {"secretName": names(hive).system_credentials,
                       "items": [{"key": name, "path": CREDENTIAL_KEY}]}}


def placement(hive: Hive, pod_spec: dict[str, Any]) -> None:
    """The hive's host selection (``spec.nodeSelector``, ``spec.tolerations``) on ``pod_spec``."""
    if hive.spec.node_selector:
        pod_spec["nodeSelector"] = dict(hive.spec.node_selector)
    if hive.spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in hive.spec.tolerations]


def sockets_volume(hive: Hive) -> dict[str, Any]:
    return {"name": "sockets", "hostPath": {"path": hive.host_socket_dir, "type": "DirectoryOrCreate"}}


def policy_volume(hive: Hive) -> dict[str, Any]:
    """Every router of the hive mounts its policy ConfigMap (optional: absent until a Policy delivers)."""
    return {"name": "policy", "configMap": {"name": policy_config_map_name(hive.metadata.name), "optional": True}}


def router_volumes(hive: Hive) -> list[dict[str, Any]]:
    """What a hive pod's router mounts: sockets (the host's), config, claims, policy, certificate."""
    return [
        sockets_volume(hive),
        {"name": "hive-config", "configMap": {"name": names(hive).config_map}},
        {"name": "claims", "configMap": {"name": names(hive).claims_config_map}},
        policy_volume(hive),
        link_volume(hive),
    ]


def build_daemon_set(hive: Hive, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """The hive pods: the router of each selected host (the admin API is its own Deployment)."""
    image = hive.spec.image or settings.image
    containers = [router_container(hive, namespace, settings, image)]
    volumes = router_volumes(hive)
    primary_hive = identity_primary_hive(hive)
    if primary_hive is not None:
        containers.append(_identity_replica_container(hive, settings, image, primary_hive))
        volumes.append(system_credential_volume(hive, identity_replica_node(hive)))
    pod_labels = {**_labels(hive), **pod_selector(hive.metadata.name), MESH_LABEL: hive.metadata.name}
    pod_spec: dict[str, Any] = {
        "hostIPC": True,
        "containers": containers,
        "volumes": volumes,
        "terminationGracePeriodSeconds": 10,
        # the router never calls the Kubernetes API: no token in its pods
        "automountServiceAccountToken": False,
    }
    placement(hive, pod_spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": names(hive).daemon_set, "namespace": namespace, "labels": _labels(hive)},
        "spec": {
            "selector": {"matchLabels": pod_selector(hive.metadata.name)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def build_admin_deployment(hive: Hive, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """The admin API: ``spec.admin.replicas`` pods, each beside a hive pod.

    Each pod shares its host's IPC namespace and the hive's socket hostPath, so ``fluxbee admin``
    finds the router of that host in ``routers/*.sock`` and joins it as ``SY.admin`` with the token
    of the system-credentials Secret (the same file and variable as before).  Required pod affinity
    to the hive pods keeps it off hosts without a router; replicas prefer different hosts, so one
    host going away leaves the others serving while the Deployment replaces the lost pod.
    """
    image = hive.spec.image or settings.image
    name = hive.metadata.name
    pod_spec: dict[str, Any] = {
        "hostIPC": True,
        "containers": [_admin_container(hive, settings, image)],
        "volumes": [sockets_volume(hive), system_credential_volume(hive, ADMIN_NODE)],
        "affinity": {
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": pod_selector(name)}, "topologyKey": HOSTNAME_TOPOLOGY},
            ]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": admin_pod_selector(name)},
                                                    "topologyKey": HOSTNAME_TOPOLOGY}},
            ]},
        },
        "terminationGracePeriodSeconds": 10,
    }
    if hive.spec.admin.service_account_name:
        pod_spec["serviceAccountName"] = hive.spec.admin.service_account_name
    else:
        pod_spec["automountServiceAccountToken"] = False
    placement(hive, pod_spec)
    # Leave a lost host after 30 s rather than the API server's default 300 s, so the Deployment
    # replaces the pod on another hive host soon (the hive's own tolerations of these keys win).
    own = {t.get("key") for t in pod_spec.get("tolerations", [])}
    pod_spec["tolerations"] = [*pod_spec.get("tolerations", []), *(
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": ADMIN_EVICTION_SECONDS}
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable") if key not in own)]
    labels = _labels(hive, ADMIN_COMPONENT)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names(hive).admin_deployment, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": hive.spec.admin.replicas,
            "selector": {"matchLabels": admin_pod_selector(name)},
            "template": {"metadata": {"labels": {**labels, **admin_pod_selector(name)}}, "spec": pod_spec},
        },
    }


def build_admin_history(hive: Hive, namespace: str) -> dict[str, Any]:
    """The ConfigMap the admin replicas keep their history in (``fluxbee.admin.kube_history`` owns
    its data; no ``data`` here, so a reconcile never compares or resets it).  Made by the operator
    so the admin API needs no right to create ConfigMaps; not labelled as managed by the operator,
    so its many writes do not wake the Hive's reconcile."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names(hive).admin_history, "namespace": namespace, "labels": {
            L.HIVE: hive.metadata.name, L.COMPONENT: "admin-history", L.PART_OF: "fluxbee"}},
    }


def build_services(hive: Hive, namespace: str) -> list[dict[str, Any]]:
    """The admin API Service when the admin API is enabled (the link Services are
    ``fluxbee.operator.hive.gateway``'s)."""
    n = names(hive)
    out = []
    if hive.spec.admin.enabled:
        out.append(
            service_manifest(
                hive,
                namespace,
                n.admin_service,
                [{"name": "http", "port": hive.spec.admin.port, "targetPort": "admin"}],
                admin_pod_selector(hive.metadata.name),
            )
        )
    return out


def service_manifest(
    hive: Hive, namespace: str, name: str, ports: list[dict[str, Any]],
    selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(hive)},
        "spec": {
            "type": "ClusterIP",
            "selector": selector or pod_selector(hive.metadata.name),
            "ports": [{**p, "protocol": "TCP"} for p in ports],
        },
    }


def build_admin_secret(hive: Hive, namespace: str, token: str) -> dict[str, Any]:
    """The generated bearer token of the admin API (created once, never rotated by us)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names(hive).admin_secret, "namespace": namespace, "labels": _labels(hive)},
        "type": "Opaque",
        "stringData": {"token": token},
    }
