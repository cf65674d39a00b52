"""Behaviour of the shared-memory node table and config region (fluxbee.dataplane.shm)."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator

import posix_ipc
import pytest

from fluxbee.dataplane.shm import (
    CONFIG_DOC_OFFSET,
    FLAG_ACTIVE,
    HEADER_SIZE,
    NODE_SLOT_SIZE,
    NODE_TABLE_MAGIC,
    STALE_AFTER_MS,
    ConfigRegionReader,
    ConfigRegionWriter,
    NodeRecord,
    NodeTableReader,
    NodeTableWriter,
    ReadTimeoutError,
    RegionBusyError,
    RegionFormatError,
    RegionFullError,
    RegionNotFoundError,
    config_region_name,
    node_table_name,
)

OWNER = "6f1c0a52-5a3e-4c3e-9a8e-0c1d2e3f4a5b"


def _unlink(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


@pytest.fixture
def make_name() -> Iterator[Callable[[], str]]:
    """Unique region names for one test; every one is unlinked at teardown."""
    names: list[str] = []

    def make() -> str:
        name = f"/fluxbee-test-{uuid.uuid4().hex}"
        names.append(name)
        return name

    yield make
    for name in names:
        _unlink(name)


@pytest.fixture
def name(make_name: Callable[[], str]) -> str:
    return make_name()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _writer(name: str, capacity: int = 8, clock: Callable[[], int] = _wall_ms) -> NodeTableWriter:
    return NodeTableWriter(
        name,
        owner_uuid=OWNER,
        hive_id="local",
        owner_name="RT.router@local",
        capacity=capacity,
        clock=clock,
    )


def _record(name: str = "WF.echo@local", vpn_id: int = 0) -> NodeRecord:
    return NodeRecord(str(uuid.uuid4()), name, vpn_id, 1_700_000_000_000)


def _run_child(script: str) -> str:
    """Run ``script`` in a fresh interpreter (it really exits, so its pid is really dead)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# ------------------------------------------------------------------ node table basics


def test_region_names_embed_the_router_uuid_as_32_hex_digits() -> None:
    assert node_table_name(OWNER) == "/fluxbee-nodes-6f1c0a525a3e4c3e9a8e0c1d2e3f4a5b"
    assert config_region_name(OWNER) == "/fluxbee-config-6f1c0a525a3e4c3e9a8e0c1d2e3f4a5b"


def test_put_update_and_remove_round_trip_through_a_reader(name: str) -> None:
    a, b = _record("AI.support@prod", 1), _record("WF.echo@local", 2)
    with _writer(name) as writer, NodeTableReader(name) as reader:
        assert reader.read() == []
        assert writer.put(a) == 0
        assert writer.put(b) == 1
        assert reader.read() == [a, b]
        assert reader.header().count == 2

        moved = NodeRecord(a.uuid, a.name, 7, a.connected_at_ms + 5)
        assert writer.put(moved) == 0  # same uuid: updated in place
        assert reader.read() == [moved, b]
        assert reader.header().count == 2

        assert writer.remove(a.uuid) is True
        assert writer.remove(a.uuid) is False
        assert reader.read() == [b]
        assert reader.header().count == 1


def test_a_removed_slot_is_reused_before_the_table_grows(name: str) -> None:
    records = [_record(f"WF.n{i}@h") for i in range(3)]
    with _writer(name) as writer:
        slots = [writer.put(r) for r in records]
        writer.remove(records[0].uuid)
        assert writer.put(_record()) == slots[0]


def test_find_returns_only_the_records_with_that_exact_name(name: str) -> None:
    one, two, other = _record("WF.echo@local"), _record("WF.echo@local"), _record("WF.echo@x")
    with _writer(name) as writer, NodeTableReader(name) as reader:
        for r in (one, two, other):
            writer.put(r)
        assert reader.find("WF.echo@local") == [one, two]
        assert reader.find("WF.nope@local") == []


def test_a_full_table_raises_region_full_error_with_its_capacity(name: str) -> None:
    with _writer(name, capacity=2) as writer:
        writer.put(_record())
        writer.put(_record())
        with pytest.raises(RegionFullError) as caught:
            writer.put(_record())
        assert (caught.value.name, caught.value.capacity) == (name, 2)


