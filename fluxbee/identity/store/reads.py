"""Reads of the identity store: the region snapshot, metrics, lookups, ILK_GET and paged ILK_LIST."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fluxbee.dataplane.shm.identity import normalise_channel
from fluxbee.identity.model import INVALID_REQUEST, NOT_FOUND, Change, ChannelRecord, IdentityError, fmt, parse_id
from fluxbee.identity.store.base import StoreBase, chan_record, ilk_doc, ilk_record, tenant_record

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


class IdentityReads(StoreBase):
    """Reads take one connection (the snapshot one repeatable-read transaction) and no row locks."""

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
        return Change(ilks=[ilk_record(r) for r in ilks], channels=[chan_record(r) for r in chans],
                      aliases=[(fmt("ilk", r["old_ilk_id"]), fmt("ilk", r["canonical_ilk_id"]),
                                int(r["expires_at"].timestamp() * 1000)) for r in aliases],
                      tenants=[tenant_record(r) for r in tenants]), version

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
        ilk = ilk_doc(row, chans)
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
            by_ilk.setdefault(c["ilk_id"], []).append(chan_record(c))
        out = []
        for r in rows:
            doc = ilk_doc(r, by_ilk.get(r["ilk_id"], []))
            out.append((ilk_cursor(r["created_at"], r["ilk_id"]),
                        {k: doc[k] for k in ("ilk_id", "ilk_type", "registration_status", "tenant_id", "display_name",
                                             "node_name", "channels", "deleted_at_ms")}
                        | {"tenant_name": r["tenant_name"], "channel_count": len(doc["channels"])}))
        return out
