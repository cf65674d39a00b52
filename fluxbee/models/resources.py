"""Pydantic models of the ``fluxbee.io/v1alpha1`` resources.

Field names are camelCase on the wire (as ``kubectl`` users write them) and
snake_case in Python.  Validation here is the single source of truth: the CRD
schemas are generated from these models, and ``fluxbee up`` rejects a bad hive
file with the same messages the API server would give.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

API_GROUP = "fluxbee.io"
API_VERSION = f"{API_GROUP}/v1alpha1"

NODE_TYPES = ("AI", "IO", "WF", "SY", "RT")
_FIELD = r"[A-Za-z0-9_-]+"
HIVE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
NODE_NAME_RE = re.compile(rf"^(?:{'|'.join(NODE_TYPES)})(?:\.{_FIELD}){{1,9}}(?:@[A-Za-z0-9][A-Za-z0-9_-]{{0,62}})?$")
MAX_NODE_NAME_BYTES = 256


class ResourceError(ValueError):
    """A resource document that cannot be accepted; ``where`` names the document."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def validate_node_name(name: str) -> str:
    """Check the L2 grammar ``TYPE.f2…fN[@hive]`` (≤ 10 fields, ``[A-Za-z0-9_-]``)."""
    if len(name.encode()) > MAX_NODE_NAME_BYTES:
        raise ValueError(f"node name is longer than {MAX_NODE_NAME_BYTES} bytes")
    if not NODE_NAME_RE.match(name):
        raise ValueError(
            f"node name {name!r} must be TYPE.field[.field…][@hive] with TYPE in "
            f"{'/'.join(NODE_TYPES)}, 2–10 fields of [A-Za-z0-9_-]"
        )
    return name


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class MatchKind(StrEnum):
    EXACT = "EXACT"
    PREFIX = "PREFIX"
    GLOB = "GLOB"


class RouteAction(StrEnum):
    FORWARD = "FORWARD"
    DROP = "DROP"


class RouteSpec(_Model):
    """A static route: names matching ``prefix`` are forwarded to a hive or dropped."""

    prefix: str = Field(min_length=1, max_length=256, description="Name, prefix (`AI.sales.*`) or glob.")
    match_kind: MatchKind = Field(default=MatchKind.PREFIX, description="How `prefix` is matched.")
    action: RouteAction = Field(default=RouteAction.FORWARD, description="FORWARD or DROP.")
    next_hop_hive: str | None = Field(default=None, description="Hive to forward to (FORWARD only).")
    metric: int = Field(default=0, ge=0, description="Lower wins among equally specific routes.")
    priority: int = Field(default=100, ge=0, description="Lower wins among equally specific routes.")

    @field_validator("next_hop_hive")
    @classmethod
    def _hive(cls, value: str | None) -> str | None:
        if value is not None and not HIVE_ID_RE.match(value):
            raise ValueError(f"next_hop_hive {value!r} is not a hive id")
        return value


class VpnSpec(_Model):
    """A VPN rule: nodes whose name matches ``pattern`` join VPN ``vpn_id``."""

    pattern: str = Field(min_length=1, max_length=256, description="Name pattern.")
    match_kind: MatchKind = Field(default=MatchKind.PREFIX, description="How `pattern` is matched.")
    vpn_id: int = Field(ge=0, le=2**31 - 1, description="VPN number; 0 is the default VPN.")
    priority: int = Field(default=100, ge=0, description="Rules are tried by ascending priority.")


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class HiveSpec(_Model):
    """Desired state of a hive: its id, role, routes and VPN rules."""

    hive_id: str | None = Field(default=None, description="Hive id; defaults to metadata.name.")
    role: Literal["motherbee", "worker"] = Field(default="motherbee", description="Hive role.")
    router_name: str = Field(default="RT.gateway", description="L2 name of the hive's router.")
    routes: list[RouteSpec] = Field(default_factory=list, description="Static routes.")
    vpns: list[VpnSpec] = Field(default_factory=list, description="VPN rules.")

    @field_validator("hive_id")
    @classmethod
    def _hive_id(cls, value: str | None) -> str | None:
        if value is not None and not HIVE_ID_RE.match(value):
            raise ValueError(f"hive id {value!r} must match {HIVE_ID_RE.pattern}")
        return value


class Hive(_Model):
    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["Hive"] = "Hive"
    metadata: ObjectMeta
    spec: HiveSpec = Field(default_factory=HiveSpec)

    @property
    def hive_id(self) -> str:
        return self.spec.hive_id or self.metadata.name


class FluxNodeSpec(_Model):
    """Desired state of a node: which runtime runs it, under which L2 name, how many replicas."""

    hive: str = Field(description="Name of the Hive resource this node joins.")
    node_name: str = Field(description="L2 name, `TYPE.f2…fN` (the hive suffix is added).")
    runtime: str = Field(min_length=1, description="Runtime name.")
    runtime_version: str = Field(default="current", description="Runtime version or `current`.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Processes/Pods with this name.")
    tenant_id: str | None = Field(default=None, description="Tenant (`tnt:<uuid>`).")
    config: dict[str, Any] = Field(default_factory=dict, description="Overrides of the runtime's config template.")

    @field_validator("node_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_node_name(value)

    @field_validator("config")
    @classmethod
    def _no_system(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "_system" in value:
            raise ValueError("config may not set `_system`: it is filled in by the hive")
        return value


class FluxNode(_Model):
    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["FluxNode"] = "FluxNode"
    metadata: ObjectMeta
    spec: FluxNodeSpec


class RuntimeSpec(_Model):
    """A published node package: what runs and with which config template."""

    version: str = Field(min_length=1, description="Package version.")
    type: Literal["full_runtime", "config_only", "workflow"] = Field(default="full_runtime")
    image: str | None = Field(default=None, description="Container image (Kubernetes).")
    command: list[str] = Field(default_factory=list, description="Entry point command.")
    runtime_base: str | None = Field(default=None, description="Base runtime (config_only/workflow).")
    config_template: dict[str, Any] = Field(default_factory=dict, description="Config defaults.")


class Runtime(_Model):
    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["Runtime"] = "Runtime"
    metadata: ObjectMeta
    spec: RuntimeSpec


Resource = Hive | FluxNode | Runtime
_KINDS: dict[str, type[Hive] | type[FluxNode] | type[Runtime]] = {
    "Hive": Hive,
    "FluxNode": FluxNode,
    "Runtime": Runtime,
}


def _describe(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"])
        parts.append(f"{loc}: {item['msg']}")
    return "; ".join(parts)


def parse_document(doc: Any, where: str) -> Resource:
    if not isinstance(doc, dict):
        raise ResourceError(where, f"expected a mapping, got {type(doc).__name__}")
    kind = doc.get("kind")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ResourceError(where, f"unknown kind {kind!r}; expected one of {sorted(_KINDS)}")
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        raise ResourceError(where, _describe(err)) from err


def load_documents(source: str | Path, text: str | None = None) -> list[Resource]:
    """Parse a multi-document YAML file into resources, naming the bad document on error."""
    name = str(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as err:
            raise ResourceError(name, f"cannot read: {err.strerror}") from err
    try:
        docs: Iterable[Any] = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        raise ResourceError(name, f"invalid YAML: {err}") from err
    out: list[Resource] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        out.append(parse_document(doc, f"{name} document {index + 1}"))
    return out