def test_a_name_longer_than_256_utf8_bytes_is_refused(name: str) -> None:
    with _writer(name) as writer, NodeTableReader(name) as reader:
        writer.put(_record("é" * 128))  # exactly 256 bytes fits
        with pytest.raises(ValueError, match="256"):
            writer.put(_record("é" * 128 + "x"))
        assert [r.name for r in reader.read()] == ["é" * 128]


@pytest.mark.parametrize(
    "bad",
    [
        NodeRecord("6F1C0A52-5A3E-4C3E-9A8E-0C1D2E3F4A5B", "WF.a@h", 0, 0),  # not lowercase
        NodeRecord("not-a-uuid", "WF.a@h", 0, 0),
        NodeRecord(OWNER, "WF.a@h", 1 << 32, 0),  # vpn_id is a u32
        NodeRecord(OWNER, "WF.a@h", 0, -1),
        NodeRecord(OWNER, "WF.a@h", 0, 0, flags=0),  # would be invisible to readers
    ],
)
def test_invalid_records_are_refused_before_anything_is_written(name: str, bad: NodeRecord) -> None:
    with _writer(name) as writer, NodeTableReader(name) as reader:
        with pytest.raises(ValueError):
            writer.put(bad)
        assert reader.read() == []
        assert reader.header().count == 0


def test_regions_are_readable_by_the_same_user_only(name: str) -> None:
    with _writer(name):
        assert os.stat(f"/dev/shm/{name[1:]}").st_mode & 0o777 == 0o600


def test_close_marks_the_region_stale_and_unlinks_it(name: str) -> None:
    writer = _writer(name)
    reader = NodeTableReader(name)
    try:
        assert not reader.header().is_stale()
        writer.close()
        assert reader.header().is_stale()  # the old mapping outlives the name
        with pytest.raises(RegionNotFoundError) as caught:
            NodeTableReader(name)
        assert caught.value.name == name
    finally:
        reader.close()
        writer.close()


def test_close_without_unlink_leaves_a_stale_region_that_a_new_writer_takes_over(
    name: str,
) -> None:
    first = _writer(name)
    first.put(_record())
    first.close(unlink=False)
    first.close()  # idempotent: already closed, unlinks nothing
    with NodeTableReader(name) as reader:
        assert reader.header().is_stale()
    with _writer(name) as second, NodeTableReader(name) as reader:
        assert reader.read() == []
        assert reader.header().generation == 2
        second.put(_record())


# ------------------------------------------------------------------ ownership


def test_a_live_owner_with_a_fresh_heartbeat_makes_a_second_writer_busy(name: str) -> None:
    with _writer(name) as writer:
        writer.put(_record())
        with pytest.raises(RegionBusyError) as caught:
            _writer(name)
        assert (caught.value.name, caught.value.owner_pid) == (name, os.getpid())
        with NodeTableReader(name) as reader:  # the refused writer touched nothing
            assert len(reader.read()) == 1


def test_a_live_owner_whose_heartbeat_went_stale_is_taken_over(name: str) -> None:
    long_ago = 1_000_000
    old = _writer(name, clock=lambda: long_ago)
    old.put(_record())
    with _writer(name) as new, NodeTableReader(name) as reader:
        assert reader.read() == []
        assert reader.header().generation == 2
        old.close()  # must not unlink the region that replaced it
        new.put(_record())
        with NodeTableReader(name) as again:
            assert len(again.read()) == 1


def test_header_staleness_follows_the_heartbeat_with_an_explicit_clock(name: str) -> None:
    now = [1_700_000_000_000]
    with _writer(name, clock=lambda: now[0]) as writer, NodeTableReader(name) as reader:
        header = reader.header()
        assert header.heartbeat_ms == header.created_ms == now[0]
        assert not header.is_stale(now_ms=now[0] + STALE_AFTER_MS)
        assert header.is_stale(now_ms=now[0] + STALE_AFTER_MS + 1)
        assert header.is_stale(now_ms=now[0] + 101, max_age_ms=100)

        now[0] += 2_000
        writer.heartbeat()
        header = reader.header()
        assert header.heartbeat_ms == now[0]
        assert not header.is_stale(now_ms=now[0] + STALE_AFTER_MS)
        assert (header.owner_pid, header.owner_uuid) == (os.getpid(), OWNER)
        assert (header.hive_id, header.owner_name) == ("local", "RT.router@local")
        assert (header.magic, header.capacity, header.generation) == (NODE_TABLE_MAGIC, 8, 1)


