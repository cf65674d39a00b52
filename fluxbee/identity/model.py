"""Identity vocabulary: id formats, message names, error codes, payload structs (pure)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import msgspec

from fluxbee.dataplane.shm.identity_records import IlkInfo
from fluxbee.errors import CodedError

# message names (meta.msg), as in the original; replies are <NAME>_RESPONSE
ILK_PROVISION: Final = "ILK_PROVISION"
ILK_REGISTER: Final = "ILK_REGISTER"
ILK_ADD_CHANNEL: Final = "ILK_ADD_CHANNEL"
ILK_UPDATE: Final = "ILK_UPDATE"
TNT_CREATE: Final = "TNT_CREATE"
TNT_APPROVE: Final = "TNT_APPROVE"
IDENTITY_METRICS: Final = "IDENTITY_METRICS"
ILK_GET: Final = "ILK_GET"
ILK_LIST: Final = "ILK_LIST"
# ours: modules, degrees, graduation
MODULE_PUT: Final = "MODULE_PUT"
MODULE_LIST: Final = "MODULE_LIST"
MODULE_GET: Final = "MODULE_GET"
DEGREE_CREATE: Final = "DEGREE_CREATE"
ILK_GRADUATE: Final = "ILK_GRADUATE"
GRADUATION_GET: Final = "GRADUATION_GET"
SYSTEM_ERROR: Final = "SYSTEM_ERROR"

# error codes, as in the original (clients branch on them)
INVALID_REQUEST: Final = "INVALID_REQUEST"
INVALID_TENANT: Final = "INVALID_TENANT"
TENANT_PENDING: Final = "TENANT_PENDING"
VOCABULARY_INVALID: Final = "VOCABULARY_INVALID"
ILK_NOT_FOUND: Final = "ILK_NOT_FOUND"
INVALID_TENANT_TRANSITION: Final = "INVALID_TENANT_TRANSITION"
DUPLICATE_EMAIL: Final = "DUPLICATE_EMAIL"
DUPLICATE_NODE_NAME: Final = "DUPLICATE_NODE_NAME"
DUPLICATE_ICH: Final = "DUPLICATE_ICH"
DUPLICATE_CONSTRAINT: Final = "DUPLICATE_CONSTRAINT"
DB_WRITE_FAILED: Final = "DB_WRITE_FAILED"
RESPONSE_TOO_LARGE: Final = "RESPONSE_TOO_LARGE"
DB_NOT_READY: Final = "DB_NOT_READY"
INVALID_MERGE_SOURCE: Final = "INVALID_MERGE_SOURCE"
UNAUTHORIZED_REGISTRAR: Final = "UNAUTHORIZED_REGISTRAR"
NOT_PRIMARY: Final = "NOT_PRIMARY"
NOT_FOUND: Final = "NOT_FOUND"
# ours
TENANT_SUSPENDED: Final = "TENANT_SUSPENDED"
MODULE_EXISTS: Final = "MODULE_EXISTS"
DEGREE_EXISTS: Final = "DEGREE_EXISTS"
DEGREE_NOT_FOUND: Final = "DEGREE_NOT_FOUND"

WRITE_ACTIONS: Final = frozenset({ILK_PROVISION, ILK_REGISTER, ILK_ADD_CHANNEL, ILK_UPDATE, TNT_CREATE, TNT_APPROVE,
                                  MODULE_PUT, DEGREE_CREATE, ILK_GRADUATE})
"""Mutations: a replica answers them with NOT_PRIMARY."""
PRIMARY_READS: Final = frozenset({ILK_GET, ILK_LIST, GRADUATION_GET})
"""Reads that need the database (full records, module texts): a replica answers NOT_PRIMARY too, with where
the primary is; the SDK retries there.  A replica serves IDENTITY_METRICS and the identity region itself."""

ILK_TYPES: Final = ("human", "agent", "system")
TENANT_STATUSES: Final = ("pending", "active", "suspended")
_TAG = re.compile(r"^[a-z0-9_]+$")


class IdentityError(CodedError):
    """A request the identity service refuses; ``code`` is one of the codes above, ``extra`` more
    fields of the error reply."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(code, detail)
        self.extra = extra

    def payload(self) -> dict[str, Any]:
        """The error reply (the original's field names: the detail goes in ``message``)."""
        return {"status": "error", "error_code": self.code, "message": self.detail, **self.extra}


def parse_id(value: object, prefix: str, what: str | None = None) -> uuid.UUID:
    """``prefix:<uuid>`` (trimmed, exact prefix) -> UUID; anything else is INVALID_REQUEST."""
    label = what or f"{prefix} id"
    if not isinstance(value, str):
        raise IdentityError(INVALID_REQUEST, f"{label} must be a string like {prefix}:<uuid>")
    text = value.strip()
    if not text.startswith(prefix + ":"):
        raise IdentityError(INVALID_REQUEST, f"{label} {value!r} must start with {prefix}:")
    try:
        return uuid.UUID(text[len(prefix) + 1:])
    except ValueError:
        raise IdentityError(INVALID_REQUEST, f"{label} {value!r} is not a UUID") from None


