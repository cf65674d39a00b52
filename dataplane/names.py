"""Names and naming rules every layer shares: hive ids, node names, runtimes, system nodes, resource keys.

One definition per rule, so the CLI, the router, the admin API, the operator, the CRD schemas and
the node SDK accept and refuse the same things.  This module is a leaf (``.importlinter`` keeps it
one): it imports only the standard library, so a node that installs nothing but the base
dependencies can use it, and every other module may import it without cycles.

The rules are plain regular expressions on purpose: the CRD generator copies their patterns into
the OpenAPI schemas and CEL rules the API server checks, so a name the API server accepts is one
the router accepts.
"""

from __future__ import annotations

import argparse
import re
from typing import Final

# --- hive ids -------------------------------------------------------------------------------------

HIVE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
"""A hive id: 1-63 characters of ``[A-Za-z0-9_-]``, starting with a letter or digit.

No dots (``name@hive`` and DNS-derived names would be ambiguous) and short enough to fit the
64-byte hive-id fields of the shared-memory headers and a Kubernetes label value."""
HIVE_ID_RE: Final = re.compile(HIVE_ID_PATTERN)
MAX_HIVE_ID_LENGTH: Final = 63


class InvalidName(ValueError):
    """A name that breaks its rule; ``kind`` says which rule, ``value`` is the name refused."""

    def __init__(self, kind: str, value: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.value = value
        self.reason = reason


def hive_id_problem(value: str) -> str | None:
    """Why ``value`` is not a hive id, or None when it is one."""
    if HIVE_ID_RE.match(value):
        return None
    shown = repr(value) if len(value) <= 80 else f"{value[:40]!r}… ({len(value)} characters)"
    return (f"hive id {shown} must match {HIVE_ID_PATTERN}: 1-{MAX_HIVE_ID_LENGTH} letters, digits, '_' or '-', "
            "starting with a letter or digit")


def check_hive_id(value: str) -> str:
    """``value`` when it is a hive id; :class:`InvalidName` with the reason otherwise."""
    problem = hive_id_problem(value)
    if problem is not None:
        raise InvalidName("hive id", value, problem)
    return value


def hive_id_argument(value: str) -> str:
    """``type=`` of every command-line option that takes a hive id (argparse prints the reason)."""
    problem = hive_id_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


# --- node names (L2) --------------------------------------------------------------------------

NODE_TYPES: Final = ("AI", "IO", "WF", "SY", "RT")
"""The first field of every L2 name."""
NODE_FIELD_PATTERN: Final = r"[A-Za-z0-9_-]+"
NODE_NAME_PATTERN: Final = (
    rf"^(?:{'|'.join(NODE_TYPES)})(?:\.{NODE_FIELD_PATTERN}){{1,9}}(?:@{HIVE_ID_PATTERN[1:-1]})?$"
)
"""``TYPE.f2…fN[@hive]``: 2-10 dot-separated fields, then optionally ``@`` and a hive id."""
NODE_NAME_RE: Final = re.compile(NODE_NAME_PATTERN)
MAX_NODE_NAME_BYTES: Final = 256


def validate_node_name(name: str) -> str:
    """``name`` when it follows the L2 grammar; :class:`InvalidName` (a ValueError) otherwise."""
    if len(name.encode()) > MAX_NODE_NAME_BYTES:
        raise InvalidName("node name", name, f"node name is longer than {MAX_NODE_NAME_BYTES} bytes")
    if not NODE_NAME_RE.match(name):
        raise InvalidName(
            "node name", name,
            f"node name {name!r} must be TYPE.field[.field…][@hive] with TYPE in "
            f"{'/'.join(NODE_TYPES)}, 2–10 fields of [A-Za-z0-9_-]",
        )
    return name


def split_hive(name: str) -> tuple[str, str | None]:
    """``(base, hive)`` of ``base@hive``; ``(name, None)`` when the name carries no hive."""
    base, sep, hive = name.partition("@")
    return (base, hive) if sep else (name, None)


def qualify(name: str, hive_id: str) -> str:
    """``name@hive_id`` unless ``name`` already names a hive."""
    return name if "@" in name else f"{name}@{hive_id}"


# --- system nodes -------------------------------------------------------------------------------

SYSTEM_PREFIX: Final = "SY."
"""System services; their names are always claimed on the router socket."""
ROUTER_PREFIX: Final = "RT."
"""Routers; reserved: no node may register under one."""
RESERVED_PREFIXES: Final = (SYSTEM_PREFIX, ROUTER_PREFIX)
"""Names the hive owns: always claimed by the router, never spawned by the admin API, never drift."""

IDENTITY_NODE: Final = "SY.identity"
ADMIN_NODE: Final = "SY.admin"
FRONTDESK_NODE: Final = "SY.frontdesk.gov"
"""Where the router sends ``dst: null`` messages from temporary ILKs (the original's default)."""
ORCHESTRATOR_NODE: Final = "SY.orchestrator"
DEFAULT_ROUTER_NAME: Final = "RT.gateway"


def is_reserved(name: str) -> bool:
    """True for ``SY.*`` and ``RT.*`` names (with or without ``@hive``)."""
    return name.startswith(RESERVED_PREFIXES)


# --- runtimes and versions ----------------------------------------------------------------------

RUNTIME_NAME_PATTERN: Final = r"^[a-z][a-z0-9]*(\.[a-z0-9]+)*$"
"""A runtime (package) name: lower-case dot-separated words, e.g. ``fluxbee.echo``."""
RUNTIME_NAME_RE: Final = re.compile(RUNTIME_NAME_PATTERN)
VERSION_PATTERN: Final = r"^[A-Za-z0-9._-]{1,64}$"
"""A runtime version: 1-64 characters of ``[A-Za-z0-9._-]`` (also a file name in the local store)."""
VERSION_RE: Final = re.compile(VERSION_PATTERN)

MODULE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""A prompt module's name in the admin API's module actions (MODULE_PUT/GET, DEGREE_CREATE)."""
MODULE_VERSION_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A prompt module's or degree's version in the admin API's module actions."""


# --- custom resources, labels and annotations --------------------------------------------------

API_GROUP: Final = "fluxbee.io"
API_VERSION: Final = "fluxbee.io/v1alpha1"

LABEL_HIVE: Final = "fluxbee.io/hive"
"""On every child of a Hive, and on the admin API's history ConfigMaps: the hive it belongs to."""
LABEL_FLUXNODE: Final = "fluxbee.io/fluxnode"
LABEL_REPLICA: Final = "fluxbee.io/replica"
LABEL_CREATED_BY: Final = "fluxbee.io/created-by"
LABEL_MESH: Final = "fluxbee.io/mesh"
"""On every router pod of a hive (value: the Hive's name); the hive's mesh Service selects it."""
"""``admin-api`` on FluxNodes the admin API spawned."""
LABEL_POLICY: Final = "fluxbee.io/policy"
"""On the ConfigMaps the operator makes for a Policy (its stored versions, the hives' copies): its name."""

ANNOTATION_CONFIG_DIGEST: Final = "fluxbee.io/config-digest"
ANNOTATION_SPEC_DIGEST: Final = "fluxbee.io/spec-digest"
ANNOTATION_CLAIM: Final = "fluxbee.io/claim"
ANNOTATION_RUNTIME: Final = "fluxbee.io/runtime"
ANNOTATION_NODE_NAME: Final = "fluxbee.io/node-name"
ANNOTATION_REQUESTED_VERSION: Final = "fluxbee.io/requested-runtime-version"
ANNOTATION_CONFIG_VERSION: Final = "fluxbee.io/config-version"
ANNOTATION_CREATED_AT_MS: Final = "fluxbee.io/created-at-ms"
ANNOTATION_ADDRESS: Final = "fluxbee.io/address"
ANNOTATION_VERSION_TEMPLATE: Final = "fluxbee.io/{key}-version"
"""Per-subsystem applied version on a Hive (``key`` is ``routes``, ``vpns``, …)."""
ANNOTATION_DRIFT_LEASE: Final = "fluxbee.io/drift-monitor"
ANNOTATION_GLOBAL_WRITER: Final = "fluxbee.io/global-config-writer"
"""On a hive's admin ConfigMap: the admin replica changing the hive's global routes and VPNs now."""
ANNOTATION_GLOBAL_FOLLOWER: Final = "fluxbee.io/global-config-follower"
"""On a worker hive's admin ConfigMap: the admin replica asking the mother for its global config."""
ANNOTATION_GLOBAL_VERSION: Final = "fluxbee.io/global-config-version"
"""On a Hive: the version of the global routes and VPNs applied to its spec (set by its admin API)."""
ANNOTATION_POLICY_STAGED: Final = "fluxbee.io/policy-staged"
"""On a Policy: the cluster admin staged its newest compiled version (compiled and stored, not delivered)."""

FINALIZER: Final = "fluxbee.io/cleanup"
