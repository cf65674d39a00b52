"""SY.identity: an ordinary SDK node that owns tenants, ILKs, channels, aliases and degrees.

Per request, in this order (the original's, with its bugs fixed):
authorise by the router-stamped ``routing.src_l2_name`` -> decode the payload
(unknown fields refused) -> DB_NOT_READY while the store is not open -> one
database transaction that validates before it writes -> apply the committed
change to the identity region -> reply ``<ACTION>_RESPONSE`` with the same
trace id.  Requests are handled one at a time, so the region sees changes in
commit order.  A restart rebuilds the region from the database.

Primary and replicas (:mod:`fluxbee.identity.sync`): an instance started with
``primary`` set is a **replica**: it has no database, answers mutations (and
the reads that need full records) with ``NOT_PRIMARY`` naming the primary,
serves IDENTITY_METRICS itself, and fills its own hive's identity region from
the primary's full sync and deltas, resyncing whenever its copy may be stale.
The primary publishes one delta per committed write, in commit order, while
holding the write lock (which also serialises the alias GC and snapshots for
new subscribers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxbee.dataplane import names, wire
from fluxbee.dataplane.sdk import FrameTooLargeError, NodeConfig, NodeSender, connect
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.dataplane.shm import identity_jsid
from fluxbee.dataplane.wire import Message
from fluxbee.identity import degrees as dg
from fluxbee.identity import model as m
from fluxbee.identity import sync
from fluxbee.identity.store import DATABASE, IdentityStore, StoreSettings

log = logging.getLogger(__name__)

_SYNC = frozenset({sync.SYNC_SUBSCRIBE, *sync.FROM_PRIMARY})
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
    node_name: str = names.IDENTITY_NODE
    frontdesk: str = names.FRONTDESK_NODE
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
    primary: str | None = None
    """L2 name of the primary (``SY.identity@motherbee``).  Set: this instance is a replica (no database,
    NOT_PRIMARY for writes, region filled by replication).  ``@hive_id`` is appended when absent."""
    region_hive: str | None = None
    """Hive whose identity region this instance writes (default ``hive_id``): lets a second instance on one
    hive (a co-located replica, tests) keep its own region."""
    sync_heartbeat_s: float = 1.0
    """Primary: how often subscribers get the current ``(epoch, version)``."""
    jsr_region: bool = True
    """Also publish ``/jsr-identity-<region hive>`` in the original's layout (for nodes built with the
    original SDKs), sized by ``max_ilks``; written in the same batch as our own region."""
    sync_timeout_s: float = 5.0
    """Replica: silence from the primary after which it subscribes again (full resync)."""
    sync_retry_s: float = 0.5
    """Replica: first delay between subscription attempts while no full sync arrived (doubles up to
    ``sync_timeout_s``)."""

    @property
    def signing_key_path(self) -> Path:
        return self.key_path or self.run_dir / "identity" / "signing.key"

    @property
    def primary_name(self) -> str | None:
        if self.primary is None:
            return None
        return self.primary if "@" in self.primary else f"{self.primary}@{self.hive_id}"

    @property
    def region_hive_id(self) -> str:
        return self.region_hive or self.hive_id


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
        if base.startswith(f"{names.ORCHESTRATOR_NODE}.relay."):
            return names.ORCHESTRATOR_NODE
        return base

    def allowed(self, action: str, sender: str | None) -> bool:
        if not sender:
            return False
        base = self._base(sender)
        hive = sender.split("@", 1)[1] if "@" in sender else ""
        frontdesk = base in (names.FRONTDESK_NODE, self.frontdesk)
        self_ = base == names.IDENTITY_NODE and hive == self.hive_id
        orchestrator = base == names.ORCHESTRATOR_NODE
        admin = base == names.ADMIN_NODE
        if action == m.ILK_PROVISION:
            return base.startswith("IO.")
        if action == m.ILK_REGISTER:  # SY.admin: the node ILK it registers at spawn (it is the orchestrator here)
            return frontdesk or orchestrator or admin or self_
        if action == m.ILK_ADD_CHANNEL:
            return frontdesk
        if action == m.ILK_UPDATE:
            return orchestrator or self_
        if action == m.TNT_CREATE:
            return frontdesk or admin
        if action in (m.TNT_APPROVE, m.ILK_LIST, m.ILK_GET, m.MODULE_PUT, m.MODULE_LIST, m.MODULE_GET,
                      m.DEGREE_CREATE):
            return admin
        if action == m.ILK_GRADUATE:
            return admin or orchestrator
        if action == m.GRADUATION_GET:
            return base.startswith(("AI.", names.SYSTEM_PREFIX))
        if action == sync.SYNC_SUBSCRIBE:
            return base == names.IDENTITY_NODE or base.startswith(f"{names.IDENTITY_NODE}.")
        return action == m.IDENTITY_METRICS


class IdentityService:
    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self.auth = Authorizer(settings.hive_id, settings.frontdesk)
        self.store: IdentityStore | None = None
        self.region: identity_shm.IdentityRegionWriter | None = None
        self.is_primary = settings.primary is None
        # Only the primary signs graduations; a replica must not mint a key of its own.
        self.key = dg.load_or_create_key(settings.signing_key_path) if self.is_primary else None
        self.sender: NodeSender | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # primary: write ordering and replication
        self.epoch = str(uuid.uuid4())
        self._lock = asyncio.Lock()
        self._pending = m.Change()
        self._published = 0
        self.subscribers: dict[str, str] = {}
        """Replica UUID -> name."""
        # replica
        self.tracker = sync.ReplicaTracker()
        self.tenants: dict[str, m.TenantRecord] = {}
        self._jsr_dropped_logged = 0
        self._heard = 0.0
        self._chunk_at = 0.0
        """When the last full-sync chunk arrived: an unsynced replica waits on this, not on heartbeats (which
        keep coming from a primary that still lists it, even when the subscription itself was lost)."""
        self._subscribed_at = 0.0
        self._resync = asyncio.Event()
        self._handlers: dict[str, Callable[[Message, Any], Awaitable[dict[str, Any]]]] = {
            m.ILK_PROVISION: self._provision, m.ILK_REGISTER: self._register, m.ILK_ADD_CHANNEL: self._add_channel,
            m.ILK_UPDATE: self._update, m.TNT_CREATE: self._tnt_create, m.TNT_APPROVE: self._tnt_approve,
            m.IDENTITY_METRICS: self._metrics, m.ILK_GET: self._ilk_get, m.ILK_LIST: self._ilk_list,
            m.MODULE_PUT: self._module_put,
            m.MODULE_LIST: self._module_list, m.MODULE_GET: self._module_get,
            m.DEGREE_CREATE: self._degree_create, m.ILK_GRADUATE: self._graduate,
            m.GRADUATION_GET: self._graduation_get, sync.SYNC_SUBSCRIBE: self._no_handler,
        }

    # lifecycle -------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self.region = identity_shm.IdentityRegionWriter(
            s.region_hive_id, capacity=identity_shm.Capacity.for_ilks(s.max_ilks), is_primary=self.is_primary,
            run_dir=s.run_dir, mirror=self._jsr_region())
        try:
            sender, receiver = await connect(NodeConfig(name=s.node_name, run_dir=s.run_dir, persistent=True))
            self.sender = sender
            self._tasks = [asyncio.create_task(self._every(s.heartbeat_s, self._heartbeat), name="identity-heartbeat")]
            if self.is_primary:
                self._tasks += [
                    asyncio.create_task(self._open_store(), name="identity-open-store"),
                    asyncio.create_task(self._every(s.alias_gc_s, self._gc), name="identity-alias-gc"),
                    asyncio.create_task(self._every(s.sync_heartbeat_s, self._sync_heartbeat),
                                        name="identity-sync-heartbeat"),
                ]
            else:
                self._tasks.append(asyncio.create_task(self._replica_loop(), name="identity-replica-sync"))
                log.info("SY.identity %s is a replica of %s; region %s", s.node_name, s.primary_name,
                         self.region.name)

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

    def _jsr_region(self) -> identity_jsid.JsidRegionWriter | None:
        """The original-layout region, or None (disabled, or another live writer holds the name)."""
        s = self.settings
        if not s.jsr_region:
            return None
        try:
            limits = identity_jsid.JsidLimits.for_ilks(s.max_ilks)
            return identity_jsid.JsidRegionWriter(s.region_hive_id, limits=limits, is_primary=self.is_primary)
        except identity_jsid.JsidError as err:
            log.warning("not publishing the original-layout identity region: %s; nodes built with the original "
                        "SDKs on this host read that one", err)
            return None

    def jsr_dropped(self) -> dict[str, int]:
        """Records the original-layout region could not hold (by reason), for status and metrics."""
        mirror = self.region.mirror if self.region is not None else None
        return dict(mirror.dropped) if isinstance(mirror, identity_jsid.JsidRegionWriter) else {}

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
            async with self._lock:
                snapshot, version = await store.versioned_snapshot()
                self._rebuild(snapshot)
                store.committed_version = self._published = version
                self.store = store
            log.info("SY.identity ready (primary, epoch %s, version %d): region %s rebuilt with %d ILKs, "
                     "%d channels, %d aliases", self.epoch, version, self.region.name if self.region else "?",
                     len(snapshot.ilks), len(snapshot.channels), len(snapshot.aliases))
            await self._announce_primary()

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
        if self.store is None:
            return
        async with self._lock:
            try:
                self._commit(await self.store.expire_aliases())
            finally:
                await self._flush()

    # region ------------------------------------------------------------------
    def _rebuild(self, snapshot: m.Change) -> None:
        region = self.region
        if region is None:
            return
        with region.batch():
            region.clear()
            self._put(region, snapshot)
        self._report_jsr_drops()

    def _commit(self, change: m.Change) -> None:
        """A write committed: show it in the region now, and send it to replicas at :meth:`_flush`."""
        self._pending = change
        self.apply(change)

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
        self._report_jsr_drops()

    @staticmethod
    def _put(region: identity_shm.IdentityRegionWriter, change: m.Change) -> None:
        for tenant in change.tenants:
            region.put_tenant(tenant.tenant_id, name=tenant.name, status=tenant.status)
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
        if meta.type != wire.TYPE_SYSTEM or action is None:
            return
        if action == wire.UNREACHABLE and self.is_primary:
            self._on_unreachable(msg)
            return
        if action in _IGNORED or action.endswith("_RESPONSE"):
            return
        if self.sender is None or msg.routing.src == self.sender.router_uuid:
            return
        if action in sync.FROM_PRIMARY:
            self._on_from_primary(msg, action)
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
            if not self.is_primary and (action in m.WRITE_ACTIONS or action in m.PRIMARY_READS):
                primary = self.settings.primary_name or ""
                raise m.IdentityError(
                    m.NOT_PRIMARY, f"{self.settings.node_name}@{self.settings.hive_id} is a replica; "
                    f"send {action} to the primary {primary}", action=action,
                    replica_hive_id=self.settings.hive_id, primary=primary,
                    primary_hive_id=primary.split("@", 1)[1] if "@" in primary else None)
            if action == sync.SYNC_SUBSCRIBE:
                await self._on_subscribe(msg, sender_name or "")
                return
            if self.is_primary:
                async with self._lock:
                    try:
                        body = await handler(msg, sender_name)
                    finally:
                        await self._flush()
            else:
                body = await handler(msg, sender_name)
            payload = {"status": "ok", **body}
        except m.IdentityError as err:
            payload = err.payload()
        except Exception as err:  # a bug must answer, not hang the caller for 5 s
            log.exception("%s from %s failed", action, sender_name)
            payload = {"status": "error", "error_code": m.DB_WRITE_FAILED, "message": f"internal error: {err}"}
        log.debug("%s from %s -> %s in %.1f ms", action, sender_name, payload.get("error_code", "ok"),
                  (time.perf_counter() - started) * 1000)
        try:
            try:
                await self.sender.reply(msg, payload, msg_type=wire.TYPE_SYSTEM, msg=reply_name)
            except FrameTooLargeError as err:  # say so, rather than leave the asker to its timeout
                log.error("%s to %s does not fit in a frame: %s", reply_name, sender_name, err)
                await self.sender.reply(msg, {"status": "error", "error_code": m.RESPONSE_TOO_LARGE,
                                              "message": f"the {reply_name} answer does not fit in a frame "
                                                         f"({err.size} > {err.max_size} bytes)"},
                                        msg_type=wire.TYPE_SYSTEM, msg=reply_name)
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
        result = await self._ready().tnt_create(req, may_activate=_matches(by, names.ADMIN_NODE), change=change)
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

    def _jsr_status(self) -> dict[str, Any]:
        mirror = self.region.mirror if self.region is not None else None
        if not isinstance(mirror, identity_jsid.JsidRegionWriter):
            return {"published": False}
        return {"published": True, "name": mirror.name, "counts": mirror.counts(), "dropped": dict(mirror.dropped)}

    def _report_jsr_drops(self) -> None:
        """Log when the original-layout region starts to leave records out (once per new total)."""
        total = sum(self.jsr_dropped().values())
        if total > self._jsr_dropped_logged:
            log.warning("the original-layout identity region is full or a record does not fit its fields; "
                        "left out so far: %s (raise --max-ilks; lookups by nodes built with the original SDKs "
                        "miss these records)", self.jsr_dropped())
        self._jsr_dropped_logged = total

    def _replica_metrics(self) -> dict[str, Any]:
        ilks, aliases, channels = self.region.counts() if self.region is not None else (0, 0, 0)
        t = self.tracker
        return {"role": "replica", "primary": self.settings.primary_name, "tenant_count": len(self.tenants),
                "ilk_count": ilks, "ich_count": channels, "alias_count": aliases,
                "region_data_version": self.region.data_version if self.region is not None else 0,
                "jsr_region": self._jsr_status(),
                "sync": {"synced": t.synced, "epoch": t.epoch, "version": t.version, "full_syncs": t.full_syncs,
                         "resyncs": dict(t.resyncs)}}

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

    # replication: primary side ------------------------------------------------------
    async def _send(self, dst: str, msg: str, body: Any) -> bool:
        if self.sender is None:
            return False
        try:
            await self.sender.send(dst, sync.to_payload(body), msg_type=wire.TYPE_SYSTEM, msg=msg)
        except Exception as err:  # a frame too large, the router gone: the replica resyncs on the gap
            log.warning("%s to %s not sent (%s); the replica will notice the gap and resync", msg, dst, err)
            return False
        return True

    async def _flush(self) -> None:
        """Send the delta of the write just committed (called with the lock held, after every handler)."""
        store = self.store
        change, self._pending = self._pending, m.Change()
        if store is None or store.committed_version <= self._published:
            return
        version = store.committed_version
        if version != self._published + 1:
            log.warning("identity_version jumped from %d to %d (another writer on the database?); replicas "
                        "will resync", self._published, version)
        self._published = version
        delta = sync.Delta(self.epoch, version, change)
        for dst in list(self.subscribers):
            await self._send(dst, sync.DELTA, delta)

    async def _on_subscribe(self, msg: Message, by: str) -> None:
        """Register the replica and send it a full snapshot at version N; deltas > N follow (lock held)."""
        try:
            req = sync.decode(msg.payload, sync.Subscribe)
        except sync.SyncProtocolError as err:
            log.warning("subscription from %s refused: %s", by, err)
            return
        store = self.store
        if store is None:
            log.info("subscription from %s before the database is ready; it will retry", by)
            return
        src = msg.routing.src
        async with self._lock:
            snapshot, version = await store.versioned_snapshot()
            for old, name in list(self.subscribers.items()):
                if name == by and old != src:
                    del self.subscribers[old]
            self.subscribers[src] = by
            chunks = sync.chunk_snapshot(snapshot, epoch=self.epoch, version=version)
            for chunk in chunks:
                if not await self._send(src, sync.FULL_SYNC, chunk):
                    self.subscribers.pop(src, None)
                    return
        log.info("replica %s (hive %s, had epoch %s version %d) subscribed: full sync at version %d in %d "
                 "chunk(s)", by, req.replica_hive_id, req.have_epoch or "-", req.have_version, version, len(chunks))

    async def _sync_heartbeat(self) -> None:
        if not self.subscribers or self.store is None:
            return
        async with self._lock:
            beat = sync.Heartbeat(self.epoch, self._published)
            for dst in list(self.subscribers):
                await self._send(dst, sync.SYNC_HEARTBEAT, beat)

    async def _announce_primary(self) -> None:
        """Tell replicas on this router that a (new) primary is up, so they resync now, not at their timeout."""
        if self.sender is None:
            return
        try:
            await self.sender.send(wire.BROADCAST, sync.to_payload(sync.Heartbeat(self.epoch, self._published)),
                                   msg_type=wire.TYPE_SYSTEM, msg=sync.PRIMARY_READY,
                                   meta=wire.Meta(type=wire.TYPE_SYSTEM, msg=sync.PRIMARY_READY,
                                                  target=f"{names.IDENTITY_NODE}*"))
        except Exception as err:
            log.warning("could not announce the primary (%s); replicas resync at their timeout", err)

    def _on_unreachable(self, msg: Message) -> None:
        body = msg.payload if isinstance(msg.payload, dict) else {}
        dst = str(body.get("original_dst", ""))
        name = self.subscribers.pop(dst, None)
        if name is not None:
            log.info("replica %s (%s) is gone (%s); dropped its subscription", name, dst, body.get("reason"))

    # replication: replica side ------------------------------------------------------
    def _on_from_primary(self, msg: Message, action: str) -> None:
        if self.is_primary:
            return
        sender_name = msg.routing.src_l2_name
        if sender_name != self.settings.primary_name:
            log.warning("%s from %s ignored: only %s feeds this replica", action, sender_name,
                        self.settings.primary_name)
            return
        self._heard = time.monotonic()
        t = self.tracker
        try:
            if action == sync.FULL_SYNC:
                self._chunk_at = self._heard
                snapshot = t.on_chunk(sync.decode(msg.payload, sync.FullSyncChunk))
                if snapshot is not None:
                    self.tenants = {r.tenant_id: r for r in snapshot.tenants}
                    self._rebuild(snapshot)
                    log.info("full sync from %s: epoch %s version %d, %d ILKs, %d channels, %d aliases",
                             sender_name, t.epoch, t.version, len(snapshot.ilks), len(snapshot.channels),
                             len(snapshot.aliases))
            elif action == sync.DELTA:
                change = t.on_delta(sync.decode(msg.payload, sync.Delta))
                if change is not None:
                    for r in change.tenants:
                        self.tenants[r.tenant_id] = r
                    self.apply(change)
            elif action == sync.SYNC_HEARTBEAT:
                t.on_heartbeat(sync.decode(msg.payload, sync.Heartbeat))
            elif action == sync.PRIMARY_READY:
                beat = sync.decode(msg.payload, sync.Heartbeat)
                if beat.epoch != t.epoch:
                    raise sync.ResyncNeededError(sync.EPOCH, f"primary {sender_name} started with epoch {beat.epoch}")
        except sync.ResyncNeededError as err:
            log.warning("replica copy is stale (%s); subscribing again for a full resync", err)
            t.reset(err.reason)
            self._resync.set()
        except sync.SyncProtocolError as err:
            log.error("%s from %s does not decode (%s); subscribing again for a full resync", action,
                      sender_name, err)
            t.reset("protocol")
            self._resync.set()

    async def _replica_loop(self) -> None:
        """Subscribe until a full sync arrives; subscribe again on a resync request or the primary's silence."""
        s = self.settings
        primary, sender = s.primary_name, self.sender
        if primary is None or sender is None:
            raise RuntimeError("bug: the replica loop needs a primary name and a connection")
        retry = s.sync_retry_s
        tick = min(0.1, s.sync_timeout_s / 4)
        while True:
            now = time.monotonic()
            t = self.tracker
            last = max(self._chunk_at, self._subscribed_at)
            silent = t.synced and now - self._heard > s.sync_timeout_s
            due = self._resync.is_set() or silent or (not t.synced and now - last > retry)
            if due:
                if silent:
                    log.warning("nothing from %s for %.1f s; subscribing again for a full resync", primary,
                                now - self._heard)
                    t.reset(sync.SILENCE)
                if self._resync.is_set() or silent:
                    retry = s.sync_retry_s
                elif self._subscribed_at:
                    retry = min(retry * 2, s.sync_timeout_s)
                self._resync.clear()
                self._subscribed_at = now
                try:
                    await asyncio.wait_for(sender.send(
                        primary, sync.to_payload(sync.Subscribe(s.hive_id, t.epoch, t.version)),
                        msg_type=wire.TYPE_SYSTEM, msg=sync.SYNC_SUBSCRIBE), s.sync_timeout_s)
                except Exception as err:
                    log.info("cannot subscribe to %s yet (%s); will retry in %.1f s", primary, err, retry)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync.wait(), tick)