def test_reopening_after_a_dead_owner_recreates_the_region_and_drops_ghosts(name: str) -> None:
    # A router that crashes without closing: its pid is dead but the heartbeat is fresh.
    out = _run_child(
        f"""
        import os, uuid
        from fluxbee.dataplane.shm import NodeRecord, NodeTableWriter
        w = NodeTableWriter({name!r}, owner_uuid={OWNER!r}, hive_id="local",
                            owner_name="RT.router@local", capacity=8)
        for i in range(3):
            w.put(NodeRecord(str(uuid.uuid4()), f"WF.ghost{{i}}@local", 0, 0))
        print(os.getpid(), flush=True)
        os._exit(0)
        """
    )
    dead_pid = int(out)
    with NodeTableReader(name) as reader:
        header = reader.header()
        assert (header.owner_pid, header.count) == (dead_pid, 3)
        assert not header.is_stale()
        assert len(reader.read()) == 3
    with _writer(name) as writer, NodeTableReader(name) as reader:
        assert reader.read() == []
        assert reader.header().generation == 2
        assert reader.header().owner_pid == os.getpid()
        writer.put(_record())


def test_a_crashed_owner_that_had_our_pid_is_taken_over_despite_a_fresh_heartbeat(
    name: str,
) -> None:
    # After a container restart the new router may get the pid of the crashed one.
    _run_child(
        f"""
        import os, uuid
        from fluxbee.dataplane.shm import NodeRecord, NodeTableWriter
        w = NodeTableWriter({name!r}, owner_uuid={OWNER!r}, hive_id="local",
                            owner_name="RT.router@local", capacity=8)
        w.put(NodeRecord(str(uuid.uuid4()), "WF.ghost@local", 0, 0))
        os._exit(0)
        """
    )
    shm = posix_ipc.SharedMemory(name)
    with mmap.mmap(shm.fd, shm.size) as mm:
        shm.close_fd()
        mm[64:68] = os.getpid().to_bytes(4, "little")  # owner_pid, see the layout
    with NodeTableReader(name) as reader:
        assert reader.header().owner_pid == os.getpid()
        assert not reader.header().is_stale()
    with _writer(name), NodeTableReader(name) as reader:
        assert reader.read() == []
        assert reader.header().generation == 2


def test_a_writer_killed_mid_store_leaves_a_record_readers_refuse_until_takeover(
    name: str,
) -> None:
    # Simulate the crash by leaving slot 0's sequence word odd, as a writer would mid-store.
    _run_child(
        f"""
        import mmap, os, struct, uuid, posix_ipc
        from fluxbee.dataplane.shm import NodeRecord, NodeTableWriter
        w = NodeTableWriter({name!r}, owner_uuid={OWNER!r}, hive_id="local",
                            owner_name="RT.router@local", capacity=8)
        w.put(NodeRecord(str(uuid.uuid4()), "WF.torn@local", 0, 0))
        shm = posix_ipc.SharedMemory({name!r})
        mm = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        off = {HEADER_SIZE}
        (seq,) = struct.unpack_from("=Q", mm, off)
        struct.pack_into("=Q", mm, off, seq + 1)
        os._exit(0)
        """
    )
    with NodeTableReader(name) as reader:
        with pytest.raises(ReadTimeoutError) as caught:
            reader.read()
        assert caught.value.what == "slot 0"
    with _writer(name), NodeTableReader(name) as reader:
        assert reader.read() == []


# ------------------------------------------------------------------ format checks


def _raw_region(name: str, size: int, fill: bytes) -> None:
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
    with mmap.mmap(shm.fd, size) as mm:
        mm[: len(fill)] = fill
    shm.close_fd()


