"""ILK writes of the identity store: provision, register, channels (and merges), updates, alias expiry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from fluxbee.identity.model import (
    DB_WRITE_FAILED,
    DUPLICATE_ICH,
    HUMAN_SUBTYPES,
    ILK_NOT_FOUND,
    ILK_TYPES,
    INVALID_MERGE_SOURCE,
    INVALID_REQUEST,
    INVALID_TENANT_TRANSITION,
    TENANT_PENDING,
    TENANT_SUSPENDED,
    AddChannelReq,
    Change,
    ChannelRecord,
    ChannelReq,
    IdentityError,
    ProvisionReq,
    RegisterReq,
    UpdateReq,
    fmt,
    parse_id,
    tags,
)
from fluxbee.identity.store.base import StoreBase, chan_record


class IlkWrites(StoreBase):
    """ILK writes, each one transaction that returns the :class:`~fluxbee.identity.model.Change` to show."""

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
                    "human_subtype = CASE WHEN $10 THEN human_subtype END, "
                    "registered_by = $9, registered_at = coalesce(registered_at, now()), updated_at = now() "
                    "WHERE ilk_id = $1", ilk, req.ilk_type, tenant, ident, roles, caps, email, node_name, by,
                    req.ilk_type == "human")
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
                change.channels.extend(chan_record(r) for r in moved)
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
        if req.human_subtype not in (None, "", *HUMAN_SUBTYPES):
            raise IdentityError(INVALID_REQUEST, f"human_subtype must be one of {', '.join(HUMAN_SUBTYPES)} "
                                                 "(or empty to clear)")
        change = Change()

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            ilk = await self._live_ilk(conn, target)
            roles = sorted((set(ilk["roles"]) | set(add_r)) - set(rm_r))
            caps = sorted((set(ilk["capabilities"]) | set(add_c)) - set(rm_c))
            subtype = ilk["human_subtype"] if req.human_subtype is None else (req.human_subtype or None)
            if subtype is not None and ilk["ilk_type"] != "human":
                raise IdentityError(INVALID_REQUEST, f"ILK {req.ilk_id} is a {ilk['ilk_type']}; "
                                                     "only a human ILK has a human_subtype")
            for ch in req.add_channels:
                await self._add_channel(conn, ilk, ch, change)
            await conn.execute("UPDATE identity_ilks SET roles = $2, capabilities = $3, human_subtype = $4, "
                               "updated_at = now() WHERE ilk_id = $1", target, roles, caps, subtype)
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
