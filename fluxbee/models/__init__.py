"""Custom-resource models shared by the operator, the local hive and the admin API.

The same YAML documents a user would ``kubectl apply`` are parsed here for
``fluxbee up``; the CRDs in ``crds/`` are generated from these classes.

Every name below is importable from this package, but a submodule is only loaded when one of its
names is first asked for (PEP 562 ``__getattr__``).  The router reads routes and VPN rules only
(:mod:`fluxbee.models.routing`); importing the whole set of resources, their YAML loader and status
schemas would cost it several MB of resident memory for models it never builds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fluxbee.dataplane.names import API_GROUP, API_VERSION, validate_node_name

if TYPE_CHECKING:
    from fluxbee.models.links import (
        CertificateRef,
        IdentityDatabaseSpec,
        IdentitySpec,
        SecretKeyRef,
        UplinkSpec,
        WanSpec,
    )
    from fluxbee.models.resources import (
        AdminSpec,
        Degree,
        DegreeSpec,
        FluxNode,
        FluxNodeSpec,
        Hive,
        HiveSpec,
        Module,
        ModuleRef,
        ModuleSpec,
        ObjectMeta,
        Policy,
        PolicySpec,
        Resource,
        ResourceError,
        ResourceRequirements,
        Runtime,
        RuntimeSpec,
        load_documents,
        parse_document,
        runtime_package_problem,
    )
    from fluxbee.models.routing import MatchKind, RouteAction, RouteSpec, VpnSpec
    from fluxbee.models.status import Condition, ResourceStatus

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("CertificateRef", "IdentityDatabaseSpec", "IdentitySpec", "SecretKeyRef", "UplinkSpec", "WanSpec"),
        "links",
    ),
    **dict.fromkeys(("MatchKind", "RouteAction", "RouteSpec", "VpnSpec"), "routing"),
    **dict.fromkeys(("Condition", "ResourceStatus"), "status"),
    **dict.fromkeys(
        ("AdminSpec", "Degree", "DegreeSpec", "FluxNode", "FluxNodeSpec", "Hive", "HiveSpec", "Module",
         "ModuleRef", "ModuleSpec", "ObjectMeta", "Policy", "PolicySpec", "Resource", "ResourceError",
         "ResourceRequirements", "Runtime", "RuntimeSpec", "load_documents", "parse_document",
         "runtime_package_problem"),
        "resources",
    ),
}
"""Each public name and the submodule that defines it."""

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "AdminSpec",
    "CertificateRef",
    "Condition",
    "Degree",
    "DegreeSpec",
    "FluxNode",
    "FluxNodeSpec",
    "Hive",
    "HiveSpec",
    "IdentityDatabaseSpec",
    "IdentitySpec",
    "MatchKind",
    "Module",
    "ModuleRef",
    "ModuleSpec",
    "ObjectMeta",
    "Policy",
    "PolicySpec",
    "Resource",
    "ResourceError",
    "ResourceRequirements",
    "ResourceStatus",
    "RouteAction",
    "RouteSpec",
    "Runtime",
    "RuntimeSpec",
    "SecretKeyRef",
    "UplinkSpec",
    "VpnSpec",
    "WanSpec",
    "load_documents",
    "parse_document",
    "runtime_package_problem",
    "validate_node_name",
]


def __getattr__(name: str) -> object:
    """Load the submodule that defines ``name`` on first use; the value is then cached here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
