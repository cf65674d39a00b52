"""Hive → the mesh Service, the gateway Deployment and its Service (pure builders, no I/O).

The gateway is one more router of the hive (it meshes with the hosts' routers like any of them),
in a Deployment of one replica rather than in the DaemonSet: it holds the hive's WAN links, which
need one stable address (the ``<hive>-gateway`` Service) and nothing of a particular host.  It does
not share host IPC or the host socket directory: no node connects to it; it forwards for its mesh
peers.  The hosts' routers reach the other hives through it over the mesh.
"""

from __future__ import annotations

from typing import Any

from fluxbee.models import Hive
from fluxbee.operator import labels as L
from fluxbee.operator.hive.build import (
    labels,
    names,
    placement,
    policy_volume,
    router_container,
)
from fluxbee.operator.hive.links import (
    MESH_LABEL,
    MESH_PORT_NAME,
    WAN_PORT_NAME,
    gateway_name,
    link_volume,
    mesh_service_name,
    wan_args,
    wan_port,
)
from fluxbee.operator.settings import OperatorSettings

GATEWAY_COMPONENT = "gateway"


def mesh_selector(hive: Hive) -> dict[str, str]:
    """Every router pod of the hive: the DaemonSet's, the gateway's, the identity pod's."""
    return {MESH_LABEL: hive.metadata.name}


def gateway_selector(hive: Hive) -> dict[str, str]:
    return {L.HIVE: hive.metadata.name, L.COMPONENT: GATEWAY_COMPONENT}


def build_mesh_service(hive: Hive, namespace: str) -> dict[str, Any]:
    """Headless: resolving it gives every router pod's address, ready or not (a router that is
    starting must be found by the others, or two starting routers would wait for each other)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": mesh_service_name(hive), "namespace": namespace, "labels": labels(hive)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": mesh_selector(hive),
            "ports": [{"name": MESH_PORT_NAME, "port": hive.spec.mesh_port, "targetPort": hive.spec.mesh_port,
                       "protocol": "TCP"}],
        },
    }


def private_run_volumes(hive: Hive) -> list[dict[str, Any]]:
    """A router pod of its own (gateway, identity): a private socket dir, the hive's config,
    claims, policy and certificate."""
    return [
        {"name": "sockets", "emptyDir": {}},
        {"name": "hive-config", "configMap": {"name": names(hive).config_map}},
        {"name": "claims", "configMap": {"name": names(hive).claims_config_map}},
        policy_volume(hive),
        link_volume(hive),
    ]


def one_router_pod_deployment(hive: Hive, namespace: str, *, name: str, component: str,
                              selector: dict[str, str], containers: list[dict[str, Any]],
                              volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """A Deployment of exactly one pod that carries a router of the hive's mesh (the gateway, the
    identity primary): ``Recreate``, so two such pods never run at once (two gateways would hold the
    same links; two identity primaries would split the writes)."""
    pod_spec: dict[str, Any] = {
        "containers": containers,
        "volumes": volumes,
        "terminationGracePeriodSeconds": 10,
        "automountServiceAccountToken": False,
    }
    placement(hive, pod_spec)
    pod_labels = {**labels(hive, component), **selector, **mesh_selector(hive)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(hive, component)},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def build_gateway_deployment(hive: Hive, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """One router with the WAN flags (spec.wan) and the mesh flags of every router of the hive."""
    image = hive.spec.image or settings.image
    port = wan_port(hive)
    router = router_container(hive, namespace, settings, image, extra_args=wan_args(hive, namespace),
                              extra_ports=[{"name": WAN_PORT_NAME, "containerPort": port, "protocol": "TCP"}])
    return one_router_pod_deployment(hive, namespace, name=gateway_name(hive), component=GATEWAY_COMPONENT,
                                     selector=gateway_selector(hive), containers=[router],
                                     volumes=private_run_volumes(hive))


def build_gateway_service(hive: Hive, namespace: str) -> dict[str, Any]:
    """``<hive>-gateway``: ``spec.gatewayPort`` → the gateway's WAN listener; other hives (``uplinks``
    with ``service``) dial it by name."""
    wan = hive.spec.wan
    if wan is None:
        raise ValueError("a gateway Service needs spec.wan")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": gateway_name(hive), "namespace": namespace,
                     "labels": labels(hive, GATEWAY_COMPONENT)},
        "spec": {
            "type": wan.service_type,
            "selector": gateway_selector(hive),
            "ports": [{"name": WAN_PORT_NAME, "port": hive.spec.gateway_port, "targetPort": WAN_PORT_NAME,
                       "protocol": "TCP"}],
        },
    }

