"""What every part of the identity store shares: settings, the database, row conversions and
:class:`StoreBase` (the pool, the row locks and :meth:`StoreBase._write`, the one way to write).

Every write is **one transaction** that validates first (rows locked with ``FOR UPDATE``), then
changes, then returns a :class:`~fluxbee.identity.model.Change` describing what the region must show.
Unique violations are mapped to the original's error codes by constraint name, never by message text.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fluxbee.dataplane.shm.identity import MAX_ADDRESS_BYTES, MAX_CHANNEL_TYPE_BYTES, normalise_channel
from fluxbee.identity.model import (
    DB_WRITE_FAILED,
    DUPLICATE_CONSTRAINT,
    DUPLICATE_EMAIL,
    DUPLICATE_ICH,
    DUPLICATE_NODE_NAME,
    ILK_NOT_FOUND,
    INVALID_REQUEST,
    INVALID_TENANT,
    Change,
    ChannelRecord,
    IdentityError,
    IlkRecord,
    TenantRecord,
    fmt,
)

log = logging.getLogger(__name__)

DATABASE = "fluxbee_identity"
_CONSTRAINT_CODES = {
    "identity_ilks_email": DUPLICATE_EMAIL,
    "identity_ilks_node_name": DUPLICATE_NODE_NAME,
    "identity_ichs_pkey": DUPLICATE_ICH,
    "identity_ichs_channel_type_address_tenant_id_key": DUPLICATE_ICH,
}


@dataclass(frozen=True, slots=True)
class StoreSettings:
    dsn: str
    """Server URL; its database part is replaced by ``database``."""
    database: str = DATABASE
    default_tenant: str = "fluxbee"
    """Name of the explicit default tenant (created active if absent, then found by its flag)."""
    merge_alias_ttl_s: int = 3600
    pool_size: int = 4


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def ensure_database(dsn: str, database: str) -> None:
    conn = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{database}"')
                log.info("created database %s", database)
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


def ilk_record(row: asyncpg.Record) -> IlkRecord:
    return IlkRecord(fmt("ilk", row["ilk_id"]), fmt("tnt", row["tenant_id"]), row["ilk_type"],
                     row["registration_status"], row["node_name"] or "", row["human_subtype"] or "",
                     tuple(row["capabilities"] or ()), tuple(row["roles"] or ()))


def tenant_record(row: asyncpg.Record) -> TenantRecord:
    return TenantRecord(fmt("tnt", row["tenant_id"]), row["name"], row["status"], bool(row["is_default"]))


def chan_record(row: asyncpg.Record) -> ChannelRecord:
    return ChannelRecord(row["channel_type"], row["address"], fmt("tnt", row["tenant_id"]), fmt("ilk", row["ilk_id"]),
                         fmt("ich", row["ich_id"]))


class StoreBase:
    """The pool and the helpers the store's parts share; :class:`IdentityStore` composes the parts."""

    def __init__(self, settings: StoreSettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.default_tenant_id: uuid.UUID | None = None
        self.committed_version = 0
        """``identity_version`` after the last write this store committed (one step per write)."""

    # ---------------------------------------------------------------- helpers
    async def _bump(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("UPDATE identity_version SET version = version + 1 WHERE id = 1 "
                                       "RETURNING version"))

    async def _history(self, conn: asyncpg.Connection, ilk: uuid.UUID, action: str, by: str | None,
                       reason: str | None) -> None:
        await conn.execute(
            "INSERT INTO identity_ilk_history (ilk_id, action, changed_by, change_reason, snapshot) "
            "SELECT ilk_id, $2, $3, $4, jsonb_build_object('ilk_type', ilk_type, 'registration_status', "
            "registration_status, 'tenant_id', tenant_id, 'identification', identification, 'roles', roles, "
            "'capabilities', capabilities) FROM identity_ilks WHERE ilk_id = $1", ilk, action, by, reason)

    async def _tenant(self, conn: asyncpg.Connection, tenant: uuid.UUID) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT * FROM identity_tenants WHERE tenant_id = $1", tenant)
        if row is None:
            raise IdentityError(INVALID_TENANT, f"tenant {fmt('tnt', tenant)} does not exist")
        return row

    async def _live_ilk(self, conn: asyncpg.Connection, ilk: uuid.UUID, code: str = ILK_NOT_FOUND) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT * FROM identity_ilks WHERE ilk_id = $1 FOR UPDATE", ilk)
        if row is None or row["deleted_at"] is not None:
            raise IdentityError(code, f"ILK {fmt('ilk', ilk)} does not exist or was deleted")
        return row

    async def _channels_of(self, conn: asyncpg.Connection, ilk: uuid.UUID) -> list[ChannelRecord]:
        rows = await conn.fetch("SELECT * FROM identity_ichs WHERE ilk_id = $1 ORDER BY added_at, ich_id", ilk)
        return [chan_record(r) for r in rows]

    async def _ilk_change(self, conn: asyncpg.Connection, ilk: uuid.UUID, change: Change) -> None:
        row = await conn.fetchrow("SELECT * FROM identity_ilks WHERE ilk_id = $1", ilk)
        if row is not None:
            change.ilks.append(ilk_record(row))

    async def _write(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one transaction; map database failures to the original's codes."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                result = await fn(conn, *args)
                version = await self._bump(conn)
            self.committed_version = version
            return result
        except IdentityError:
            raise
        except asyncpg.UniqueViolationError as err:
            code = _CONSTRAINT_CODES.get(err.constraint_name or "", DUPLICATE_CONSTRAINT)
            raise IdentityError(code, f"{err.constraint_name}: {err.detail or err}") from err
        except asyncpg.ForeignKeyViolationError as err:
            raise IdentityError(INVALID_TENANT if "tenant" in (err.constraint_name or "") else DB_WRITE_FAILED,
                                f"{err.constraint_name}: {err.detail or err}") from err
        except (asyncpg.PostgresError, OSError) as err:
            raise IdentityError(DB_WRITE_FAILED, f"database write failed: {err}") from err

    def _channel(self, ctype: str, address: str) -> tuple[str, str]:
        ct, addr = normalise_channel(ctype, address)
        if not ct or len(ct.encode()) > MAX_CHANNEL_TYPE_BYTES:
            raise IdentityError(INVALID_REQUEST, f"channel_type must be 1-{MAX_CHANNEL_TYPE_BYTES} bytes")
        if not addr or len(addr.encode()) > MAX_ADDRESS_BYTES:
            raise IdentityError(INVALID_REQUEST, f"address must be 1-{MAX_ADDRESS_BYTES} bytes")
        return ct, addr


def ilk_doc(row: asyncpg.Record, chans: list[ChannelRecord]) -> dict[str, Any]:
    ident = row["identification"] or {}
    return {
        "ilk_id": fmt("ilk", row["ilk_id"]), "ilk_type": row["ilk_type"],
        "registration_status": row["registration_status"], "tenant_id": fmt("tnt", row["tenant_id"]),
        "identification": ident, "display_name": ident.get("display_name") or row["node_name"] or None,
        "node_name": row["node_name"], "roles": list(row["roles"]), "capabilities": list(row["capabilities"]),
        "channels": [{"ich_id": c.ich_id, "type": c.channel_type, "address": c.address, "tenant_id": c.tenant_id}
                     for c in chans],
        "created_at": row["created_at"].isoformat(),
        "deleted_at_ms": int(row["deleted_at"].timestamp() * 1000) if row["deleted_at"] is not None else None,
    }


async def init_conn(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
