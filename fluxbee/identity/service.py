"""SY.identity: an ordinary SDK node that owns tenants, ILKs, channels, aliases and degrees.

Per request, in this order (the original's, with its bugs fixed):
authorise by the router-stamped ``routing.src_l2_name`` -> decode the payload
(unknown fields refused) -> DB_NOT_READY while the store is not open -> one
database transaction that validates before it writes -> apply the committed
change to the identity region -> reply ``<ACTION>_RESPONSE`` with the same
trace id.  Requests are handled one at a time, so the region sees changes in
commit order.  A restart rebuilds the region from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxbee.dataplane import identity_shm, wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, connect
from fluxbee.dataplane.wire import Message
from fluxbee.identity import degrees as dg
from fluxbee.identity import model as m
from fluxbee.identity.store import DATABASE, IdentityStore, StoreSettings

log = logging.getLogger(__name__)

_IGNORED = frozenset({wire.UNREACHABLE, wire.TTL_EXCEEDED, wire.CONFIG_CHANGED, wire.ANNOUNCE, wire.PROTOCOL_ERROR,
                      wire.WITHDRAW})


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """How SY.identity runs.  Built at the entry point (CLI) and passed in."""

    hive_id: str
    run_dir: Path
    dsn: str
    """PostgreSQL server URL (any database part is replaced by ``database``)."""
    database: str = DATABASE
    node_name: str = "SY.identity"
    frontdesk: str = "SY.frontdesk.gov"
    """The hive's identity front desk (``government.identity_frontdesk``), allowed to register and merge."""
    default_tenant: str = "fluxbee"
    max_ilks: int = 8192
    """Sizes the identity region (ILKs + aliases; channels x 2)."""
    key_path: Path | None = None
    """Ed25519 signing key (PEM); default ``run_dir/identity/signing.key``; public key next to it (``.pub``)."""
    merge_alias_ttl_s: int = 3600
    heartbeat_s: float = 2.0
    alias_gc_s: float = 30.0
    db_retry_s: float = 0.5

    @property
    def signing_key_path(self) -> Path:
        return self.key_path or self.run_dir / "identity" / "signing.key"


def _matches(name: str, base: str) -> bool:
    """``name`` (``X@hive``) is ``base`` on any hive."""
    return name.split("@", 1)[0] == base


class Authorizer:
    """The per-action allowlist of the original (§2.2), plus our own actions."""

    def __init__(self, hive_id: str, frontdesk: str) -> None:
        self.hive_id = hive_id
        self.frontdesk = frontdesk.split("@", 1)[0]

    def _base(self, sender: str) -> str:
        base = sender.split("@", 1)[0]
        if base.startswith("SY.orchestrator.relay."):
            return "SY.orchestrator"
        return base

    def allowed(self, action: str, sender: str | None) -> bool:
        if not sender:
            return False
        base = self._base(sender)
        hive = sender.split("@", 1)[1] if "@" in sender else ""
        frontdesk = base in ("SY.frontdesk.gov", self.frontdesk)
        self_ = base == "SY.identity" and hive == self.hive_id
        orchestrator = base == "SY.orchestrator"
        admin = base == "SY.admin"
        if action == m.ILK_PROVISION:
            return base.startswith("IO.")
        if action == m.ILK_REGISTER:
            return frontdesk or orchestrator or self_
        if action == m.ILK_ADD_CHANNEL:
            return frontdesk
        if action == m.ILK_UPDATE:
            return orchestrator or self_
        if action == m.TNT_CREATE:
            return frontdesk or admin
        if action in (m.TNT_APPROVE, m.ILK_LIST, m.ILK_GET, m.MODULE_PUT, m.DEGREE_CREATE):
            return admin
        if action == m.ILK_GRADUATE:
            return admin or orchestrator
        if action == m.GRADUATION_GET:
            return base.startswith(("AI.", "SY."))
        return action == m.IDENTITY_METRICS


