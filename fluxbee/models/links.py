"""The Hive's link and identity settings: ``spec.wan``, ``spec.meshPort``, ``spec.identity``.

Routers of one hive *mesh* (every host's router, the gateway and the identity pod reach each other
over TCP with mutual TLS); hives link through their *gateway* (``spec.wan``).  Both roles present the
same certificate, which names the hive (URI SAN ``fluxbee://hive/<hive-id>``): the user's own
(``spec.wan.certificate``) or one the operator issues from a CA it keeps.

Addresses are ``HOST:PORT`` with HOST a DNS name, an IPv4 address or a bracketed IPv6 address, and
PORT 1–65535; the same pattern reaches the CRD, so ``kubectl apply`` refuses what ``fluxbee up`` would.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

HIVE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_HOST = r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
ADDRESS_RE = re.compile(rf"^{_HOST}:{_PORT}$")
"""``HOST:PORT`` as a router dials or listens on it."""
DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A Service name (RFC 1035 label, as Kubernetes requires of Service names)."""
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SECRET_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")

DEFAULT_WAN_PORT = 9000
"""The inter-hive gateway port of the original's port map."""
DEFAULT_MESH_PORT = 9001
"""Router-to-router port inside a hive (not in the original, which had no mesh)."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def address_problem(value: str) -> str | None:
    """Why ``value`` is not ``HOST:PORT`` (None when it is)."""
    if not ADDRESS_RE.match(value):
        return (f"{value!r} is not HOST:PORT (a DNS name, an IPv4 address or [IPv6], then a port 1-65535)")
    return None


def _address(value: str) -> str:
    problem = address_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def port_of(address: str) -> int:
    """The port of a valid ``HOST:PORT``."""
    return int(address.rsplit(":", 1)[1])


class UplinkSpec(_Model):
    """One hive the gateway dials: an address, or a Service of this cluster (another hive's gateway)."""

    address: str | None = Field(
        default=None, max_length=300, description="HOST:PORT to dial.",
        json_schema_extra={"pattern": ADDRESS_RE.pattern},
    )
    service: str | None = Field(
        default=None, description="Name of a Service in this cluster, e.g. another hive's `<hive>-gateway`.",
        json_schema_extra={"pattern": DNS_LABEL_RE.pattern, "maxLength": 63},
    )
    namespace: str | None = Field(
        default=None, description="Namespace of `service` (default: the hive's own).",
        json_schema_extra={"pattern": NAMESPACE_RE.pattern, "maxLength": 63},
    )
    port: int | None = Field(default=None, ge=1, le=65535,
                             description=f"Port of `service` (default {DEFAULT_WAN_PORT}).")

    @field_validator("address")
    @classmethod
    def _addr(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)

    @field_validator("service")
    @classmethod
    def _service(cls, value: str | None) -> str | None:
        if value is not None and not DNS_LABEL_RE.match(value):
            raise ValueError(f"service {value!r} is not a Service name (RFC 1035 label)")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not NAMESPACE_RE.match(value):
            raise ValueError(f"namespace {value!r} is not a namespace name")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> UplinkSpec:
        if (self.address is None) == (self.service is None):
            raise ValueError("an uplink names exactly one of address or service")
        if self.address is not None and (self.namespace is not None or self.port is not None):
            raise ValueError("namespace and port go with service, not with address")
        return self

    def target(self, own_namespace: str) -> str:
        """The ``HOST:PORT`` the gateway dials (a Service by its cluster DNS name)."""
        if self.address is not None:
            return self.address
        return f"{self.service}.{self.namespace or own_namespace}.svc:{self.port or DEFAULT_WAN_PORT}"


class CertificateRef(_Model):
    """A TLS Secret of the user's: ``tls.crt`` (naming this hive), ``tls.key`` and ``ca.crt``."""

    secret_name: str = Field(
        description="Secret in the hive's namespace with keys tls.crt, tls.key and ca.crt; the operator "
        "reads it and never writes it.",
        json_schema_extra={"pattern": SECRET_NAME_RE.pattern, "maxLength": 253},
    )

    @field_validator("secret_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SECRET_NAME_RE.match(value):
            raise ValueError(f"secretName {value!r} is not a Secret name")
        return value


_HiveId = Annotated[str, Field(json_schema_extra={"pattern": HIVE_ID_PATTERN, "maxLength": 63})]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]


class WanSpec(_Model):
    """The hive's gateway to other hives: a Deployment of one router and its Service."""

    listen: str = Field(
        default=f"0.0.0.0:{DEFAULT_WAN_PORT}", max_length=300,
        description="HOST:PORT the gateway router listens on for other hives.",
        json_schema_extra={"pattern": ADDRESS_RE.pattern},
    )
    uplinks: list[UplinkSpec] = Field(default_factory=list, max_length=64, description="Hives the gateway dials.")
    authorized_hives: list[_HiveId] = Field(
        default_factory=list, max_length=256, json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Hive ids allowed to link (empty: any hive whose certificate the CA signed).",
    )
    certificate: CertificateRef | None = Field(
        default=None,
        description="The hive's own TLS Secret; without it the operator issues `<hive>-wan-tls` from its CA.",
    )
    service_type: ServiceType = Field(default="ClusterIP", description="Type of the `<hive>-gateway` Service.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _address(value)

    @field_validator("authorized_hives")
    @classmethod
    def _hives(cls, value: list[str]) -> list[str]:
        for hive in value:
            if not re.match(HIVE_ID_PATTERN, hive):
                raise ValueError(f"authorizedHives: {hive!r} is not a hive id ({HIVE_ID_PATTERN})")
        if len(set(value)) != len(value):
            raise ValueError("authorizedHives lists a hive twice")
        return value


class SecretKeyRef(_Model):
    """One key of a Secret in the hive's namespace."""

    name: str = Field(description="Secret name.", json_schema_extra={"pattern": SECRET_NAME_RE.pattern,
                                                                      "maxLength": 253})
    key: str = Field(default="url", min_length=1, max_length=253, description="Key holding the value.")


DatabaseMode = Literal["bundled", "url"]


class IdentityDatabaseSpec(_Model):
    """Where SY.identity keeps its data on the mother hive."""

    mode: DatabaseMode = Field(
        default="bundled",
        description="bundled: a PostgreSQL StatefulSet with a PersistentVolumeClaim made by the operator; "
        "url: a server you run, named by `urlSecret`.",
    )
    url_secret: SecretKeyRef | None = Field(
        default=None, description="Secret key with the PostgreSQL URL (mode url).")
    image: str | None = Field(
        default=None, max_length=512,
        description="PostgreSQL image (mode bundled); default the operator's FLUXBEE_POSTGRES_IMAGE.")
    storage: str = Field(default="1Gi", description="Size of the data volume (mode bundled).",
                         json_schema_extra={"pattern": QUANTITY_RE.pattern})
    storage_class_name: str | None = Field(
        default=None, max_length=253, description="StorageClass of the data volume (default: the cluster's).")

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        if not QUANTITY_RE.match(value):
            raise ValueError(f"storage {value!r} is not a quantity such as 1Gi")
        return value

    @model_validator(mode="after")
    def _url_needs_secret(self) -> IdentityDatabaseSpec:
        if self.mode == "url" and self.url_secret is None:
            raise ValueError("database mode url needs urlSecret")
        if self.mode == "bundled" and self.url_secret is not None:
            raise ValueError("urlSecret goes with database mode url")
        return self


class IdentitySpec(_Model):
    """SY.identity: the primary (mother hive) and one replica per hive pod."""

    enabled: bool = Field(default=True, description="Run SY.identity (primary on a motherbee, replicas everywhere).")
    primary_hive: str | None = Field(
        default=None,
        description="Hive id of the mother hive whose SY.identity the replicas follow (a worker's must be set "
        "for it to run replicas; a motherbee's replicas follow the hive itself).",
        json_schema_extra={"pattern": HIVE_ID_PATTERN},
    )
    database: IdentityDatabaseSpec = Field(
        default_factory=lambda: IdentityDatabaseSpec(), description="The primary's PostgreSQL (motherbee only).")

    @field_validator("primary_hive")
    @classmethod
    def _hive(cls, value: str | None) -> str | None:
        if value is not None and not re.match(HIVE_ID_PATTERN, value):
            raise ValueError(f"primaryHive {value!r} is not a hive id ({HIVE_ID_PATTERN})")
        return value