def fmt(prefix: str, value: uuid.UUID) -> str:
    return f"{prefix}:{value}"


HUMAN_SUBTYPES: Final = ("internal", "external")
"""Ours: what ILK_UPDATE may set as a human ILK's ``human_subtype`` (routing policies read it)."""


def tags(values: list[str], what: str) -> list[str]:
    """Trim, lowercase, check ``[a-z0-9_]+``, sort, de-duplicate (VOCABULARY_INVALID otherwise)."""
    out: set[str] = set()
    for v in values:
        t = v.strip().lower()
        if not _TAG.match(t):
            raise IdentityError(VOCABULARY_INVALID, f"{what} {v!r} must match [a-z0-9_]+")
        out.add(t)
    return sorted(out)


# ------------------------------------------------------------------ payloads (unknown fields refused)


class _P(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class ProvisionReq(_P):
    ich_id: str
    channel_type: str
    address: str
    tenant_id: str | None = None


class RegisterReq(_P):
    ilk_id: str
    ilk_type: str
    tenant_id: str
    identification: dict[str, Any] = msgspec.field(default_factory=dict)
    roles: list[str] = msgspec.field(default_factory=list)
    capabilities: list[str] = msgspec.field(default_factory=list)


class ChannelReq(_P):
    ich_id: str
    type: str
    address: str


class AddChannelReq(_P):
    ilk_id: str
    channel: ChannelReq
    merge_from_ilk_id: str | None = None
    change_reason: str | None = None


class UpdateReq(_P):
    ilk_id: str
    add_channels: list[ChannelReq] = msgspec.field(default_factory=list)
    add_roles: list[str] = msgspec.field(default_factory=list)
    remove_roles: list[str] = msgspec.field(default_factory=list)
    add_capabilities: list[str] = msgspec.field(default_factory=list)
    remove_capabilities: list[str] = msgspec.field(default_factory=list)
    human_subtype: str | None = None
    """Ours: ``"internal"`` or ``"external"`` (a human ILK only), ``""`` to clear, absent = unchanged."""
    change_reason: str | None = None


class TenantCreateReq(_P):
    name: str
    domain: str | None = None
    status: str = "pending"
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    tenant_id: str | None = None
    """Ours: create the tenant under this id (``tnt:<uuid>``), or find it by id; never matched by name."""


class TenantApproveReq(_P):
    tenant_id: str
    approved_by: str


class IlkGetReq(_P):
    ilk_id: str


class EmptyReq(_P):
    pass


ILK_PAGE_MAX: Final = 1000
"""Most ILKs in one ILK_LIST page (fewer when their encoded size would not fit in a frame)."""


class IlkListReq(_P):
    """ILK_LIST: one page after ``cursor`` (the ``next_cursor`` of the page before), at most ``limit``."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=ILK_PAGE_MAX)] | None = None
    cursor: str | None = None


class ModulePutReq(_P):
    name: str
    version: str
    prompt_text: str
    description: str = ""
    category: str = ""


class ModuleGetReq(_P):
    name: str
    version: str | None = None


class ModuleRef(_P):
    name: str
    version: str


class DegreeCreateReq(_P):
    name: str
    version: str
    modules: list[ModuleRef]
    description: str = ""


class GraduateReq(_P):
    ilk_id: str
    degree_name: str
    degree_version: str


def decode(payload: Any, kind: type[msgspec.Struct]) -> Any:
    """Payload (already JSON-decoded) -> struct, or INVALID_REQUEST saying what is wrong."""
    if payload is None:
        payload = {}
    try:
        return msgspec.convert(payload, kind)
    except msgspec.ValidationError as err:
        raise IdentityError(INVALID_REQUEST, f"invalid payload: {err}") from None


# ------------------------------------------------------------------ committed changes (for the region)


IlkRecord = IlkInfo
"""An ILK as committed: the very record the identity region publishes and its readers return
(defined once, in the data plane, which must not import the identity service)."""


@dataclass(frozen=True, slots=True)
class TenantRecord:
    tenant_id: str
    name: str
    status: str
    is_default: bool = False


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    channel_type: str
    address: str
    tenant_id: str
    ilk_id: str
    ich_id: str


@dataclass(slots=True)
class Change:
    """What one committed transaction changed: applied to the identity region, and sent to replicas.

    Records are whole (an upsert replaces the previous record), so applying a
    change twice is harmless.
    """

    ilks: list[IlkRecord] = field(default_factory=list)
    removed_ilks: list[str] = field(default_factory=list)
    channels: list[ChannelRecord] = field(default_factory=list)
    removed_channels: list[tuple[str, str, str]] = field(default_factory=list)
    aliases: list[tuple[str, str, int]] = field(default_factory=list)
    removed_aliases: list[str] = field(default_factory=list)
    tenants: list[TenantRecord] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ilks or self.removed_ilks or self.channels or self.removed_channels or self.aliases
                    or self.removed_aliases or self.tenants)