class IdentityService:
    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self.auth = Authorizer(settings.hive_id, settings.frontdesk)
        self.store: IdentityStore | None = None
        self.region: identity_shm.IdentityRegionWriter | None = None
        self.key = dg.load_or_create_key(settings.signing_key_path)
        self.sender: NodeSender | None = None
        self.handled = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: dict[str, Callable[[Message, Any], Awaitable[dict[str, Any]]]] = {
            m.ILK_PROVISION: self._provision, m.ILK_REGISTER: self._register, m.ILK_ADD_CHANNEL: self._add_channel,
            m.ILK_UPDATE: self._update, m.TNT_CREATE: self._tnt_create, m.TNT_APPROVE: self._tnt_approve,
            m.IDENTITY_METRICS: self._metrics, m.ILK_GET: self._ilk_get, m.ILK_LIST: self._ilk_list,
            m.MODULE_PUT: self._module_put, m.DEGREE_CREATE: self._degree_create, m.ILK_GRADUATE: self._graduate,
            m.GRADUATION_GET: self._graduation_get,
        }

    # lifecycle -------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self.region = identity_shm.IdentityRegionWriter(s.hive_id, capacity=identity_shm.Capacity.for_ilks(s.max_ilks))
        try:
            sender, receiver = await connect(NodeConfig(name=s.node_name, run_dir=s.run_dir, persistent=True))
            self.sender = sender
            self._tasks = [
                asyncio.create_task(self._open_store(), name="identity-open-store"),
                asyncio.create_task(self._every(s.heartbeat_s, self._heartbeat), name="identity-heartbeat"),
                asyncio.create_task(self._every(s.alias_gc_s, self._gc), name="identity-alias-gc"),
            ]

            async def serve() -> None:
                async for message in receiver:
                    await self.handle(message)

            serving = asyncio.create_task(serve(), name="identity-serve")
            stopper = asyncio.create_task(stop.wait(), name="identity-stop")
            try:
                await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (serving, stopper, *self._tasks):
                    t.cancel()
                for t in (serving, stopper, *self._tasks):
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
                await sender.close()
            if serving.done() and not serving.cancelled() and serving.exception() is not None:
                raise serving.exception()  # type: ignore[misc]
        finally:
            if self.store is not None:
                await self.store.close()
            self.region.close()
            log.info("SY.identity stopped")

    async def _open_store(self) -> None:
        s = self.settings
        delay = s.db_retry_s
        while self.store is None:
            try:
                store = await IdentityStore.open(StoreSettings(
                    dsn=s.dsn, database=s.database, default_tenant=s.default_tenant,
                    merge_alias_ttl_s=s.merge_alias_ttl_s))
            except (OSError, m.IdentityError, Exception) as err:  # noqa: B014 - asyncpg raises many types
                if isinstance(err, asyncio.CancelledError):
                    raise
                log.warning("identity database not reachable (%s); answering DB_NOT_READY, will retry in %.1f s",
                            err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            snapshot = await store.snapshot()
            self._rebuild(snapshot)
            self.store = store
            log.info("SY.identity ready: region %s rebuilt with %d ILKs, %d channels, %d aliases",
                     self.region.name if self.region else "?", len(snapshot.ilks), len(snapshot.channels),
                     len(snapshot.aliases))

    async def _every(self, period: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await fn()
            except Exception:
                log.exception("periodic %s failed; will retry in %.1f s", fn.__name__, period)

    async def _heartbeat(self) -> None:
        if self.region is not None:
            self.region.heartbeat()

    async def _gc(self) -> None:
        if self.store is not None:
            change = await self.store.expire_aliases()
            if change:
                self.apply(change)

    # region ------------------------------------------------------------------
    def _rebuild(self, snapshot: m.Change) -> None:
        region = self.region
        if region is None:
            return
        with region.batch():
            region.clear()
            self._put(region, snapshot)

    def apply(self, change: m.Change) -> None:
        """Apply one committed change to the region (after the commit, never before)."""
        region = self.region
        if region is None or not change:
            return
        try:
            with region.batch():
                self._put(region, change)
        except identity_shm.IdentityShmError as err:
            log.error("identity region update failed (%s); the database is authoritative, lookups for the "
                      "changed records will miss until the next rebuild", err)

    @staticmethod
    def _put(region: identity_shm.IdentityRegionWriter, change: m.Change) -> None:
        for ilk_id in change.removed_ilks:
            region.remove_ilk(ilk_id)
        for old in change.removed_aliases:
            region.remove_alias(old)
        for rc in change.removed_channels:
            region.remove_channel(*rc)
        for ilk in change.ilks:
            region.put_ilk(ilk.ilk_id, tenant_id=ilk.tenant_id, ilk_type=ilk.ilk_type,
                           registration_status=ilk.registration_status, handler_node=ilk.handler_node)
        for old, canonical, expires in change.aliases:
            region.put_alias(old, canonical, expires)
        for ch in change.channels:
            region.put_channel(ch.channel_type, ch.address, ch.tenant_id, ilk_id=ch.ilk_id, ich_id=ch.ich_id)

    # dispatch ------------------------------------------------------------------
    async def handle(self, msg: Message) -> None:
        meta = msg.meta
        action = meta.msg
        if meta.type != wire.TYPE_SYSTEM or action is None or action in _IGNORED or action.endswith("_RESPONSE"):
            return
        if self.sender is None or msg.routing.src == self.sender.router_uuid:
            return
        sender_name = msg.routing.src_l2_name
        handler = self._handlers.get(action)
        reply_name = f"{action}_RESPONSE"
        started = time.perf_counter()
        try:
            if handler is None:
                reply_name = m.SYSTEM_ERROR
                raise m.IdentityError(m.INVALID_REQUEST, f"unknown action {action!r}", action=action)
            if not self.auth.allowed(action, sender_name):
                raise m.IdentityError(m.UNAUTHORIZED_REGISTRAR, f"{sender_name or '(no name)'} may not send {action}",
                                      action=action, src_uuid=msg.routing.src, src_l2_name=sender_name)
            body = await handler(msg, sender_name)
            payload = {"status": "ok", **body}
        except m.IdentityError as err:
            payload = err.payload()
        except Exception as err:  # a bug must answer, not hang the caller for 5 s
            log.exception("%s from %s failed", action, sender_name)
            payload = {"status": "error", "error_code": m.DB_WRITE_FAILED, "message": f"internal error: {err}"}
        self.handled += 1
        log.debug("%s from %s -> %s in %.1f ms", action, sender_name, payload.get("error_code", "ok"),
                  (time.perf_counter() - started) * 1000)
        try:
            await self.sender.reply(msg, payload, msg_type=wire.TYPE_SYSTEM, msg=reply_name)
        except Exception as err:
            log.warning("reply %s to %s lost: %s", reply_name, sender_name, err)

    def _ready(self) -> IdentityStore:
        if self.store is None:
            raise m.IdentityError(m.DB_NOT_READY, "the identity database is not ready yet; retry shortly")
        return self.store

    # actions ---------------------------------------------------------------------
    async def _provision(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.ProvisionReq)
        result, change = await self._ready().provision(req)
        self.apply(change)
        return result

    async def _register(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.RegisterReq)
        result, change = await self._ready().register(req, by)
        self.apply(change)
        return result

    async def _add_channel(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.AddChannelReq)
        result, change = await self._ready().add_channel(req, by)
        self.apply(change)
        return result

    async def _update(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.UpdateReq)
        result, change = await self._ready().update(req, by)
        self.apply(change)
        return result

    async def _tnt_create(self, msg: Message, by: str) -> dict[str, Any]:
        req = m.decode(msg.payload, m.TenantCreateReq)
        return await self._ready().tnt_create(req, may_activate=_matches(by, "SY.admin"))

    async def _tnt_approve(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().tnt_approve(m.decode(msg.payload, m.TenantApproveReq))

    async def _metrics(self, msg: Message, by: str) -> dict[str, Any]:
        metrics: dict[str, Any] = dict(await self._ready().metrics())
        if self.region is not None:
            metrics["region_data_version"] = self.region.data_version
        return {"metrics": metrics}

    async def _ilk_get(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().get_ilk(m.decode(msg.payload, m.IlkGetReq).ilk_id)

    async def _ilk_list(self, msg: Message, by: str) -> dict[str, Any]:
        m.decode(msg.payload, m.EmptyReq)
        ilks = await self._ready().list_ilks()
        return {"count": len(ilks), "ilks": ilks}

    async def _module_put(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().module_put(m.decode(msg.payload, m.ModulePutReq), by)

    async def _degree_create(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().degree_create(m.decode(msg.payload, m.DegreeCreateReq), by)

    async def _graduate(self, msg: Message, by: str) -> dict[str, Any]:
        return await self._ready().graduate(m.decode(msg.payload, m.GraduateReq), self.key, by)

    async def _graduation_get(self, msg: Message, by: str) -> dict[str, Any]:
        bundle = await self._ready().graduation_bundle(m.decode(msg.payload, m.IlkGetReq).ilk_id)
        bundle["public_key_pem"] = dg.public_pem(self.key.public_key()).decode()
        return bundle
