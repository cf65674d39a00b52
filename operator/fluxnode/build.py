"""FluxNode → effective-config ConfigMap and ``replicas`` Pods (pure builders, no I/O).

Node Pods run on hosts that run the hive's router: the hive's node selector and tolerations,
plus a required pod affinity to the hive's pods on the same host.  They share host IPC (the
router's ``/dev/shm`` regions) and the socket directory (hostPath), read their effective
config from a mounted ConfigMap named by ``FLUXBEE_NODE_CONFIG``, and prove their node name to
the router with the token of their FluxNode's credential Secret (``FLUXBEE_NODE_CREDENTIAL_FILE``),
whose hash the hive's claims ConfigMap holds under the node name.  Pods are named
``<fluxnode>-<index>``, so a restarted operator finds the Pods it made instead of adding more.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fluxbee.dataplane import env as E
from fluxbee.dataplane import names
from fluxbee.models import FluxNode, Hive, Runtime
from fluxbee.models.effective import qualified_node_name
from fluxbee.operator import labels as L
from fluxbee.operator.children import with_spec_digest
from fluxbee.operator.hive.build import (
    CREDENTIAL_DIR,
    CREDENTIAL_ENV,
    CREDENTIAL_FILE,
    RUN_DIR,
    SDK_CONFIG_DIR,
    SDK_HIVE_FILE,
    SDK_HIVE_KEY,
    credential_data,
    pod_selector,
)
from fluxbee.operator.hive.build import names as hive_names
from fluxbee.operator.settings import OperatorSettings

CONFIG_KEY = "config.json"
CONFIG_MOUNT = "/etc/fluxbee/node"
IDENTITY_MOUNT = "/etc/fluxbee/identity"
_INDEX_RE = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class Package:
    """What a node container runs: resolved from the Runtime (and its base)."""

    image: str
    command: list[str]
    runtime: str
    version: str


def resolve_package(runtime: Runtime, base: Runtime | None, settings: OperatorSettings) -> Package:
    """config_only / workflow packages run their base's entry point (the original's spawn rule)."""
    runner = base if runtime.spec.type != "full_runtime" and base is not None else runtime
    return Package(
        image=runner.spec.image or settings.image,
        command=list(runner.spec.command),
        runtime=runtime.metadata.name,
        version=runtime.spec.version,
    )


CLAIM_ANNOTATION = names.ANNOTATION_CLAIM
"""On a FluxNode's credential Secret: ``<hive>/<claims key>`` its token's hash was written to, so
a renamed node or a moved hive loses its old claim, and a deleted one finds it."""


def credential_secret_name(node_resource: str) -> str:
    return f"{node_resource}-credential"


def claim_key(node: FluxNode) -> str:
    """The claims key of a node: its L2 name without ``@hive`` (a router's claims file name)."""
    return node.spec.node_name.split("@", 1)[0]


def claim_ref(node: FluxNode) -> str:
    return f"{node.spec.hive}/{claim_key(node)}"


def build_credential_secret(node: FluxNode, namespace: str, token: str) -> dict[str, Any]:
    """The token that proves the node's name to the router (created once, never rotated by the
    operator: the running Pods hold it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": credential_secret_name(node.metadata.name),
            "namespace": namespace,
            "labels": node_labels(node),
            "annotations": {CLAIM_ANNOTATION: claim_ref(node)},
        },
        "type": "Opaque",
        "data": credential_data({"token": token}),
    }


def config_map_name(node_resource: str) -> str:
    return f"{node_resource}-node-config"


def pod_name(node_resource: str, index: int) -> str:
    return f"{node_resource}-{index}"


def pod_index(pod: dict[str, Any]) -> int | None:
    """The replica index of one of our Pods (label first, name as a fallback)."""
    meta = pod.get("metadata", {})
    text = (meta.get("labels") or {}).get(L.REPLICA)
    if text is None:
        match = _INDEX_RE.search(meta.get("name", ""))
        text = match.group(1) if match else None
    return int(text) if text is not None and text.isdigit() else None


def node_labels(node: FluxNode) -> dict[str, str]:
    return {
        **L.common("node", node.metadata.name),
        L.HIVE: node.spec.hive,
        L.FLUXNODE: node.metadata.name,
    }


def build_config_map(
    node: FluxNode, namespace: str, config: dict[str, Any], config_digest: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(node.metadata.name),
            "namespace": namespace,
            "labels": node_labels(node),
            "annotations": {L.CONFIG_DIGEST: config_digest},
        },
        "data": {CONFIG_KEY: json.dumps(config, indent=2, sort_keys=True)},
    }


def build_pod(
    node: FluxNode,
    hive: Hive,
    package: Package,
    namespace: str,
    index: int,
    config_digest: str,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """Replica ``index`` of ``node``; its spec digest changes when it must be replaced."""
    full_name = qualified_node_name(node.spec.node_name, hive.hive_id)
    env = [
        {"name": E.NODE_CONFIG.name, "value": f"{CONFIG_MOUNT}/{CONFIG_KEY}"},
        {"name": E.RUN_DIR.name, "value": RUN_DIR},
        {"name": E.NODE_NAME.name, "value": full_name},
        {"name": E.HIVE_ID.name, "value": hive.hive_id},
        {"name": E.REPLICA.name, "value": str(index)},
        {"name": "JSR_CONFIG_DIR", "value": SDK_CONFIG_DIR},  # where the original SDKs find hive.yaml
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": CREDENTIAL_ENV, "value": CREDENTIAL_FILE},
    ]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if node.spec.degree is not None and node.spec.agent_ilk is not None:
        # What the agent re-verifies itself before its first message (the operator already did).
        env += [
            {"name": E.AGENT_ILK.name, "value": node.spec.agent_ilk},
            {"name": E.DEGREE.name, "value": f"{node.spec.degree.name}@{node.spec.degree.version}"},
            {"name": E.IDENTITY_PUBLIC_KEY.name, "value": f"{IDENTITY_MOUNT}/ed25519.pub"},
        ]
        volumes.append({"name": "identity-key",
                        "configMap": {"name": settings.identity_key_config_map}})
        mounts.append({"name": "identity-key", "mountPath": IDENTITY_MOUNT, "readOnly": True})
    env += [{"name": k, "value": v} for k, v in sorted(node.spec.env.items())]
    container: dict[str, Any] = {
        "name": "node",
        "image": package.image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": env,
        "volumeMounts": [
            {"name": "sockets", "mountPath": RUN_DIR},
            {"name": "node-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "hive-file", "mountPath": SDK_HIVE_FILE, "subPath": "hive.yaml", "readOnly": True},
            {"name": "credential", "mountPath": CREDENTIAL_DIR, "readOnly": True},
            *mounts,
        ],
    }
    if package.command:
        container["command"] = list(package.command)
    if node.spec.resources is not None:
        container["resources"] = node.spec.resources.model_dump(exclude_defaults=True)
    spec: dict[str, Any] = {
        "hostIPC": True,
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [
            {"name": "sockets", "hostPath": {"path": hive.host_socket_dir, "type": "Directory"}},
            {"name": "node-config", "configMap": {"name": config_map_name(node.metadata.name)}},
            {"name": "hive-file", "configMap": {"name": hive_names(hive).config_map,
                                                "items": [{"key": SDK_HIVE_KEY, "path": "hive.yaml"}]}},
            {"name": "credential", "secret": {"secretName": credential_secret_name(node.metadata.name)}},
            *volumes,
        ],
        "affinity": {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": pod_selector(hive.metadata.name)},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        },
        "terminationGracePeriodSeconds": 10,
    }
    if hive.spec.node_selector:
        spec["nodeSelector"] = dict(hive.spec.node_selector)
    if hive.spec.tolerations:
        spec["tolerations"] = [dict(t) for t in hive.spec.tolerations]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(node.metadata.name, index),
            "namespace": namespace,
            "labels": {**node_labels(node), L.REPLICA: str(index)},
            "annotations": {
                L.CONFIG_DIGEST: config_digest,
                names.ANNOTATION_RUNTIME: f"{package.runtime}@{package.version}",
            },
        },
        "spec": spec,
    }
    return with_spec_digest(pod)
