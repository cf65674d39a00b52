"""SY.identity as a node: connect, run the periodic tasks, and answer each request in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import FrameTooLargeError, NodeConfig, connect
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.dataplane.wire import Message
from fluxbee.identity import model as m
from fluxbee.identity import sync
from fluxbee.identity.service.actions import ActionHandlers
from fluxbee.identity.service.replication import Replication
from fluxbee.identity.service.settings import IdentitySettings
from fluxbee.identity.store import IdentityStore, StoreSettings

log = logging.getLogger(__name__)

_IGNORED = frozenset({wire.UNREACHABLE, wire.TTL_EXCEEDED, wire.CONFIG_CHANGED, wire.ANNOUNCE, wire.PROTOCOL_ERROR,
                      wire.WITHDRAW})


class IdentityService(ActionHandlers, Replication):
    """One SY.identity (primary or replica): :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: IdentitySettings) -> None:
        super().__init__(settings)
        self._handlers = self._action_handlers()

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
