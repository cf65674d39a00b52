"""The identity store: PostgreSQL ``fluxbee_identity`` through asyncpg.

Every write is **one transaction** that validates first (rows locked with
``FOR UPDATE``), then changes, then returns a :class:`~fluxbee.identity.model.Change`
describing what the region must show.  Nothing is kept in process memory
between requests, so a refused or failed request cannot leave phantom state
(the original mutated memory before validating).  Unique violations are mapped
to the original's error codes by constraint name, never by message text.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fluxbee.dataplane.shm.identity import MAX_ADDRESS_BYTES, MAX_CHANNEL_TYPE_BYTES, normalise_channel
from fluxbee.identity import degrees as dg
from fluxbee.identity import migrations
from fluxbee.identity.model import (
    DB_WRITE_FAILED,
    DEGREE_EXISTS,
    DEGREE_NOT_FOUND,
    DUPLICATE_CONSTRAINT,
    DUPLICATE_EMAIL,
    DUPLICATE_ICH,
    DUPLICATE_NODE_NAME,
    ILK_NOT_FOUND,
    ILK_TYPES,
    INVALID_MERGE_SOURCE,
    INVALID_REQUEST,
    INVALID_TENANT,
    INVALID_TENANT_TRANSITION,
    MODULE_EXISTS,
    NOT_FOUND,
    TENANT_PENDING,
    TENANT_STATUSES,
    TENANT_SUSPENDED,
    AddChannelReq,
    Change,
    ChannelRecord,
    ChannelReq,
    DegreeCreateReq,
    GraduateReq,
    IdentityError,
    IlkRecord,
    ModulePutReq,
    ProvisionReq,
    RegisterReq,
    TenantApproveReq,
    TenantCreateReq,
    TenantRecord,
    UpdateReq,
    fmt,
    parse_id,
    tags,
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


def _ilk_record(row: asyncpg.Record) -> IlkRecord:
    return IlkRecord(fmt("ilk", row["ilk_id"]), fmt("tnt", row["tenant_id"]), row["ilk_type"],
                     row["registration_status"], row["node_name"] or "")


def _tenant_record(row: asyncpg.Record) -> TenantRecord:
    return TenantRecord(fmt("tnt", row["tenant_id"]), row["name"], row["status"], bool(row["is_default"]))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ilk_cursor(created_at: datetime, ilk_id: uuid.UUID) -> str:
    """An ILK_LIST cursor: the row's ``created_at`` in microseconds (PostgreSQL's precision) and id."""
    return f"{(created_at - _EPOCH) // timedelta(microseconds=1)}.{ilk_id.hex}"


def parse_ilk_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The ``(created_at, ilk_id)`` a cursor from :func:`ilk_cursor` names; INVALID_REQUEST otherwise."""
    micros, dot, hexid = cursor.partition(".")
    try:
        if not dot or not micros.isdigit() or len(hexid) != 32:
            raise ValueError(cursor)
        return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=hexid)
    except (ValueError, OverflowError):
        raise IdentityError(INVALID_REQUEST, f"cursor {cursor!r} is not a next_cursor of ILK_LIST") from None


def _chan_record(row: asyncpg.Record) -> ChannelRecord:
    return ChannelRecord(row["channel_type"], row["address"], fmt("tnt", row["tenant_id"]), fmt("ilk", row["ilk_id"]),
                         fmt("ich", row["ich_id"]))


