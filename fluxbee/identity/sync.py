"""Primary -> replica replication of the identity region, over the router (pure: messages and state).

Why over the router and not the original's TCP port 9100: one transport, the
router's authentication (sender names are stamped from the socket session),
and no extra open port that hands out the whole identity dump.  Between hives
the same messages cross the router links (mutual TLS, the sender still stamped
by the origin router): a worker's replica subscribes to ``SY.identity@<mother>``
and the primary answers to the replica's UUID, which the links route to the hive
that advertised it.

Protocol (system messages, unicast by UUID once a replica has subscribed):

* replica -> primary ``IDENTITY_SYNC_SUBSCRIBE {replica_hive_id, have_epoch, have_version}``.
* primary -> replica ``IDENTITY_FULL_SYNC`` chunks ``{epoch, version, sync_id,
  chunk (1-based), total_chunks, tenants, ilks, channels, aliases}``: one
  snapshot read in one repeatable-read transaction at ``identity_version = version``.
  The primary registers the subscriber and sends the snapshot while holding its
  write lock, so every later change reaches the replica after the snapshot:
  **snapshot at N, then deltas > N** (the original subscribed on a second
  connection and lost what committed in between).
* primary -> replicas ``IDENTITY_DELTA {epoch, version, change}`` after each
  commit, in commit order.  ``version`` is the database's ``identity_version``
  (persisted, +1 per committed write), so it is monotonic across primary
  restarts; ``epoch`` is new at every primary start.
* primary -> replicas ``IDENTITY_SYNC_HEARTBEAT {epoch, version}`` every
  ``sync_heartbeat_s``, without waiting for a write in progress (``version``
  is the last one whose delta every subscriber was sent); a primary that starts broadcasts
  ``IDENTITY_PRIMARY_READY {epoch, version}`` to ``SY.identity*`` nodes.

A replica resyncs (subscribes again, gets a new full snapshot) when:
a delta skips a version (gap), the epoch changes (primary restarted: its
subscriber list is gone and deltas may have been lost in the crash), a
heartbeat shows a version it has not seen, a full sync arrives out of order,
or it has heard nothing from the primary for ``sync_timeout_s`` (primary gone,
router restarted, our subscription lost).  The original re-subscribed after a
reconnect *without* a full resync, losing what changed while it was away.

Duplicates (``version <= have``) are ignored: records are whole, so replaying
is harmless anyway.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from fluxbee.errors import CodedError
from fluxbee.identity.model import Change, ChannelRecord, IlkRecord, TenantRecord

SYNC_SUBSCRIBE: Final = "IDENTITY_SYNC_SUBSCRIBE"
FULL_SYNC: Final = "IDENTITY_FULL_SYNC"
DELTA: Final = "IDENTITY_DELTA"
SYNC_HEARTBEAT: Final = "IDENTITY_SYNC_HEARTBEAT"
PRIMARY_READY: Final = "IDENTITY_PRIMARY_READY"
FROM_PRIMARY: Final = frozenset({FULL_SYNC, DELTA, SYNC_HEARTBEAT, PRIMARY_READY})
"""Messages a replica accepts only from its configured primary (router-stamped name)."""

MAX_CHUNK_BYTES: Final = 96 * 1024
"""Records per full-sync chunk are packed up to this many JSON bytes (frames are at most 128 KiB)."""


class Subscribe(msgspec.Struct, forbid_unknown_fields=True):
    replica_hive_id: str
    have_epoch: str = ""
    have_version: int = 0


class FullSyncChunk(msgspec.Struct):
    epoch: str
    version: int
    sync_id: str
    chunk: int
    total_chunks: int
    tenants: list[TenantRecord] = msgspec.field(default_factory=list)
    ilks: list[IlkRecord] = msgspec.field(default_factory=list)
    channels: list[ChannelRecord] = msgspec.field(default_factory=list)
    aliases: list[tuple[str, str, int]] = msgspec.field(default_factory=list)


class Delta(msgspec.Struct):
    epoch: str
    version: int
    change: Change


class Heartbeat(msgspec.Struct):
    epoch: str
    version: int


class SyncProtocolError(Exception):
    """A sync message that does not decode."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"bad {what}: {detail}")
        self.what = what
        self.detail = detail


