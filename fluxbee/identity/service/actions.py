"""SY.identity's actions: decode the request, run it on the store, show the committed change.

Writes return the :class:`~fluxbee.identity.model.Change` the store committed; it goes to the region
(and, at the end of the request, to the replicas) through :meth:`RegionKeeper._commit`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fluxbee.dataplane import names, wire
from fluxbee.dataplane.wire import Message
from fluxbee.identity import degrees as dg
from fluxbee.identity import model as m
from fluxbee.identity import sync
from fluxbee.identity.service.auth import matches_base
from fluxbee.identity.service.regions import RegionKeeper


class ActionHandlers(RegionKeeper):
    """One coroutine per action, ``(message, sender name) -> reply body``; errors raise ``IdentityError``."""

    def _action_handlers(self) -> dict[str, Callable[[Message, Any], Awaitable[dict[str, Any]]]]:
        return {
            m.ILK_PROVISION: self._provision, m.ILK_REGISTER: self._register, m.ILK_ADD_CHANNEL: self._add_channel,
            m.ILK_UPDATE: self._update, m.TNT_CREATE: self._tnt_create, m.TNT_APPROVE: self._tnt_approve,
            m.IDENTITY_METRICS: self._metrics, m.ILK_GET: self._ilk_get, m.ILK_LIST: self._ilk_list,
            m.MODULE_PUT: self._module_put,
            m.MODULE_LIST: self._module_list, m.MODULE_GET: self._module_get,
            m.DEGREE_CREATE: self._degree_create, m.ILK_GRADUATE: self._graduate,
            m.GRADUATION_GET: self._graduation_get, sync.SYNC_SUBSCRIBE: self._no_handler,
        }

    async def _provision(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.ProvisionReq)
        result, change = await self._ready().provision(req)
        self._commit(change)
        return result

    async def _register(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.RegisterReq)
        result, change = await self._ready().register(req, by)
        self._commit(change)
        return result

    async def _add_channel(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.AddChannelReq)
        result, change = await self._ready().add_channel(req, by)
        self._commit(change)
        return result

    async def _update(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.UpdateReq)
        result, change = await self._ready().update(req, by)
        self._commit(change)
        return result

    async def _tnt_create(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.TenantCreateReq)
        change = m.Change()
        result = await self._ready().tnt_create(req, may_activate=matches_base(by, names.ADMIN_NODE), change=change)
        self._commit(change)
        return result

    async def _tnt_approve(self, msg: Message, by: str) -> dict[str, Any]:
        change = m.Change()
        result = await self._ready().tnt_approve(m.decode(msg.payload, m.TenantApproveReq), change)
        self._commit(change)
        return result

    async def _metrics(self, msg: Message, by: str) -> dict[str, Any]:
        if not self.is_primary:
            return {"metrics": self._replica_metrics()}
        metrics: dict[str, Any] = dict(await self._ready().metrics())
        metrics |= {"role": "primary", "epoch": self.epoch, "published_version": self._published,
                    "subscribers": len(self.subscribers)}
        if self.region is not None:
            metrics["region_data_version"] = self.region.data_version
        metrics["jsr_region"] = self._jsr_status()
        return {"metrics": metrics}

    def _replica_metrics(self) -> dict[str, Any]:
        ilks, aliases, channels = self.region.counts() if self.region is not None else (0, 0, 0)
        t = self.tracker
        return {"role": "replica", "primary": self.settings.primary_name, "tenant_count": len(self.tenants),
                "ilk_count": ilks, "ich_count": channels, "alias_count": aliases,
                "region_data_version": self.region.data_version if self.region is not None else 0,
                "jsr_region": self._jsr_status(),
                "sync": {"synced": t.synced, "epoch": t.epoch, "version": t.version, "full_syncs": t.full_syncs,
                         "resyncs": dict(t.resyncs), "heartbeats": t.heartbeats}}

    async def _no_handler(self, msg: Message, by: str) -> dict[str, Any]:
        raise AssertionError("bug: handled before dispatch")

    async def _ilk_get(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().get_ilk(m.decode(msg.payload, m.IlkGetReq).ilk_id)

    async def _ilk_list(self, msg: Message, by: str) -> dict[str, Any]:
        """One page of ILKs: at most ``limit`` and no more than fit in one frame once encoded.

        A reply is one frame: ~450 ILKs with their channels already outgrow 128 KiB, and a reply
        that cannot be sent leaves the asker waiting for its timeout.  ``next_cursor`` (None on
        the last page) continues the listing.
        """
        req = m.decode(msg.payload, m.IlkListReq)
        want = req.limit or m.ILK_PAGE_MAX
        rows = await self._ready().list_ilks(limit=want + 1, after=req.cursor)
        page: list[dict[str, Any]] = []
        used = 200  # the reply's own keys and a cursor
        for _, doc in rows[:want]:
            size = len(wire.encode(doc)) + 1
            if page and used + size > wire.PAYLOAD_BUDGET:
                break
            used += size
            page.append(doc)
        next_cursor = rows[len(page) - 1][0] if len(page) < len(rows) else None
        return {"count": len(page), "ilks": page, "next_cursor": next_cursor}

    async def _module_put(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().module_put(m.decode(msg.payload, m.ModulePutReq), by)

    async def _module_list(self, msg: Message, by: str) -> dict[str, Any]:
        m.decode(msg.payload, m.EmptyReq)
        modules = await self._ready().list_modules()
        return {"count": len(modules), "modules": modules}

    async def _module_get(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.ModuleGetReq)
        found = await self._ready().get_module(req.name, req.version)
        return {"name": req.name, "versions": found} if req.version is None else {"module": found}

    async def _degree_create(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().degree_create(m.decode(msg.payload, m.DegreeCreateReq), by)

    async def _graduate(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().graduate(m.decode(msg.payload, m.GraduateReq), self._key(), by)

    async def _graduation_get(self, msg: Message, by: str) -> dict[str, Any]:
        bundle = await self._ready().graduation_bundle(m.decode(msg.payload, m.IlkGetReq).ilk_id)
        bundle["public_key_pem"] = dg.public_pem(self._key().public_key()).decode()
        return bundle

    def _key(self) -> Any:
        if self.key is None:
            raise AssertionError("bug: a replica reached a signing action")
        return self.key

