"""Custom-resource models shared by the operator, the local hive and the admin API.

The same YAML documents a user would ``kubectl apply`` are parsed here for
``fluxbee up``; the CRDs in ``crds/`` are generated from these classes.
"""

from fluxbee.dataplane.names import API_GROUP, API_VERSION, validate_node_name
from fluxbee.models.resources import (
    AdminSpec,
    Degree,
    DegreeSpec,
    FluxNode,
    FluxNodeSpec,
    Hive,
    HiveSpec,
    MatchKind,
    Module,
    ModuleRef,
    ModuleSpec,
    ObjectMeta,
    Policy,
    PolicySpec,
    Resource,
    ResourceError,
    ResourceRequirements,
    RouteAction,
    RouteSpec,
    Runtime,
    RuntimeSpec,
    VpnSpec,
    load_documents,
    parse_document,
    runtime_package_problem,
)
from fluxbee.models.status import Condition, ResourceStatus

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "AdminSpec",
    "Condition",
    "Degree",
    "DegreeSpec",
    "Module",
    "ModuleRef",
    "ModuleSpec",
    "Policy",
    "PolicySpec",
    "Resource",
    "ResourceRequirements",
    "ResourceStatus",
    "parse_document",
    "runtime_package_problem",
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
