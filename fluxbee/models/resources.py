"""Pydantic models of the ``fluxbee.io/v1alpha1`` resources.

Field names are camelCase on the wire (as ``kubectl`` users write them) and
snake_case in Python.  Validation here is the single source of truth: the CRD
schemas are generated from these models, and ``fluxbee up`` rejects a bad hive
file with the same messages the API server would give.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from fluxbee.dataplane.names import (
    API_VERSION,
    DEFAULT_ROUTER_NAME,
    HIVE_ID_RE,
    RUNTIME_NAME_RE,
    VERSION_RE,
    validate_node_name,
)
from fluxbee.models.links import DEFAULT_MESH_PORT, IdentitySpec, WanSpec
from fluxbee.models.routing import RouteSpec, VpnSpec
from fluxbee.models.status import (
    DegreeStatus,
    FluxNodeStatus,
    HiveStatus,
    ModuleStatus,
    PolicyStatus,
    RuntimeStatus,
)


class ResourceError(ValueError):
    """A resource document that cannot be accepted; ``where`` names the document."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ResourceRequirements(_Model):
    """Kubernetes compute requests and limits (quantities such as `100m`, `128Mi`)."""

    requests: dict[str, str] = Field(default_factory=dict, description="Minimum resources.")
    limits: dict[str, str] = Field(default_factory=dict, description="Maximum resources.")


class AdminSpec(_Model):
    """The admin HTTP API of the hive (`fluxbee admin`): one Deployment and its Service."""

    enabled: bool = Field(default=True, description="Run the hive's admin API (a Deployment and a Service).")
    replicas: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Admin API pods (each on a host that runs a hive pod; the history is shared).",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="Port of the admin API.")
    token_secret: str | None = Field(
        default=None,
        description="Secret (key `token`) with the bearer token; defaults to `<hive>-admin-token`.",
    )
    service_account_name: str | None = Field(
        default=None,
        description="ServiceAccount of the admin API pods, with RBAC to manage this namespace's "
        "FluxNodes (the chart creates one); without it the admin API cannot change the hive.",
    )


