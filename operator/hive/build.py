"""Hive → DaemonSet, ConfigMap, Services (pure builders, no I/O).

One hive pod per selected host: the router sidecar owns ``/dev/shm`` regions (``hostIPC``)
and the socket directory on a hostPath that node Pods on the same host mount too.  The hive
config is a mounted ConfigMap, so route/VPN edits reach the router by file reload, never by a
pod restart: nothing derived from the routes is put in the pod template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from fluxbee.models import Hive
from fluxbee.operator import labels as L
from fluxbee.operator.settings import OperatorSettings

CONFIG_KEY = "hive.yaml"
CONFIG_MOUNT = "/etc/fluxbee/hive"
SDK_HIVE_KEY = "sdk-hive.yaml"
"""The ``hive.yaml`` nodes built with the original SDKs read from their config dir (``hive_id``, ``role``);
FluxNode Pods mount it at :data:`SDK_HIVE_FILE` (``fluxbee.operator.fluxnode.build``)."""
SDK_CONFIG_DIR = "/etc/fluxbee"
SDK_HIVE_FILE = f"{SDK_CONFIG_DIR}/hive.yaml"
RUN_DIR = "/var/run/fluxbee"


@dataclass(frozen=True)
class HiveNames:
    daemon_set: str
    config_map: str
    gateway_service: str
    admin_service: str
    admin_secret: str


def names(hive: Hive) -> HiveNames:
    base = hive.metadata.name
    return HiveNames(
        daemon_set=f"{base}-hive",
        config_map=f"{base}-hive-config",
        gateway_service=f"{base}-gateway",
        admin_service=f"{base}-admin",
        admin_secret=hive.spec.admin.token_secret or f"{base}-admin-token",
    )


def pod_selector(hive_name: str) -> dict[str, str]:
    """Labels selecting a hive's pods (stable: DaemonSet selectors are immutable)."""
    return {L.HIVE: hive_name, L.COMPONENT: "hive"}


def _labels(hive: Hive) -> dict[str, str]:
    return {**L.common("hive", hive.metadata.name), L.HIVE: hive.metadata.name}


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


def _router_container(hive: Hive, settings: OperatorSettings, image: str) -> dict[str, Any]:
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
            "--metrics-addr",
            f"0.0.0.0:{port}",
        ],
        "env": [
            {"name": "FLUXBEE_RUN_DIR", "value": RUN_DIR},
            {"name": "FLUXBEE_HIVE_ID", "value": hive.hive_id},
        ],
        "ports": [
            {"name": "gateway", "containerPort": hive.spec.gateway_port, "protocol": "TCP"},
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
            {"name": "FLUXBEE_RUN_DIR", "value": RUN_DIR},
            {"name": "FLUXBEE_HIVE_ID", "value": hive.hive_id},
            {"name": "FLUXBEE_HIVE_RESOURCE", "value": hive.metadata.name},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {
                "name": "FLUXBEE_ADMIN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": names(hive).admin_secret, "key": "token"}},
            },
        ],
        "ports": [{"name": "admin", "containerPort": admin.port, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "admin"}, "periodSeconds": 5},
        "volumeMounts": [{"name": "sockets", "mountPath": RUN_DIR}],
    }


def build_daemon_set(hive: Hive, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    image = hive.spec.image or settings.image
    containers = [_router_container(hive, settings, image)]
    if hive.spec.admin.enabled:
        containers.append(_admin_container(hive, settings, image))
    pod_labels = {**_labels(hive), **pod_selector(hive.metadata.name)}
    pod_spec: dict[str, Any] = {
        "hostIPC": True,
        "containers": containers,
        "volumes": [
            {
                "name": "sockets",
                "hostPath": {"path": hive.host_socket_dir, "type": "DirectoryOrCreate"},
            },
            {"name": "hive-config", "configMap": {"name": names(hive).config_map}},
        ],
        "terminationGracePeriodSeconds": 10,
    }
    if hive.spec.admin.enabled and hive.spec.admin.service_account_name:
        pod_spec["serviceAccountName"] = hive.spec.admin.service_account_name
    else:
        pod_spec["automountServiceAccountToken"] = False
    if hive.spec.node_selector:
        pod_spec["nodeSelector"] = dict(hive.spec.node_selector)
    if hive.spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in hive.spec.tolerations]
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


def build_services(hive: Hive, namespace: str) -> list[dict[str, Any]]:
    """The gateway Service, and the admin API Service when the admin API is enabled."""
    n = names(hive)
    out = [
        _service(
            hive,
            namespace,
            n.gateway_service,
            [{"name": "gateway", "port": hive.spec.gateway_port, "targetPort": "gateway"}],
        )
    ]
    if hive.spec.admin.enabled:
        out.append(
            _service(
                hive,
                namespace,
                n.admin_service,
                [{"name": "http", "port": hive.spec.admin.port, "targetPort": "admin"}],
            )
        )
    return out


def _service(
    hive: Hive, namespace: str, name: str, ports: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(hive)},
        "spec": {
            "type": "ClusterIP",
            "selector": pod_selector(hive.metadata.name),
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