class IdentityStore:
    """Open with :meth:`open`; every public coroutine is one transaction (or one read)."""

    def __init__(self, settings: StoreSettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.default_tenant_id: uuid.UUID | None = None
        self.committed_version = 0
        """``identity_version`` after the last write this store committed (one step per write)."""

    @classmethod
    async def open(cls, settings: StoreSettings) -> IdentityStore:
        await ensure_database(settings.dsn, settings.database)
        pool = await asyncpg.create_pool(with_database(settings.dsn, settings.database), min_size=1,
                                         max_size=settings.pool_size, init=_init_conn)
        store = cls(settings, pool)
        try:
            async with pool.acquire() as conn:
                applied = await migrations.migrate(conn)
            if applied:
                log.info("applied identity schema migrations %s", applied)
            await store.ensure_default_tenant()
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self.pool.close()

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
        return [_chan_record(r) for r in rows]

    async def _ilk_change(self, conn: asyncpg.Connection, ilk: uuid.UUID, change: Change) -> None:
        row = await conn.fetchrow("SELECT * FROM identity_ilks WHERE ilk_id = $1", ilk)
        if row is not None:
            change.ilks.append(_ilk_record(row))

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

    # ---------------------------------------------------------------- tenants
    async def ensure_default_tenant(self) -> uuid.UUID:
        """The default tenant is a row flagged ``is_default``, never "whichever comes first"."""
        async def run(conn: asyncpg.Connection) -> uuid.UUID:
            row = await conn.fetchrow("SELECT tenant_id FROM identity_tenants WHERE is_default")
            if row is not None:
                return uuid.UUID(str(row["tenant_id"]))
            name = self.settings.default_tenant
            row = await conn.fetchrow("SELECT tenant_id FROM identity_tenants WHERE lower(name) = lower($1) "
                                      "ORDER BY created_at LIMIT 1 FOR UPDATE", name)
            if row is not None:
                await conn.execute("UPDATE identity_tenants SET is_default = TRUE, status = 'active' "
                                   "WHERE tenant_id = $1", row["tenant_id"])
                return uuid.UUID(str(row["tenant_id"]))
            tid = uuid.uuid4()
            await conn.execute("INSERT INTO identity_tenants (tenant_id, name, status, is_default) "
                               "VALUES ($1, $2, 'active', TRUE)", tid, name)
            log.info("created the default tenant %s (%s)", name, fmt("tnt", tid))
            return tid

        self.default_tenant_id = await self._write(run)
        return self.default_tenant_id

    async def tnt_create(self, req: TenantCreateReq, *, may_activate: bool,
                         change: Change | None = None) -> dict[str, Any]:
        name = req.name.strip()
        if not name or len(name) > 128:
            raise IdentityError(INVALID_REQUEST, "name must be 1-128 characters")
        if req.status not in TENANT_STATUSES:
            raise IdentityError(INVALID_REQUEST, f"status must be one of {', '.join(TENANT_STATUSES)}")
        if req.status != "pending" and not may_activate:
            raise IdentityError(INVALID_REQUEST, "only SY.admin may create a tenant that is not pending; "
                                "create it pending and approve it with TNT_APPROVE")
        domain = (req.domain or "").strip().lower() or None
        wanted = parse_id(req.tenant_id, "tnt") if req.tenant_id is not None else None

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('identity_tenants'))")
            if wanted is not None:  # the caller names the id: another tenant's name or domain is no match
                row = await conn.fetchrow("SELECT tenant_id FROM identity_tenants WHERE tenant_id = $1", wanted)
                if row is not None:
                    return {"tenant_id": fmt("tnt", wanted), "created": False, "matched_by": "tenant_id"}
            else:
                if domain is not None:
                    row = await conn.fetchrow("SELECT tenant_id FROM identity_tenants WHERE lower(domain) = $1",
                                              domain)
                    if row is not None:
                        return {"tenant_id": fmt("tnt", row["tenant_id"]), "created": False, "matched_by": "domain"}
                row = await conn.fetchrow("SELECT tenant_id FROM identity_tenants WHERE lower(name) = lower($1) "
                                          "ORDER BY created_at LIMIT 1", name)
                if row is not None:
                    return {"tenant_id": fmt("tnt", row["tenant_id"]), "created": False, "matched_by": "name"}
            tid = wanted if wanted is not None else uuid.uuid4()
            await conn.execute("INSERT INTO identity_tenants (tenant_id, name, domain, status, settings) "
                               "VALUES ($1, $2, $3, $4, $5)", tid, name, domain, req.status, req.settings)
            if change is not None:
                change.tenants.append(TenantRecord(fmt("tnt", tid), name, req.status))
            return {"tenant_id": fmt("tnt", tid), "created": True, "matched_by": None}

        result: dict[str, Any] = await self._write(run)
        return result

    async def tnt_approve(self, req: TenantApproveReq, change: Change | None = None) -> dict[str, Any]:
        tid = parse_id(req.tenant_id, "tnt")
        by = parse_id(req.approved_by, "ilk", "approved_by")

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            await self._live_ilk(conn, by)
            done = await conn.execute("UPDATE identity_tenants SET status = 'active', approved_by = $2, "
                                      "approved_at = now(), updated_at = now() WHERE tenant_id = $1", tid, by)
            if done.endswith(" 0"):
                raise IdentityError(INVALID_TENANT, f"tenant {req.tenant_id} does not exist")
            if change is not None:
                change.tenants.append(_tenant_record(await self._tenant(conn, tid)))
            return {"tenant_id": fmt("tnt", tid), "approved_by": fmt("ilk", by)}

        result: dict[str, Any] = await self._write(run)
        return result

    # ---------------------------------------------------------------- ILKs
    def _channel(self, ctype: str, address: str) -> tuple[str, str]:
        ct, addr = normalise_channel(ctype, address)
        if not ct or len(ct.encode()) > MAX_CHANNEL_TYPE_BYTES:
            raise IdentityError(INVALID_REQUEST, f"channel_type must be 1-{MAX_CHANNEL_TYPE_BYTES} bytes")
        if not addr or len(addr.encode()) > MAX_ADDRESS_BYTES:
            raise IdentityError(INVALID_REQUEST, f"address must be 1-{MAX_ADDRESS_BYTES} bytes")
        return ct, addr

    async def provision(self, req: ProvisionReq) -> tuple[dict[str, Any], Change]:
        """Idempotent on the channel key: the existing ILK (any status), else a new human/temporary one."""
        ich = parse_id(req.ich_id, "ich")
        ctype, addr = self._channel(req.channel_type, req.address)
        tenant_in = parse_id(req.tenant_id, "tnt") if req.tenant_id else None
        change = Change()

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            tenant = tenant_in or self.default_tenant_id
            if tenant is None:
                raise IdentityError(DB_WRITE_FAILED, "no default tenant")
            await self._tenant(conn, tenant)
            row = await conn.fetchrow(
                "SELECT c.ilk_id, i.registration_status FROM identity_ichs c JOIN identity_ilks i USING (ilk_id) "
                "WHERE c.channel_type = $1 AND c.address = $2 AND c.tenant_id = $3", ctype, addr, tenant)
            if row is not None:
                return {"ilk_id": fmt("ilk", row["ilk_id"]), "registration_status": row["registration_status"]}
            ilk = uuid.uuid4()
            await conn.execute("INSERT INTO identity_ilks (ilk_id, ilk_type, registration_status, tenant_id) "
                               "VALUES ($1, 'human', 'temporary', $2)", ilk, tenant)
            await conn.execute("INSERT INTO identity_ichs (ich_id, ilk_id, tenant_id, channel_type, address, "
                               "is_primary) VALUES ($1, $2, $3, $4, $5, TRUE)", ich, ilk, tenant, ctype, addr)
            await self._history(conn, ilk, "provision", None, None)
            await self._ilk_change(conn, ilk, change)
            change.channels.append(ChannelRecord(ctype, addr, fmt("tnt", tenant), fmt("ilk", ilk), fmt("ich", ich)))
            return {"ilk_id": fmt("ilk", ilk), "registration_status": "temporary"}

        result: dict[str, Any] = await self._write(run)
        return result, change

    async def register(self, req: RegisterReq, by: str) -> tuple[dict[str, Any], Change]:
        ilk_in = parse_id(req.ilk_id, "ilk")
        tenant = parse_id(req.tenant_id, "tnt")
        if req.ilk_type not in ILK_TYPES:
            raise IdentityError(INVALID_REQUEST, f"ilk_type must be one of {', '.join(ILK_TYPES)}")
        roles = tags(req.roles, "role")
        caps = tags(req.capabilities, "capability")
        ident = dict(req.identification)
        email = ident.get("email")
        node_name = ident.get("node_name")
        if email is not None and not isinstance(email, str) or node_name is not None and not isinstance(node_name, str):
            raise IdentityError(INVALID_REQUEST, "identification.email and .node_name must be strings")
        email = email.strip().lower() or None if isinstance(email, str) else None
        node_name = node_name.strip() or None if isinstance(node_name, str) else None
        change = Change()

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            t = await self._tenant(conn, tenant)
            if t["status"] == "pending":
                raise IdentityError(TENANT_PENDING, f"tenant {req.tenant_id} is pending approval")
            if t["status"] == "suspended":
                raise IdentityError(TENANT_SUSPENDED, f"tenant {req.tenant_id} is suspended")
            ilk = ilk_in
            if node_name is not None:  # a node keeps its ILK across restarts
                row = await conn.fetchrow("SELECT ilk_id FROM identity_ilks WHERE node_name = $1 "
                                          "AND deleted_at IS NULL", node_name)
                if row is not None:
                    ilk = row["ilk_id"]
            row = await conn.fetchrow("SELECT * FROM identity_ilks WHERE ilk_id = $1 FOR UPDATE", ilk)
            if row is not None:
                if row["deleted_at"] is not None:
                    raise IdentityError(ILK_NOT_FOUND, f"ILK {fmt('ilk', ilk)} was deleted")
                if row["tenant_id"] != tenant and row["registration_status"] != "temporary":
                    raise IdentityError(INVALID_TENANT_TRANSITION,
                                        f"ILK {fmt('ilk', ilk)} is {row['registration_status']}; "
                                        "its tenant can change only while temporary")
                await conn.execute(
                    "UPDATE identity_ilks SET ilk_type = $2, tenant_id = $3, identification = $4, roles = $5, "
                    "capabilities = $6, email = $7, node_name = $8, registration_status = 'complete', "
                    "registered_by = $9, registered_at = coalesce(registered_at, now()), updated_at = now() "
                    "WHERE ilk_id = $1", ilk, req.ilk_type, tenant, ident, roles, caps, email, node_name, by)
            else:
                await conn.execute(
                    "INSERT INTO identity_ilks (ilk_id, ilk_type, registration_status, tenant_id, identification, "
                    "roles, capabilities, email, node_name, registered_by, registered_at) "
                    "VALUES ($1, $2, 'complete', $3, $4, $5, $6, $7, $8, $9, now())",
                    ilk, req.ilk_type, tenant, ident, roles, caps, email, node_name, by)
            await self._history(conn, ilk, "register", by, None)
            await self._ilk_change(conn, ilk, change)
            return {"ilk_id": fmt("ilk", ilk)}

        result: dict[str, Any] = await self._write(run)
        return result, change

    async def _add_channel(self, conn: asyncpg.Connection, ilk: asyncpg.Record, ch: ChannelReq,
                           change: Change) -> None:
        ich = parse_id(ch.ich_id, "ich", "channel.ich_id")
        ctype, addr = self._channel(ch.type, ch.address)
        tenant = ilk["tenant_id"]
        existing = await conn.fetchrow("SELECT * FROM identity_ichs WHERE (channel_type, address, tenant_id) = "
                                       "($1, $2, $3) OR ich_id = $4 FOR UPDATE", ctype, addr, tenant, ich)
        if existing is not None:
            if existing["ilk_id"] == ilk["ilk_id"]:
                return  # already there (e.g. moved by the merge just before)
            raise IdentityError(DUPLICATE_ICH, f"channel {ctype}:{addr} (or {ch.ich_id}) belongs to "
                                f"{fmt('ilk', existing['ilk_id'])}")
        has_primary = await conn.fetchval("SELECT count(*) FROM identity_ichs WHERE ilk_id = $1", ilk["ilk_id"])
        await conn.execute("INSERT INTO identity_ichs (ich_id, ilk_id, tenant_id, channel_type, address, is_primary) "
                           "VALUES ($1, $2, $3, $4, $5, $6)", ich, ilk["ilk_id"], tenant, ctype, addr,
                           has_primary == 0)
        change.channels.append(ChannelRecord(ctype, addr, fmt("tnt", tenant), fmt("ilk", ilk["ilk_id"]),
                                             fmt("ich", ich)))

    async def add_channel(self, req: AddChannelReq, by: str) -> tuple[dict[str, Any], Change]:
        target = parse_id(req.ilk_id, "ilk")
        source = parse_id(req.merge_from_ilk_id, "ilk", "merge_from_ilk_id") if req.merge_from_ilk_id else None
        change = Change()

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            ilk = await self._live_ilk(conn, target)
            if source is not None:
                if source == target:
                    raise IdentityError(INVALID_MERGE_SOURCE, "an ILK cannot be merged into itself")
                src = await self._live_ilk(conn, source, INVALID_MERGE_SOURCE)
                if src["registration_status"] != "temporary":
                    raise IdentityError(INVALID_MERGE_SOURCE, f"merge source {req.merge_from_ilk_id} is "
                                        f"{src['registration_status']}; only temporary ILKs can be merged")
                moved = await conn.fetch("UPDATE identity_ichs SET ilk_id = $2, is_primary = FALSE "
                                         "WHERE ilk_id = $1 RETURNING *", source, target)
                change.channels.extend(_chan_record(r) for r in moved)
                await conn.execute("UPDATE identity_ilks SET deleted_at = now(), updated_at = now() "
                                   "WHERE ilk_id = $1", source)
                expires = datetime.now(UTC) + timedelta(seconds=self.settings.merge_alias_ttl_s)
                await conn.execute("UPDATE identity_ilk_aliases SET canonical_ilk_id = $2 "
                                   "WHERE canonical_ilk_id = $1", source, target)
                await conn.execute("INSERT INTO identity_ilk_aliases (old_ilk_id, canonical_ilk_id, expires_at) "
                                   "VALUES ($1, $2, $3) ON CONFLICT (old_ilk_id) DO UPDATE SET "
                                   "canonical_ilk_id = EXCLUDED.canonical_ilk_id, expires_at = EXCLUDED.expires_at",
                                   source, target, expires)
                await self._history(conn, source, "merged_into:" + str(target), by, req.change_reason)
                for row in await conn.fetch("SELECT * FROM identity_ilk_aliases WHERE canonical_ilk_id = $1", target):
                    change.aliases.append((fmt("ilk", row["old_ilk_id"]), fmt("ilk", target),
                                           int(row["expires_at"].timestamp() * 1000)))
                change.removed_ilks.append(fmt("ilk", source))
            await self._add_channel(conn, ilk, req.channel, change)
            await conn.execute("UPDATE identity_ilks SET updated_at = now() WHERE ilk_id = $1", target)
            await self._history(conn, target, "add_channel", by, req.change_reason)
            await self._ilk_change(conn, target, change)
            return {"ilk_id": fmt("ilk", target), "change_reason": req.change_reason}

        result: dict[str, Any] = await self._write(run)
        return result, change

    async def update(self, req: UpdateReq, by: str) -> tuple[dict[str, Any], Change]:
        target = parse_id(req.ilk_id, "ilk")
        add_r, rm_r = tags(req.add_roles, "role"), tags(req.remove_roles, "role")
        add_c, rm_c = tags(req.add_capabilities, "capability"), tags(req.remove_capabilities, "capability")
        change = Change()

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            ilk = await self._live_ilk(conn, target)
            roles = sorted((set(ilk["roles"]) | set(add_r)) - set(rm_r))
            caps = sorted((set(ilk["capabilities"]) | set(add_c)) - set(rm_c))
            for ch in req.add_channels:
                await self._add_channel(conn, ilk, ch, change)
            await conn.execute("UPDATE identity_ilks SET roles = $2, capabilities = $3, updated_at = now() "
                               "WHERE ilk_id = $1", target, roles, caps)
            await self._history(conn, target, "update", by, req.change_reason)
            await self._ilk_change(conn, target, change)
            return {"ilk_id": fmt("ilk", target), "change_reason": req.change_reason}

        result: dict[str, Any] = await self._write(run)
        return result, change

    async def expire_aliases(self) -> Change:
        """Drop expired aliases (the merged ILKs stay soft-deleted)."""
        change = Change()

        async def run(conn: asyncpg.Connection) -> None:
            rows = await conn.fetch("DELETE FROM identity_ilk_aliases WHERE expires_at <= now() RETURNING old_ilk_id")
            change.removed_aliases.extend(fmt("ilk", r["old_ilk_id"]) for r in rows)

        await self._write(run)
        return change

    # ---------------------------------------------------------------- reads
    async def snapshot(self) -> Change:
        """Everything the region shows: live ILKs, their channels, unexpired aliases (and the tenants)."""
        return (await self.versioned_snapshot())[0]

    async def versioned_snapshot(self) -> tuple[Change, int]:
        """:meth:`snapshot` and the ``identity_version`` it shows, read in one repeatable-read transaction."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            version = int(await conn.fetchval("SELECT version FROM identity_version WHERE id = 1"))
            tenants = await conn.fetch("SELECT * FROM identity_tenants ORDER BY tenant_id")
            ilks = await conn.fetch("SELECT * FROM identity_ilks WHERE deleted_at IS NULL")
            chans = await conn.fetch("SELECT c.* FROM identity_ichs c JOIN identity_ilks i USING (ilk_id) "
                                     "WHERE i.deleted_at IS NULL")
            aliases = await conn.fetch("SELECT * FROM identity_ilk_aliases WHERE expires_at > now()")
        return Change(ilks=[_ilk_record(r) for r in ilks], channels=[_chan_record(r) for r in chans],
                      aliases=[(fmt("ilk", r["old_ilk_id"]), fmt("ilk", r["canonical_ilk_id"]),
                                int(r["expires_at"].timestamp() * 1000)) for r in aliases],
                      tenants=[_tenant_record(r) for r in tenants]), version

    async def metrics(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("""
                SELECT (SELECT count(*) FROM identity_tenants) AS tenant_count,
                       (SELECT count(*) FROM identity_ilks WHERE deleted_at IS NULL) AS ilk_count,
                       (SELECT count(*) FROM identity_ichs) AS ich_count,
                       (SELECT count(*) FROM identity_ilk_aliases WHERE expires_at > now()) AS alias_count,
                       (SELECT count(*) FROM identity_ilks WHERE deleted_at IS NOT NULL) AS deleted_ilk_count,
                       (SELECT version FROM identity_version WHERE id = 1) AS identity_version""")
        return {k: int(v) for k, v in dict(row).items()}

    async def lookup_channel(self, channel_type: str, address: str, tenant_id: str) -> str | None:
        """The DB twin of the region's channel lookup (one prepared point query)."""
        ctype, addr = normalise_channel(channel_type, address)
        async with self.pool.acquire() as conn:
            value = await conn.fetchval("SELECT ilk_id FROM identity_ichs WHERE channel_type = $1 AND address = $2 "
                                        "AND tenant_id = $3", ctype, addr, parse_id(tenant_id, "tnt"))
        return fmt("ilk", value) if value is not None else None

    async def get_ilk(self, ilk_id: str) -> dict[str, Any]:
        """ILK_GET: follows aliases; fields as the original's reply."""
        queried = parse_id(ilk_id, "ilk")
        async with self.pool.acquire() as conn:
            alias = await conn.fetchrow("SELECT canonical_ilk_id FROM identity_ilk_aliases WHERE old_ilk_id = $1 "
                                        "AND expires_at > now()", queried)
            canonical = alias["canonical_ilk_id"] if alias is not None else queried
            row = await conn.fetchrow("SELECT i.*, t.name AS tenant_name, t.status AS tenant_status, "
                                      "t.domain AS tenant_domain FROM identity_ilks i JOIN identity_tenants t "
                                      "USING (tenant_id) WHERE ilk_id = $1", canonical)
            if row is None:
                raise IdentityError(NOT_FOUND, f"ILK {ilk_id} does not exist")
            chans = await self._channels_of(conn, canonical)
            merged = await conn.fetch("SELECT old_ilk_id FROM identity_ilk_aliases WHERE canonical_ilk_id = $1 "
                                      "AND expires_at > now() ORDER BY old_ilk_id", canonical)
            grad = await conn.fetchrow("SELECT * FROM identity_graduations WHERE ilk_id = $1", canonical)
        ilk = _ilk_doc(row, chans)
        if grad is not None:
            ilk["degree"] = {"name": grad["degree_name"], "version": grad["degree_version"], "digest": grad["digest"],
                             "graduated_at": grad["graduated_at"].isoformat()}
        return {
            "ilk_id": fmt("ilk", canonical), "queried_ilk_id": fmt("ilk", queried),
            "canonical_ilk_id": fmt("ilk", canonical), "alias_resolved": alias is not None,
            "queried_alias": fmt("ilk", queried) if alias is not None else None,
            "merged_aliases": [fmt("ilk", r["old_ilk_id"]) for r in merged], "ilk": ilk,
            "tenant": {"tenant_id": fmt("tnt", row["tenant_id"]), "name": row["tenant_name"],
                       "domain": row["tenant_domain"], "status": row["tenant_status"]},
        }

    async def list_ilks(self, *, include_deleted: bool = True, limit: int | None = None,
                        after: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """ILK_LIST rows ``{ilk_id, ilk_type, registration_status, tenant_id, tenant_name, display_name,
        node_name, channel_count, channels, deleted_at_ms}``, each with its cursor, oldest first.

        Keyset paging on ``(created_at, ilk_id)``: ``after`` is a row's cursor (see
        :func:`ilk_cursor`) and the rows after it come next, so a page is one index range whatever
        its depth, and ILKs created while a client pages through arrive at the end, never twice.
        """
        where = [] if include_deleted else ["i.deleted_at IS NULL"]
        args: list[Any] = []
        if after is not None:
            created_at, ilk_id = parse_ilk_cursor(after)
            args += [created_at, ilk_id]
            where.append("(i.created_at, i.ilk_id) > ($1, $2)")
        sql = ("SELECT i.*, t.name AS tenant_name FROM identity_ilks i JOIN identity_tenants t USING (tenant_id) "
               + ("WHERE " + " AND ".join(where) + " " if where else "") + "ORDER BY i.created_at, i.ilk_id")
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
            chans = await conn.fetch("SELECT * FROM identity_ichs WHERE ilk_id = ANY($1::uuid[]) "
                                     "ORDER BY added_at, ich_id", [r["ilk_id"] for r in rows])
        by_ilk: dict[Any, list[ChannelRecord]] = {}
        for c in chans:
            by_ilk.setdefault(c["ilk_id"], []).append(_chan_record(c))
        out = []
        for r in rows:
            doc = _ilk_doc(r, by_ilk.get(r["ilk_id"], []))
            out.append((ilk_cursor(r["created_at"], r["ilk_id"]),
                        {k: doc[k] for k in ("ilk_id", "ilk_type", "registration_status", "tenant_id", "display_name",
                                             "node_name", "channels", "deleted_at_ms")}
                        | {"tenant_name": r["tenant_name"], "channel_count": len(doc["channels"])}))
        return out

    # ---------------------------------------------------------------- modules, degrees, graduation
    async def module_put(self, req: ModulePutReq, by: str) -> dict[str, Any]:
        if not req.name.strip() or not req.version.strip():
            raise IdentityError(INVALID_REQUEST, "module name and version must not be empty")
        digest = dg.module_digest(req.prompt_text)

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            old = await conn.fetchrow("SELECT sha256 FROM identity_modules WHERE name = $1 AND version = $2",
                                      req.name, req.version)
            if old is not None:
                if old["sha256"] == digest:
                    return {"name": req.name, "version": req.version, "sha256": digest, "created": False}
                raise IdentityError(MODULE_EXISTS, f"module {req.name}@{req.version} exists with another text; "
                                    "modules are immutable: publish a new version")
            await conn.execute("INSERT INTO identity_modules (name, version, prompt_text, sha256, description, "
                               "category, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)", req.name, req.version,
                               req.prompt_text, digest, req.description, req.category, by)
            return {"name": req.name, "version": req.version, "sha256": digest, "created": True}

        result: dict[str, Any] = await self._write(run)
        return result

    async def degree_create(self, req: DegreeCreateReq, by: str) -> dict[str, Any]:
        if not req.modules:
            raise IdentityError(INVALID_REQUEST, "a degree pins at least one module")

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            pinned: list[dg.PinnedModule] = []
            for ref in req.modules:
                row = await conn.fetchrow("SELECT sha256 FROM identity_modules WHERE name = $1 AND version = $2",
                                          ref.name, ref.version)
                if row is None:
                    raise IdentityError(NOT_FOUND, f"module {ref.name}@{ref.version} does not exist")
                pinned.append(dg.PinnedModule(ref.name, ref.version, row["sha256"]))
            digest = dg.degree_digest(pinned)
            old = await conn.fetchrow("SELECT digest FROM identity_degrees WHERE name = $1 AND version = $2",
                                      req.name, req.version)
            if old is not None:
                if old["digest"] == digest:
                    return {"name": req.name, "version": req.version, "digest": digest, "created": False}
                raise IdentityError(DEGREE_EXISTS, f"degree {req.name}@{req.version} exists with other modules")
            await conn.execute("INSERT INTO identity_degrees (name, version, modules, digest, description, created_by)"
                               " VALUES ($1, $2, $3, $4, $5, $6)", req.name, req.version,
                               [[m.name, m.version, m.sha256] for m in pinned], digest, req.description, by)
            return {"name": req.name, "version": req.version, "digest": digest, "created": True}

        result: dict[str, Any] = await self._write(run)
        return result

    async def graduate(self, req: GraduateReq, key: Any, by: str) -> dict[str, Any]:
        """Sign (ILK, degree, version, digest) and store it; re-graduating replaces it (the rollback path)."""
        ilk = parse_id(req.ilk_id, "ilk")

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            row = await self._live_ilk(conn, ilk)
            if row["ilk_type"] != "agent":
                raise IdentityError(INVALID_REQUEST, f"{req.ilk_id} is a {row['ilk_type']}; only agents graduate")
            deg = await conn.fetchrow("SELECT * FROM identity_degrees WHERE name = $1 AND version = $2",
                                      req.degree_name, req.degree_version)
            if deg is None:
                raise IdentityError(DEGREE_NOT_FOUND, f"degree {req.degree_name}@{req.degree_version} does not exist")
            grad = dg.sign_graduation(key, fmt("ilk", ilk), req.degree_name, req.degree_version, deg["digest"])
            await conn.execute(
                "INSERT INTO identity_graduations (ilk_id, degree_name, degree_version, digest, signature, key_id, "
                "graduated_by) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (ilk_id) DO UPDATE SET "
                "degree_name = EXCLUDED.degree_name, degree_version = EXCLUDED.degree_version, "
                "digest = EXCLUDED.digest, signature = EXCLUDED.signature, key_id = EXCLUDED.key_id, "
                "graduated_by = EXCLUDED.graduated_by, graduated_at = now()",
                ilk, grad.degree_name, grad.degree_version, grad.digest, grad.signature, grad.key_id, by)
            await self._history(conn, ilk, f"graduate:{req.degree_name}@{req.degree_version}", by, None)
            return grad.to_dict()

        result: dict[str, Any] = await self._write(run)
        return result

    async def graduation_bundle(self, ilk_id: str) -> dict[str, Any]:
        """What an agent verifies: its graduation and the pinned modules' texts."""
        ilk = parse_id(ilk_id, "ilk")
        async with self.pool.acquire() as conn:
            grad = await conn.fetchrow("SELECT * FROM identity_graduations WHERE ilk_id = $1", ilk)
            if grad is None:
                raise IdentityError(NOT_FOUND, f"{ilk_id} has no graduation")
            deg = await conn.fetchrow("SELECT * FROM identity_degrees WHERE name = $1 AND version = $2",
                                      grad["degree_name"], grad["degree_version"])
            modules = []
            for name, version, sha in deg["modules"]:
                text = await conn.fetchval("SELECT prompt_text FROM identity_modules WHERE name = $1 AND "
                                           "version = $2", name, version)
                modules.append({"name": name, "version": version, "sha256": sha, "prompt_text": text})
        return {"graduation": {"ilk_id": fmt("ilk", ilk), "degree_name": grad["degree_name"],
                               "degree_version": grad["degree_version"], "digest": grad["digest"],
                               "signature": grad["signature"], "key_id": grad["key_id"]},
                "degree": {"name": deg["name"], "version": deg["version"], "digest": deg["digest"]},
                "modules": modules}

    async def list_modules(self) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT name, version, sha256, description, category, created_at "
                                    "FROM identity_modules ORDER BY name, version")
        return [_module_doc(r) for r in rows]

    async def get_module(self, name: str, version: str | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        async with self.pool.acquire() as conn:
            if version is None:
                rows = await conn.fetch("SELECT name, version, sha256, description, category, created_at "
                                        "FROM identity_modules WHERE name = $1 ORDER BY created_at", name)
                if not rows:
                    raise IdentityError(NOT_FOUND, f"module {name} does not exist")
                return [_module_doc(r) for r in rows]
            row = await conn.fetchrow("SELECT * FROM identity_modules WHERE name = $1 AND version = $2", name, version)
        if row is None:
            raise IdentityError(NOT_FOUND, f"module {name}@{version} does not exist")
        return _module_doc(row) | {"prompt_text": row["prompt_text"]}


def _module_doc(r: asyncpg.Record) -> dict[str, Any]:
    return {"name": r["name"], "version": r["version"], "sha256": r["sha256"], "description": r["description"],
            "category": r["category"], "created_at": r["created_at"].isoformat()}


def _ilk_doc(row: asyncpg.Record, chans: list[ChannelRecord]) -> dict[str, Any]:
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


async def _init_conn(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