class HiveSpec(_Model):
    """Desired state of a hive: its id, role, routes and VPN rules."""

    # The pattern reaches the CRD only (json_schema_extra): a CEL regex on it exceeds the API server's
    # cost budget; the validator below keeps its own message for `fluxbee up`.
    hive_id: str | None = Field(
        default=None,
        description="Hive id; defaults to metadata.name.",
        json_schema_extra={"pattern": HIVE_ID_RE.pattern},
    )
    role: Literal["motherbee", "worker"] = Field(default="motherbee", description="Hive role.")
    mother_hive: str | None = Field(
        default=None,
        description=(
            "Id of the mother hive (role worker only): its SY.identity is the identity primary this hive's "
            "replica follows, its SY.admin is the only other hive allowed to administer this one, and its "
            "global routes and VPN rules are applied here."
        ),
        json_schema_extra={"pattern": HIVE_ID_RE.pattern},
    )
    router_name: str = Field(default=DEFAULT_ROUTER_NAME, description="L2 name of the hive's router.")
    router_scheduling: Literal["batch", "inherit"] = Field(
        default="batch",
        description=(
            "CPU scheduling class of the router: batch (Linux SCHED_BATCH, the default: the router never "
            "preempts the node that just wrote to it, so hand-offs stay on one CPU; tail latency grows when "
            "every CPU is saturated) or inherit (keep the container's class)."
        ),
    )
    router_busy_poll_us: int = Field(
        default=0, ge=0, le=10_000,
        description=(
            "Microseconds the router keeps polling after routing a read before it sleeps (0, the default: "
            "off). Lowers latency across links and between nodes on hosts with CPU to spare, for at most "
            "half a CPU per router."
        ),
    )
    routes: list[RouteSpec] = Field(default_factory=list, description="Static routes.")
    vpns: list[VpnSpec] = Field(default_factory=list, description="VPN rules.")
    image: str | None = Field(
        default=None,
        description="Image of the hive pod (router, admin API); defaults to the operator's image.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Kubernetes node labels selecting the hosts that run this hive's router.",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Pod tolerations of the hive pods and of its node pods."
    )
    socket_dir: str | None = Field(
        default=None,
        pattern=r"^/[A-Za-z0-9._/-]*$",
        description=(
            "Host directory (hostPath) holding the router and node Unix sockets. Default "
            "/var/run/fluxbee/<namespace>/<hive name>: one directory per hive, so two hives on one "
            "host never share sockets (a node could otherwise join the other hive's router)."
        ),
    )
    gateway_port: int = Field(
        default=9000, ge=1, le=65535,
        description="Port of the `<hive>-gateway` Service (spec.wan); it forwards to the port of spec.wan.listen.",
    )
    admin: AdminSpec = Field(
        default_factory=lambda: AdminSpec(), description="The hive's admin HTTP API."
    )
    mesh_port: int = Field(
        default=DEFAULT_MESH_PORT, ge=1, le=65535,
        description="TCP port the hive's routers mesh on (found through the headless Service `<hive>-mesh`).",
    )
    wan: WanSpec | None = Field(
        default=None,
        description="The gateway to other hives (a `<hive>-gateway` Deployment and Service); none without it.",
    )
    identity: IdentitySpec = Field(
        default_factory=lambda: IdentitySpec(),
        description="SY.identity: a Deployment with PostgreSQL on a motherbee, a replica in every hive pod.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Requests and limits of the router container."
    )

    @field_validator("hive_id", "mother_hive")
    @classmethod
    def _hive_id(cls, value: str | None) -> str | None:
        if value is not None and not HIVE_ID_RE.match(value):
            raise ValueError(f"hive id {value!r} must match {HIVE_ID_RE.pattern}")
        return value

    @model_validator(mode="after")
    def _mother_of_workers(self) -> HiveSpec:
        if self.mother_hive is not None and self.role != "worker":
            raise ValueError("motherHive is for role worker; a motherbee hive is its own mother")
        if self.mother_hive is not None and self.mother_hive == self.hive_id:
            raise ValueError(f"motherHive {self.mother_hive!r} is this hive's own id")
        primary = self.identity.primary_hive
        if self.mother_hive is not None and primary is not None and primary != self.mother_hive:
            raise ValueError(f"motherHive {self.mother_hive!r} and identity.primaryHive {primary!r} differ: a "
                             "worker follows one mother")
        return self

    @property
    def mother(self) -> str | None:
        """The hive this one follows (identity primary, global config, remote administration): ``motherHive``,
        else a worker's ``identity.primaryHive``; None for a motherbee."""
        if self.role != "worker":
            return None
        return self.mother_hive or self.identity.primary_hive


class Hive(_Model):
    """A hive: a router on every selected host, with its config, gateway and admin API."""

    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["Hive"] = "Hive"
    metadata: ObjectMeta
    spec: HiveSpec = Field(default_factory=HiveSpec)
    status: HiveStatus | None = None

    @property
    def hive_id(self) -> str:
        return self.spec.hive_id or self.metadata.name

    @property
    def host_socket_dir(self) -> str:
        """The host directory shared by this hive's router and node pods (see ``spec.socketDir``)."""
        namespace = self.metadata.namespace or "default"
        return self.spec.socket_dir or f"/var/run/fluxbee/{namespace}/{self.metadata.name}"


class GraduationRecord(_Model):
    """The graduation SY.identity issued for ``agentIlk`` to this degree (public data).

    SY.identity signs (Ed25519) ``fluxbee-graduation-v1\\n`` + JSON
    ``[ilk, degree name, degree version, degree digest]``; copy its record here.
    """

    digest: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="Degree digest the graduation signed (sha256 hex over the pinned modules).",
    )
    signature: str = Field(
        min_length=1, max_length=128, description="Base64 Ed25519 signature over the tuple."
    )
    key_id: str = Field(
        default="",
        max_length=64,
        description="First 16 hex of sha256 of the signing public key (informative).",
    )
    ilk_id: str | None = Field(
        default=None,
        pattern=r"^ilk:[0-9a-fA-F-]{36}$",
        description="ILK the graduation was issued to (defaults to spec.agentIlk); a "
        "graduation copied from another agent is reported as GraduationMismatch.",
    )


