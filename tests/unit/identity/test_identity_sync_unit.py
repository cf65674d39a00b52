"""Replication protocol (pure): snapshot chunks, and when a replica must resync."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from fluxbee.dataplane import wire
from fluxbee.identity import sync
from fluxbee.identity.model import Change, ChannelRecord, IlkRecord, TenantRecord

TENANT = f"tnt:{uuid.uuid4()}"


def snapshot(n: int) -> Change:
    ilks = [IlkRecord(f"ilk:{uuid.uuid4()}", TENANT, "human", "temporary", "") for _ in range(n)]
    return Change(
        tenants=[TenantRecord(TENANT, "fluxbee", "active", True)], ilks=ilks,
        channels=[ChannelRecord("whatsapp", f"+{i:0>200}", TENANT, ilk.ilk_id, f"ich:{uuid.uuid4()}")
                  for i, ilk in enumerate(ilks)],
        aliases=[(f"ilk:{uuid.uuid4()}", ilks[0].ilk_id, 1)] if ilks else [])


def roundtrip(message: msgspec.Struct, kind: type[msgspec.Struct]) -> object:
    """As it travels: builtins -> JSON -> builtins -> struct."""
    return sync.decode(msgspec.json.decode(msgspec.json.encode(sync.to_payload(message))), kind)


def test_a_large_snapshot_is_split_into_numbered_chunks_that_fit_a_frame_and_reassemble_whole() -> None:
    snap = snapshot(2000)
    chunks = sync.chunk_snapshot(snap, epoch="e1", version=42)
    assert len(chunks) > 3
    assert [c.chunk for c in chunks] == list(range(1, len(chunks) + 1))
    assert {c.total_chunks for c in chunks} == {len(chunks)} and len({c.sync_id for c in chunks}) == 1
    for c in chunks:
        frame = wire.encode_frame(wire.Message(routing=wire.Routing(src=str(uuid.uuid4()), dst=str(uuid.uuid4()),
                                                                    ttl=16, trace_id=str(uuid.uuid4())),
                                               meta=wire.Meta(type="system", msg=sync.FULL_SYNC),
                                               payload=sync.to_payload(c)))
        assert len(frame) <= wire.MAX_FRAME
    tracker = sync.ReplicaTracker()
    got = None
    for c in chunks:
        got = tracker.on_chunk(roundtrip(c, sync.FullSyncChunk))  # type: ignore[arg-type]
    assert got == snap
    assert tracker.synced and tracker.epoch == "e1" and tracker.version == 42 and tracker.full_syncs == 1


def test_an_empty_snapshot_is_one_chunk() -> None:
    chunks = sync.chunk_snapshot(Change(), epoch="e", version=0)
    assert len(chunks) == 1 and chunks[0].total_chunks == 1
    assert sync.ReplicaTracker().on_chunk(chunks[0]) == Change()


def synced(version: int = 10, epoch: str = "e1") -> sync.ReplicaTracker:
    t = sync.ReplicaTracker()
    t.on_chunk(sync.chunk_snapshot(Change(), epoch=epoch, version=version)[0])
    return t


def delta(version: int, epoch: str = "e1") -> sync.Delta:
    return sync.Delta(epoch, version, Change(removed_aliases=[f"ilk:{uuid.uuid4()}"]))


def test_deltas_apply_in_sequence_and_duplicates_are_skipped() -> None:
    t = synced(10)
    d = delta(11)
    change = t.on_delta(roundtrip(d, sync.Delta))  # type: ignore[arg-type]
    assert change == d.change and t.version == 11
    assert t.on_delta(delta(11)) is None and t.on_delta(delta(5)) is None, "duplicates are harmless"
    t.on_heartbeat(sync.Heartbeat("e1", 11))
    t.on_heartbeat(sync.Heartbeat("e1", 9))  # behind what we applied: a beat sent before the delta left
    assert (t.synced, t.version, t.heartbeats, t.resyncs) == (True, 11, 2, {})


@pytest.mark.parametrize(("event", "reason"), [
    (delta(12), sync.GAP),
    (delta(11, epoch="e2"), sync.EPOCH),
    (sync.Heartbeat("e2", 10), sync.EPOCH),
    (sync.Heartbeat("e1", 12), sync.HEARTBEAT_AHEAD),
])
def test_a_gap_a_new_epoch_or_a_heartbeat_ahead_needs_a_full_resync(event: object, reason: str) -> None:
    t = synced(10)
    with pytest.raises(sync.ResyncNeededError) as err:
        if isinstance(event, sync.Delta):
            t.on_delta(event)
        else:
            t.on_heartbeat(event)  # type: ignore[arg-type]
    assert err.value.code == reason
    t.reset(err.value.code)
    assert not t.synced and t.resyncs == {reason: 1}
    assert t.on_delta(delta(13)) is None, "nothing applies until the next full sync"


def test_chunks_out_of_order_or_from_two_syncs_are_refused() -> None:
    a = sync.chunk_snapshot(snapshot(2000), epoch="e", version=1)
    b = sync.chunk_snapshot(snapshot(2000), epoch="e", version=2)
    t = sync.ReplicaTracker()
    assert t.on_chunk(a[0]) is None
    with pytest.raises(sync.ResyncNeededError) as err:
        t.on_chunk(b[1])
    assert err.value.code == sync.CHUNK_ORDER
    with pytest.raises(sync.ResyncNeededError):
        sync.ReplicaTracker().on_chunk(a[1])
    # a new sync (chunk 1) starts over cleanly
    for c in b:
        t.on_chunk(c)
    assert t.synced and t.version == 2


def test_bad_sync_payloads_raise_a_protocol_error() -> None:
    with pytest.raises(sync.SyncProtocolError):
        sync.decode({"epoch": "e"}, sync.Heartbeat)
    with pytest.raises(sync.SyncProtocolError):
        sync.decode({"replica_hive_id": "h", "surprise": 1}, sync.Subscribe)
