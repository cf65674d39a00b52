"""Generate the ``fluxbee.io`` CustomResourceDefinitions from the pydantic models.

The models are the single source of truth: ``hack/gen-crds.py`` writes ``crds/*.yaml`` from
:func:`all_crds`, and a unit test fails when the files differ from what this module renders.

Pydantic's JSON schema is turned into a *structural* OpenAPI v3 schema: ``$ref`` inlined,
``title`` dropped, ``X | None`` collapsed to ``X`` with ``nullable``, free-form objects marked
``x-kubernetes-preserve-unknown-fields`` and ``None``/collection defaults removed (the API server
would otherwise write them into every object).  CEL rules that catch mistakes before the operator
sees them are attached per kind in :data:`CEL_RULES`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel

from fluxbee.dataplane.names import (
    API_GROUP,
    API_VERSION,
    HIVE_ID_RE,
    NODE_NAME_RE,
    NODE_TYPES,
    ROUTER_PREFIX,
    RUNTIME_NAME_RE,
)
from fluxbee.models.resources import (
    Degree,
    FluxNode,
    Hive,
    Module,
    Policy,
    Runtime,
)

VERSION = "v1alpha1"
CATEGORY = "fluxbee"


@dataclass(frozen=True)
class CelRule:
    """An ``x-kubernetes-validations`` entry placed at ``path`` (dotted property names)."""

    path: str
    rule: str
    message: str
    reason: str | None = None
    field_path: str | None = None

    def render(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        return out


@dataclass(frozen=True)
class ReservedKey:
    """A key of a free-form object at ``path`` that users may not set, declared so CEL can see it.

    CEL in the API server cannot test keys of an object with ``x-kubernetes-preserve-unknown-fields``
    and no declared properties (``'k' in self`` and ``has(self.k)`` do not compile there), so the key is
    declared as an object of its own and a rule at ``path`` refuses it with ``!has(self.<name>)``.
    """

    path: str
    name: str
    description: str

    def render(self) -> dict[str, Any]:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "description": self.description}


@dataclass(frozen=True)
class Column:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class Kind:
    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    columns: tuple[Column, ...]
    rules: tuple[CelRule, ...] = field(default=())
    reserved: tuple[ReservedKey, ...] = field(default=())


def _cel_regex(pattern: str) -> str:
    """A Python regex as a CEL string literal (single-quoted, backslashes doubled)."""
    return "'" + pattern.replace("\\", "\\\\").replace("'", "\\'") + "'"


_PHASE = Column("Phase", ".status.phase", description="Ready, Reconciling, Degraded or Pending.")
_AGE = Column("Age", ".metadata.creationTimestamp", type="date")
_MESSAGE = Column(
    "Message",
    ".status.conditions[?(@.type==\"Degraded\")].message",
    description="Why the resource is degraded.",
    priority=1,
)

KINDS: tuple[Kind, ...] = (
    Kind(
        Hive,
        "Hive",
        "hives",
        "hive",
        ("hv",),
        (
            Column("Hive-ID", ".status.hiveId"),
            Column("Role", ".spec.role"),
            Column("Desired", ".status.desiredPods", type="integer"),
            Column("Ready", ".status.readyPods", type="integer"),
            _PHASE,
            _AGE,
            _MESSAGE,
        ),
        (
            CelRule(
                "spec",
                "(has(self.hiveId) && has(oldSelf.hiveId) && self.hiveId == oldSelf.hiveId)"
                " || (!has(self.hiveId) && !has(oldSelf.hiveId))",
                "spec.hiveId is immutable: nodes and other hives address this hive by it",
                field_path=".hiveId",
            ),
            CelRule(
                "",
                "has(self.spec.hiveId) || "
                f"self.metadata.name.matches({_cel_regex(HIVE_ID_RE.pattern)})",
                "without spec.hiveId the name is the hive id and must match "
                f"{HIVE_ID_RE.pattern} (no dots)",
            ),
            CelRule(
                "spec.routes[]",
                "self.action == 'DROP' || has(self.nextHopHive)",
                "a FORWARD route needs nextHopHive",
            ),
            CelRule(
                "spec.routerName",
                f"self.startsWith('{ROUTER_PREFIX}')",
                "the router's L2 name must be of type RT",
            ),
            CelRule(
                "spec.wan.uplinks[]",
                "has(self.address) != has(self.service)",
                "an uplink names exactly one of address or service",
            ),
            CelRule(
                "spec.wan.uplinks[]",
                "!has(self.address) || (!has(self.namespace) && !has(self.port))",
                "namespace and port go with service, not with address",
            ),
            CelRule(
                "spec.identity.database",
                "self.mode != 'url' || has(self.urlSecret)",
                "database mode url needs urlSecret",
            ),
            CelRule(
                "spec.identity.database",
                "self.mode != 'bundled' || !has(self.urlSecret)",
                "urlSecret goes with database mode url",
            ),
        ),
    ),
    Kind(
        FluxNode,
        "FluxNode",
        "fluxnodes",
        "fluxnode",
        ("fn", "fnode"),
        (
            Column("Node-Name", ".spec.nodeName"),
            Column("Hive", ".spec.hive"),
            Column("Runtime", ".spec.runtime"),
            Column("Version", ".status.runtimeVersion"),
            Column("Replicas", ".spec.replicas", type="integer"),
            Column("Ready", ".status.readyReplicas", type="integer"),
            Column("Degree", ".spec.degree.name", priority=1),
            Column("Graduation", ".status.graduation", priority=1),
            _PHASE,
            _AGE,
            _MESSAGE,
        ),
        (
            CelRule(
                "spec.nodeName",
                f"self.matches({_cel_regex(NODE_NAME_RE.pattern)})",
                "nodeName must be TYPE.field[.field…][@hive] with TYPE in "
                f"{'/'.join(NODE_TYPES)} and 2–10 fields of [A-Za-z0-9_-]",
            ),
            CelRule(
                "spec.nodeName",
                "self == oldSelf",
                "spec.nodeName is immutable: delete and recreate the FluxNode to rename it",
            ),
            CelRule(
                "spec.hive",
                "self == oldSelf",
                "spec.hive is immutable: a node cannot move between hives",
            ),
            CelRule(
                "spec.config",
                "!has(self._system)",
                "config may not set `_system`: it is filled in by the hive",
            ),
            CelRule(
                "spec.tenantId",
                "self.matches('^tnt:[0-9a-fA-F-]{36}$')",
                "tenantId must be tnt:<uuid>",
            ),
            CelRule(
                "spec",
                "!has(self.degree) || has(self.agentIlk)",
                "degree needs agentIlk: a graduation binds a degree to an ILK",
            ),
        ),
        reserved=(
            ReservedKey("spec.config", "_system", "Reserved: filled in by the hive; a FluxNode may not set it."),
        ),
    ),
    Kind(
        Runtime,
        "Runtime",
        "runtimes",
        "runtime",
        ("frt",),
        (
            Column("Type", ".spec.type"),
            Column("Version", ".spec.version"),
            Column("Base", ".spec.runtimeBase"),
            Column("Image", ".status.image", priority=1),
            _PHASE,
            _AGE,
            _MESSAGE,
        ),
        (
            CelRule(
                "",
                f"self.metadata.name.matches({_cel_regex(RUNTIME_NAME_RE.pattern)})",
                f"a runtime name must match {RUNTIME_NAME_RE.pattern} "
                "(lower case, dots, no hyphens)",
            ),
            CelRule(
                "spec",
                "self.type == 'full_runtime' ? !has(self.runtimeBase) : has(self.runtimeBase)",
                "full_runtime packages have no runtimeBase; config_only and workflow need one",
            ),
            CelRule(
                "spec",
                "self.type != 'workflow' || has(self.flow)",
                "a workflow package needs a flow",
            ),
            CelRule(
                "spec",
                "self.type != 'full_runtime' || has(self.image) || "
                "(has(self.command) && size(self.command) > 0)",
                "a full_runtime package needs a command or an image",
            ),
            CelRule(
                "spec.version",
                "self != 'current'",
                "version `current` is reserved: it names the newest version",
            ),
            CelRule(
                "spec.type",
                "self == oldSelf",
                "spec.type is immutable: publish a new Runtime instead",
            ),
        ),
    ),
    Kind(
        Module,
        "Module",
        "modules",
        "module",
        ("fmod",),
        (
            Column("Version", ".spec.version"),
            Column("SHA256", ".status.sha256", priority=1),
            Column("Signature", ".status.signature"),
            _PHASE,
            _AGE,
        ),
    ),
    Kind(
        Degree,
        "Degree",
        "degrees",
        "degree",
        ("deg",),
        (
            Column("Version", ".spec.version"),
            Column("Digest", ".status.digest", priority=1),
            Column("Graduations", ".status.graduations"),
            _PHASE,
            _AGE,
            _MESSAGE,
        ),
        (
            CelRule(
                "spec.modules",
                "self.all(m, self.exists_one(n, n.name == m.name))",
                "a degree pins each module at most once",
            ),
        ),
    ),
    Kind(
        Policy,
        "Policy",
        "policies",
        "policy",
        ("fpol",),
        (
            Column("Entrypoint", ".spec.entrypoint"),
            Column("Delivered", ".status.deliveredVersion", type="integer",
                   description="Version written to the hives' policy ConfigMaps."),
            Column("Engine", ".status.engine", description="wasm (opa) or regorus."),
            Column("SHA256", ".status.deliveredSha256", priority=1),
            _PHASE,
            _AGE,
            _MESSAGE,
        ),
    ),
)

_DROP_KEYS = frozenset({"title"})


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _structural({**target, **extra}, defs)
    if "anyOf" in node:
        options = [opt for opt in node["anyOf"] if opt != {"type": "null"}]
        nullable = len(options) != len(node["anyOf"])
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node['anyOf']}")
        merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **options[0]}
        collapsed: dict[str, Any] = _structural(merged, defs)
        if nullable:
            collapsed["nullable"] = True
        return collapsed
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "default" and (value is None or isinstance(value, list | dict)):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is False:
                continue
            else:
                out[key] = _structural(value, defs)
        else:
            out[key] = value
    free_form = "properties" not in out and "additionalProperties" not in out
    if out.get("type") == "object" and free_form:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in (p for p in path.split(".") if p):
        if part.endswith("[]"):
            node = node["properties"][part[:-2]]["items"]
        else:
            node = node["properties"][part]
    return node


def openapi_schema(kind: Kind) -> dict[str, Any]:
    """The structural ``openAPIV3Schema`` of one kind, with its CEL rules."""
    raw = kind.model.model_json_schema(by_alias=True)
    defs = raw.get("$defs", {})
    props = raw["properties"]
    schema: dict[str, Any] = {
        "type": "object",
        "description": raw.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION},
            "kind": {"type": "string", "description": kind.kind},
            "metadata": {"type": "object"},
            "spec": _structural(props["spec"], defs),
            "status": _structural(props["status"], defs),
        },
    }
    schema["properties"]["status"].pop("nullable", None)
    for key in kind.reserved:
        _at(schema, key.path).setdefault("properties", {})[key.name] = key.render()
    for rule in kind.rules:
        target = _at(schema, rule.path)
        target.setdefault("x-kubernetes-validations", []).append(rule.render())
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition manifest of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "fluxbee"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.render() for c in kind.columns],
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


def render(kind: Kind) -> str:
    """YAML text of one CRD file, stable across runs."""
    header = "# Generated from fluxbee/models by hack/gen-crds.py; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, allow_unicode=True, width=100)


def all_crds() -> dict[str, str]:
    """File name → YAML text for every kind."""
    return {f"{API_GROUP}_{kind.plural}.yaml": render(kind) for kind in KINDS}