class DegreeBinding(_Model):
    """The degree an agent node runs with, and the graduation that binds it to its ILK.

    Before it creates Pods the operator recomputes every pinned Module's sha256 and the
    Degree's digest from the Module and Degree resources, and verifies the graduation's
    signature with the identity public key (PEM, key `ed25519.pub` of the ConfigMap named by
    the operator setting FLUXBEE_IDENTITY_KEY_CONFIGMAP, default `fluxbee-identity-key`, in
    the FluxNode's namespace).  Any failure leaves the node without Pods and Degraded with
    the reason: ModuleDigestMismatch, DegreeDigestMismatch, SignatureInvalid,
    GraduationMismatch, MalformedGraduation, DegreeNotFound, ModuleNotFound,
    ModuleVersionMismatch or IdentityKeyUnavailable.
    """

    name: str = Field(min_length=1, max_length=253, description="Name of the Degree resource.")
    version: str = Field(
        min_length=1, max_length=64, description="Degree version the agent graduated to."
    )
    graduation: GraduationRecord = Field(description="The graduation record from SY.identity.")


ILK_RE = re.compile(r"^ilk:[0-9a-fA-F-]{36}$")


class FluxNodeSpec(_Model):
    """Desired state of a node: which runtime runs it, under which L2 name, how many replicas."""

    hive: str = Field(description="Name of the Hive resource this node joins.")
    node_name: str = Field(description="L2 name, `TYPE.f2…fN` (the hive suffix is added).")
    runtime: str = Field(min_length=1, description="Runtime name.")
    runtime_version: str = Field(default="current", description="Runtime version or `current`.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Processes/Pods with this name.")
    tenant_id: str | None = Field(default=None, description="Tenant (`tnt:<uuid>`).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the runtime's config template."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Requests and limits of each node container."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables of the node container."
    )
    agent_ilk: str | None = Field(
        default=None,
        pattern=ILK_RE.pattern,
        description="The node's ILK (`ilk:<uuid>`; the admin API sets it when it registers the node at "
        "spawn); required with `degree`.",
    )
    degree: DegreeBinding | None = Field(
        default=None,
        description="Degree the agent runs with; Pods start only if its graduation verifies.",
    )

    @model_validator(mode="after")
    def _degree_needs_ilk(self) -> FluxNodeSpec:
        if self.degree is not None and self.agent_ilk is None:
            raise ValueError("degree needs agentIlk: a graduation binds a degree to an ILK")
        return self

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
    """A node (AI agent, IO adapter, workflow, service) running as Pods on a hive's hosts."""

    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["FluxNode"] = "FluxNode"
    metadata: ObjectMeta
    spec: FluxNodeSpec
    status: FluxNodeStatus | None = None


RuntimeType = Literal["full_runtime", "config_only", "workflow"]


class RuntimeSpec(_Model):
    """A published node package: what runs and with which config template.

    Package rules (the original's): a `full_runtime` has its own entry point and no
    base; `config_only` and `workflow` packages run their base runtime's entry point with their
    own config template, and a `workflow` also carries its flow.
    """

    version: str = Field(
        min_length=1, max_length=64, pattern=VERSION_RE.pattern, description="Package version."
    )
    type: RuntimeType = Field(
        default="full_runtime", description="Package type: full_runtime, config_only or workflow."
    )
    image: str | None = Field(default=None, description="Container image (Kubernetes).")
    command: list[str] = Field(default_factory=list, description="Entry point command.")
    runtime_base: str | None = Field(
        default=None, description="Base runtime (config_only/workflow)."
    )
    config_template: dict[str, Any] = Field(default_factory=dict, description="Config defaults.")
    flow: dict[str, Any] | None = Field(
        default=None, description="Workflow definition (required for type workflow)."
    )

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value == "current":
            raise ValueError("version `current` is reserved: it names the newest version")
        return value

    @model_validator(mode="after")
    def _package_rules(self) -> RuntimeSpec:
        problem = runtime_package_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