def test_a_reader_of_a_missing_region_raises_not_found(name: str) -> None:
    with pytest.raises(RegionNotFoundError) as caught:
        NodeTableReader(name)
    assert caught.value.name == name


def test_a_region_with_foreign_magic_is_a_format_error_and_a_writer_replaces_it(
    name: str,
) -> None:
    _raw_region(name, HEADER_SIZE + NODE_SLOT_SIZE * 8, b"NOTOURS!" + bytes(64))
    with pytest.raises(RegionFormatError) as caught:
        NodeTableReader(name)
    assert caught.value.name == name
    assert "magic" in caught.value.reason
    with _writer(name), NodeTableReader(name) as reader:
        assert reader.header().generation == 1


def test_a_region_smaller_than_a_header_is_a_format_error(name: str) -> None:
    _raw_region(name, 64, b"")
    with pytest.raises(RegionFormatError, match="smaller"):
        NodeTableReader(name)


def test_a_reader_of_the_wrong_kind_is_a_format_error(name: str) -> None:
    with _writer(name):
        with pytest.raises(RegionFormatError, match="magic"):
            ConfigRegionReader(name)


def test_a_region_whose_size_disagrees_with_its_capacity_is_a_format_error(name: str) -> None:
    with _writer(name) as writer:
        # Grow the object behind the writer's back: header and size now disagree.
        fd = os.open(f"/dev/shm/{name[1:]}", os.O_RDWR)
        try:
            os.ftruncate(fd, HEADER_SIZE + NODE_SLOT_SIZE * 9)
        finally:
            os.close(fd)
        with pytest.raises(RegionFormatError, match="size"):
            NodeTableReader(name)
        writer.put(_record())


# ------------------------------------------------------------------ config region


def _config_writer(name: str, capacity_bytes: int = 1024) -> ConfigRegionWriter:
    return ConfigRegionWriter(
        name,
        owner_uuid=OWNER,
        hive_id="local",
        owner_name="RT.router@local",
        capacity_bytes=capacity_bytes,
    )


def test_config_write_then_read_round_trips_version_and_document(name: str) -> None:
    with _config_writer(name) as writer, ConfigRegionReader(name) as reader:
        assert reader.read() == (0, b"")
        writer.write(1, b'{"routes": []}')
        assert reader.read() == (1, b'{"routes": []}')
        writer.write(5, b"{}")  # shorter document: no tail of the old one leaks
        assert reader.read() == (5, b"{}")
        header = reader.header()
        assert (header.count, header.capacity) == (2, 1024)
        writer.heartbeat()
        assert reader.read() == (5, b"{}")


def test_config_versions_that_do_not_increase_are_refused(name: str) -> None:
    with _config_writer(name) as writer, ConfigRegionReader(name) as reader:
        writer.write(3, b"three")
        for version in (3, 2, 0):
            with pytest.raises(ValueError, match="version"):
                writer.write(version, b"older")
        assert reader.read() == (3, b"three")


def test_config_documents_larger_than_the_region_are_refused(name: str) -> None:
    with _config_writer(name, capacity_bytes=16) as writer, ConfigRegionReader(name) as reader:
        writer.write(1, b"x" * 16)
        with pytest.raises(ValueError, match="16"):
            writer.write(2, b"x" * 17)
        assert reader.read() == (1, b"x" * 16)
        assert reader.header().capacity == 16


def test_config_region_has_the_same_busy_rule_as_the_node_table(name: str) -> None:
    with _config_writer(name):
        with pytest.raises(RegionBusyError):
            _config_writer(name)


def test_config_document_starts_after_the_documented_offset(name: str) -> None:
    with _config_writer(name) as writer:
        writer.write(1, b"hello")
        shm = posix_ipc.SharedMemory(name, read_only=True)
        with mmap.mmap(shm.fd, shm.size, prot=mmap.PROT_READ) as mm:
            shm.close_fd()
            assert mm[:8] == b"FLXBCONF"
            assert mm[CONFIG_DOC_OFFSET : CONFIG_DOC_OFFSET + 5] == b"hello"


def test_records_default_to_active(name: str) -> None:
    assert _record().flags == FLAG_ACTIVE
