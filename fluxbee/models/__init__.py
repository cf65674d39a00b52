"""Custom-resource models shared by the operator, the local hive and the admin API.

The same YAML documents a user would ``kubectl apply`` are parsed here for
``fluxbee up``; the CRDs in ``crds/`` are generated from these classes.
"""

from fluxbee.models.resources import (
    API_GROUP,
    API_VERSION,
    FluxNode,
    FluxNodeSpec,
    Hive,
    HiveSpec,
    MatchKind,
    ObjectMeta,
    ResourceError,
    RouteAction,
    RouteSpec,
    Runtime,
    RuntimeSpec,
    VpnSpec,
    load_documents,
    validate_node_name,
)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "FluxNode",
    "FluxNodeSpec",
    "Hive",
    "HiveSpec",
    "MatchKind",
    "ObjectMeta",
    "ResourceError",
    "RouteAction",
    "RouteSpec",
    "Runtime",
    "RuntimeSpec",
    "VpnSpec",
    "load_documents",
    "validate_node_name",
]