def runtime_package_problem(spec: RuntimeSpec) -> str | None:
    """The first violated package rule of ``spec``, or None when the package is consistent."""
    if spec.type == "full_runtime":
        if spec.runtime_base:
            return "a full_runtime package has no runtimeBase"
        if not spec.command and not spec.image:
            return "a full_runtime package needs a command or an image"
        if spec.flow is not None:
            return "only a workflow package carries a flow"
        return None
    if not spec.runtime_base:
        return f"a {spec.type} package needs a runtimeBase"
    if not RUNTIME_NAME_RE.match(spec.runtime_base):
        return f"runtimeBase {spec.runtime_base!r} must match {RUNTIME_NAME_RE.pattern}"
    if spec.command or spec.image:
        return f"a {spec.type} package runs its base's entry point: drop command and image"
    if spec.type == "workflow" and spec.flow is None:
        return "a workflow package needs a flow"
    if spec.type == "config_only" and spec.flow is not None:
        return "only a workflow package carries a flow"
    return None


class Runtime(_Model):
    """A published node package: image or command, type and config template."""

    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["Runtime"] = "Runtime"
    metadata: ObjectMeta
    spec: RuntimeSpec
    status: RuntimeStatus | None = None


class ModuleSpec(_Model):
    """A versioned prompt fragment; its sha256 is published in status."""

    version: str = Field(min_length=1, max_length=64, description="Module version.")
    content: str = Field(max_length=262144, description="The prompt fragment (UTF-8 text).")
    description: str | None = Field(default=None, description="What the module teaches.")


class Module(_Model):
    """A versioned prompt fragment that degrees pin by digest."""

    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["Module"] = "Module"
    metadata: ObjectMeta
    spec: ModuleSpec
    status: ModuleStatus | None = None


class ModuleRef(_Model):
    """One pinned module of a degree."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Module resource.")
    version: str = Field(min_length=1, max_length=64, description="Version the degree pins.")
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the module content; a mismatch degrades the degree.",
    )


class DegreeSpec(_Model):
    """An ordered list of pinned module versions."""

    version: str = Field(min_length=1, max_length=64, description="Degree version.")
    modules: list[ModuleRef] = Field(
        min_length=1, max_length=256, description="Modules, in prompt order."
    )


class Degree(_Model):
    """A degree: pinned modules whose canonical digest agents verify before they run."""

    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["Degree"] = "Degree"
    metadata: ObjectMeta
    spec: DegreeSpec
    status: DegreeStatus | None = None


class PolicySpec(_Model):
    """A Rego policy evaluated by the routers (L3 routing)."""

    rego: str = Field(min_length=1, max_length=262144, description="Rego source text.")
    entrypoint: str = Field(
        default="data.router.target",
        pattern=r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$",
        description="Rule queried for each routing decision.",
    )
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="The policy's own data document (`data.<key>` in Rego); `identity`, "
        "`identity_aliases`, `by_capability` and `by_role` are filled in by the routers.",
    )
    hives: list[str] | None = Field(
        default=None,
        max_length=256,
        description="Hive resources (in this namespace) whose routers run this policy; absent: every "
        "Hive of the namespace. A hive runs at most one Policy: the first one delivered keeps it.",
    )
    pin_version: int | None = Field(
        default=None,
        ge=1,
        description="Deliver this stored version instead of the newest compiled one (rollback); it "
        "must still be kept (see `status.versions`).",
    )
    keep_versions: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Compiled versions kept (one ConfigMap each) for rollback; the delivered and the "
        "pinned version are always kept as well.",
    )


class Policy(_Model):
    """A Rego routing policy: compiled by the operator, stored per version, delivered to the hives' routers."""

    api_version: Literal["fluxbee.io/v1alpha1"] = API_VERSION
    kind: Literal["Policy"] = "Policy"
    metadata: ObjectMeta
    spec: PolicySpec
    status: PolicyStatus | None = None


Resource = Hive | FluxNode | Runtime | Module | Degree | Policy
_KINDS: dict[str, type[Resource]] = {
    "Hive": Hive,
    "FluxNode": FluxNode,
    "Runtime": Runtime,
    "Module": Module,
    "Degree": Degree,
    "Policy": Policy,
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
        except UnicodeDecodeError as err:  # a latin-1 comment must not crash whoever reads the file
            line = err.object[:err.start].count(b"\n") + 1
            raise ResourceError(name, f"not UTF-8 text: byte 0x{err.object[err.start]:02x} on line {line}") from err
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
