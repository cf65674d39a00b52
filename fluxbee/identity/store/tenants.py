"""Tenant writes of the identity store: the default tenant, TNT_CREATE and TNT_APPROVE."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg

from fluxbee.identity.model import (
    INVALID_REQUEST,
    INVALID_TENANT,
    TENANT_STATUSES,
    Change,
    IdentityError,
    TenantApproveReq,
    TenantCreateReq,
    TenantRecord,
    fmt,
    parse_id,
)
from fluxbee.identity.store.base import StoreBase, tenant_record

log = logging.getLogger(__name__)


class TenantWrites(StoreBase):
    """Tenants: created pending unless SY.admin asks otherwise; one default tenant, found by its flag."""

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
                change.tenants.append(tenant_record(await self._tenant(conn, tid)))
            return {"tenant_id": fmt("tnt", tid), "approved_by": fmt("ilk", by)}

        result: dict[str, Any] = await self._write(run)
        return result
