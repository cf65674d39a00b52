"""Status models of the ``fluxbee.io/v1alpha1`` resources.

Every status carries ``observedGeneration``, a ``phase`` for printer columns and the
conditions ``Ready``, ``Reconciling`` and ``Degraded``.  The operator writes them (kopf does
not); ``fluxbee up`` ignores them.  Statuses are open (``extra="allow"``) so that a newer
operator's fields do not break an older reader.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ConditionType = Literal["Ready", "Reconciling", "Degraded"]
ConditionStatus = Literal["True", "False", "Unknown"]
Phase = Literal["Pending", "Reconciling", "Ready", "Degraded"]


class _Status(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )


class Condition(_Status):
    """One observation about the resource, in the Kubernetes condition convention."""

    type: ConditionType = Field(description="Ready, Reconciling or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase machine-readable reason.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, description="When the status of this condition last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed from."
    )


class ResourceStatus(_Status):
    """Fields every fluxbee.io status carries."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation last reconciled by the operator."
    )
    phase: Phase | None = Field(default=None, description="Summary for `kubectl get`.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Reconciling and Degraded conditions."
    )


class HiveStatus(ResourceStatus):
    """Observed state of a hive."""

    hive_id: str | None = Field(default=None, description="Effective hive id.")
    daemon_set: str | None = Field(default=None, description="Name of the hive's DaemonSet.")
    config_map: str | None = Field(default=None, description="Name of the hive config ConfigMap.")
    desired_pods: int | None = Field(default=None, ge=0, description="Hosts that should run it.")
    ready_pods: int | None = Field(default=None, ge=0, description="Hive pods that are ready.")
    link_certificate: str | None = Field(
        default=None, description="TLS Secret the hive's routers present on their links (mesh and gateway).")
    link_certificate_not_after: str | None = Field(
        default=None, description="When that certificate expires (RFC 3339); a generated one is renewed before.")
    gateway: str | None = Field(default=None, description="The gateway Deployment and Service (spec.wan).")
    identity: str | None = Field(
        default=None, description="How SY.identity runs here: primary (with its database) and/or replicas.")


class FluxNodeStatus(ResourceStatus):
    """Observed state of a node."""

    replicas: int | None = Field(default=None, ge=0, description="Pods that exist.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Pods that are ready.")
    runtime_version: str | None = Field(default=None, description="Resolved runtime version.")
    config_hash: str | None = Field(
        default=None, description="sha256 of the effective config the Pods run with."
    )
    degree_digest: str | None = Field(
        default=None, description="Digest of spec.degree as verified (recomputed from Modules)."
    )
    graduation: str | None = Field(
        default=None,
        description="`Verified`, or why the graduation does not verify (then no Pods run).",
    )


class RuntimeStatus(ResourceStatus):
    """Observed state of a runtime package."""

    image: str | None = Field(default=None, description="Image its nodes run.")
    command: list[str] = Field(default_factory=list, description="Resolved entry point.")


class ModuleStatus(ResourceStatus):
    """Content digest of a module."""

    sha256: str | None = Field(default=None, description="sha256 of spec.content (hex).")
    size: int | None = Field(default=None, ge=0, description="Content size in bytes.")
    signature: str | None = Field(
        default=None,
        description="Signature status. Modules are not signed one by one: `CoveredByDegree` "
        "means degrees (`pinnedBy`) pin this sha256 in their digest, which graduations sign "
        "(see those Degrees' `graduations`); `NotPinned`: no degree uses it.",
    )
    pinned_by: list[str] = Field(
        default_factory=list, description="Degrees of this namespace that pin this module."
    )


class DegreeStatus(ResourceStatus):
    """Digest of a degree and the modules it resolved."""

    digest: str | None = Field(
        default=None, description="sha256 over the canonical encoding of the pinned modules."
    )
    graduations: str | None = Field(
        default=None,
        description="Signature status: `verified/total` graduations of the FluxNodes of this "
        "namespace that run this degree (each checked with the identity public key).",
    )
    verified_graduations: int | None = Field(
        default=None, ge=0, description="Graduations whose Ed25519 signature and digest verify."
    )
    failed_graduations: int | None = Field(
        default=None, ge=0, description="Graduations that do not verify (see those FluxNodes)."
    )


class PolicyVersionStatus(_Status):
    """One compiled version the operator keeps (a ConfigMap holding its artefact)."""

    version: int = Field(ge=1, description="Policy version (strictly increasing per Policy).")
    sha256: str = Field(description="sha256 of the artefact bytes (what the routers check).")
    engine: str = Field(description="`wasm` (compiled by opa) or `regorus` (no opa where it was compiled).")
    config_map: str = Field(description="The ConfigMap whose binaryData holds the artefact.")
    source_sha256: str = Field(description="sha256 of the spec it was compiled from (rego, entrypoint, data).")


class PolicyHiveStatus(_Status):
    """What the operator delivered to one hive."""

    hive: str = Field(description="Hive resource name.")
    config_map: str = Field(description="The hive's policy ConfigMap, mounted into its routers.")
    version: int | None = Field(default=None, description="Version written into it, if any.")
    sha256: str | None = Field(default=None, description="sha256 of the artefact written into it.")
    state: str = Field(description="`Delivered`, or `Taken` (another Policy delivers to this hive).")
    message: str = Field(default="", description="Why, when not delivered.")


class PolicyAppliedStatus(_Status):
    """What a hive's router reports it runs (through the hive's admin API, which reaches it)."""

    version: int | None = Field(default=None, description="Policy version the router runs.")
    sha256: str | None = Field(default=None, description="sha256 of the artefact it runs.")
    engine: str | None = Field(default=None, description="`wasm` or `regorus`.")
    state: str | None = Field(default=None, description="The router's policy status: loaded, error or none.")
    error: str | None = Field(default=None, description="Why the router refused the last delivery, if it did.")
    reported_by: str | None = Field(default=None, description="The admin replica that read the router.")
    at: str | None = Field(default=None, description="When (RFC 3339).")


class PolicyStatus(ResourceStatus):
    """Compile result, stored versions and delivery of a policy."""

    sha256: str | None = Field(default=None, description="sha256 of spec.rego.")
    packages: list[str] = Field(default_factory=list, description="Rego packages it defines.")
    error: str | None = Field(default=None, description="The compile error, if any.")
    error_line: int | None = Field(default=None, description="Line of the compile error.")
    error_column: int | None = Field(default=None, description="Column of the compile error.")
    compiled_version: int | None = Field(default=None, description="Newest compiled version.")
    engine: str | None = Field(default=None, description="Engine of the delivered version: `wasm` or `regorus`.")
    compiler: str | None = Field(default=None, description="What compiled the delivered version, e.g. `opa 1.22.4`.")
    fallback_reason: str | None = Field(default=None, description="Why the delivered version has no WebAssembly.")
    delivered_version: int | None = Field(default=None, description="Version written to the hives' ConfigMaps.")
    delivered_sha256: str | None = Field(default=None, description="sha256 of the delivered artefact.")
    pinned_version: int | None = Field(default=None, description="spec.pinVersion when it is delivered.")
    versions: list[PolicyVersionStatus] = Field(default_factory=list, description="Versions kept, newest first.")
    hives: list[PolicyHiveStatus] = Field(default_factory=list, description="Delivery per hive.")
    applied: dict[str, PolicyAppliedStatus] = Field(
        default_factory=dict, description="Per Hive resource: the version its router runs, as reported by the "
        "hive's admin API (the router of the admin replica's host).")
