"""Replication between SY.identity instances (protocol in :mod:`fluxbee.identity.sync`).

Primary side: a full snapshot for each new subscriber, one delta per committed write in commit
order, heartbeats with the published version. Replica side: accept only the configured primary,
apply its chunks and deltas, and subscribe again on a gap, a new epoch or the primary's silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from fluxbee.dataplane import names, wire
from fluxbee.dataplane.wire import Message
from fluxbee.identity import model as m
from fluxbee.identity import sync
from fluxbee.identity.service.regions import RegionKeeper

log = logging.getLogger(__name__)


class Replication(RegionKeeper):
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
        delta = sync.Delta(self.epoch, version, change)
        try:
            for dst in list(self.subscribers):
                await self._send(dst, sync.DELTA, delta)
        finally:
            # only now: a heartbeat (sent without the lock) never announces a version whose delta
            # some subscriber has yet to be sent
            self._published = version

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
        """``(epoch, version)`` to every subscriber, without waiting for the write lock: a write stuck in
        the database (a slow commit, a row lock) must not pass for a primary gone silent, which would
        send every replica to a full resync.  ``_published`` is the version whose delta every
        subscriber has been sent (frames leave in order), so a beat is never ahead of the deltas."""
        if not self.subscribers or self.store is None:
            return
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
                    shown = self._show(snapshot)
                    log.info("full sync from %s: epoch %s version %d, %d ILKs, %d channels, %d aliases (%s)",
                             sender_name, t.epoch, t.version, len(snapshot.ilks), len(snapshot.channels),
                             len(snapshot.aliases), shown)
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
            t.reset(err.code)
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