def decode(payload: Any, kind: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.convert(payload, kind)
    except msgspec.ValidationError as err:
        raise SyncProtocolError(kind.__name__, str(err)) from None


def to_payload(message: msgspec.Struct) -> Any:
    """A struct as the JSON-ready builtins the SDK sends."""
    return msgspec.to_builtins(message)


def chunk_snapshot(snapshot: Change, *, epoch: str, version: int, sync_id: str | None = None,
                   max_bytes: int = MAX_CHUNK_BYTES) -> list[FullSyncChunk]:
    """Split a snapshot into chunks of at most ``max_bytes`` of records each (at least one chunk)."""
    sid = sync_id or str(uuid.uuid4())
    enc = msgspec.json.Encoder()
    chunks: list[FullSyncChunk] = []
    current = FullSyncChunk(epoch, version, sid, 1, 0)
    size = 0
    lists: tuple[tuple[str, list[Any]], ...] = (
        ("tenants", snapshot.tenants), ("ilks", snapshot.ilks), ("channels", snapshot.channels),
        ("aliases", snapshot.aliases))
    for attr, records in lists:
        for record in records:
            n = len(enc.encode(record)) + 1
            if size and size + n > max_bytes:
                chunks.append(current)
                current = FullSyncChunk(epoch, version, sid, len(chunks) + 1, 0)
                size = 0
            getattr(current, attr).append(record)
            size += n
    chunks.append(current)
    for c in chunks:
        c.total_chunks = len(chunks)
    return chunks


class ResyncNeededError(CodedError):
    """The replica's copy can no longer be trusted; it must subscribe again (full sync).

    ``code`` is why (:data:`GAP`, :data:`EPOCH`...), the key its resync is counted under."""


GAP: Final = "gap"
EPOCH: Final = "epoch"
HEARTBEAT_AHEAD: Final = "heartbeat_ahead"
CHUNK_ORDER: Final = "chunk_order"
SILENCE: Final = "silence"


@dataclass(slots=True)
class ReplicaTracker:
    """Where a replica stands: which primary epoch and version its region shows.

    Feed it what arrives from the primary; it returns what to apply and raises
    :class:`ResyncNeededError` when only a full sync can help.  Until the first
    full sync completes, deltas and heartbeats are ignored.
    """

    epoch: str = ""
    version: int = 0
    synced: bool = False
    full_syncs: int = 0
    resyncs: dict[str, int] = field(default_factory=dict)
    heartbeats: int = 0
    """Heartbeats received from the primary (a replica's sign that its primary is alive)."""
    _assembling: list[FullSyncChunk] = field(default_factory=list)

    def reset(self, reason: str) -> None:
        """Forget the stream position (the region stays as it is until the next full sync replaces it)."""
        self.synced = False
        self._assembling.clear()
        self.resyncs[reason] = self.resyncs.get(reason, 0) + 1

    def on_chunk(self, c: FullSyncChunk) -> Change | None:
        """A full-sync chunk; the whole snapshot when it was the last one."""
        if c.chunk == 1:
            self._assembling = [c]
        else:
            first = self._assembling[0] if self._assembling else None
            if (first is None or c.sync_id != first.sync_id or c.chunk != len(self._assembling) + 1
                    or c.total_chunks != first.total_chunks):
                self._assembling.clear()
                raise ResyncNeededError(CHUNK_ORDER, f"chunk {c.chunk}/{c.total_chunks} of {c.sync_id} "
                                        "does not follow what was received")
            self._assembling.append(c)
        if c.chunk < c.total_chunks:
            return None
        snapshot = Change()
        for part in self._assembling:
            snapshot.tenants.extend(part.tenants)
            snapshot.ilks.extend(part.ilks)
            snapshot.channels.extend(part.channels)
            snapshot.aliases.extend(part.aliases)
        self._assembling.clear()
        self.epoch, self.version, self.synced = c.epoch, c.version, True
        self.full_syncs += 1
        return snapshot

    def on_delta(self, d: Delta) -> Change | None:
        """The change to apply, or None (not synced yet, or a duplicate)."""
        if not self.synced:
            return None
        if d.epoch != self.epoch:
            raise ResyncNeededError(EPOCH, f"primary epoch {d.epoch} is not {self.epoch} (the primary restarted)")
        if d.version <= self.version:
            return None
        if d.version != self.version + 1:
            raise ResyncNeededError(GAP, f"delta {d.version} after {self.version}: "
                                    f"{d.version - self.version - 1} change(s) missed")
        self.version = d.version
        return d.change

    def on_heartbeat(self, h: Heartbeat) -> None:
        self.heartbeats += 1
        if not self.synced:
            return
        if h.epoch != self.epoch:
            raise ResyncNeededError(EPOCH, f"primary epoch {h.epoch} is not {self.epoch} (the primary restarted)")
        if h.version > self.version:
            raise ResyncNeededError(HEARTBEAT_AHEAD, f"primary is at {h.version}, we have {self.version}")
