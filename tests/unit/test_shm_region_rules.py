"""The rules every shared-memory layout shares: takeover, close-only-if-ours, finding a region.

Each test runs against every writer of ours -- node table, config region, identity region and the
original-layout identity region -- poking the header at the offsets the layouts document.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import posix_ipc
import pytest

from fluxbee.dataplane import shm
from fluxbee.dataplane.shm import identity, identity_jsid

OWNER = "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a"
SEQ_AT = 8  # the header seqlock is the second u64 of every layout


@dataclass(frozen=True)
class Layout:
    kind: str
    open_writer: Callable[[str], Any]
    """Create (or take over) the region of a unique hive/router that the test names."""
    region_name: Callable[[str], str]
    heartbeat_at: int
    owner_pid_at: int


def _nodes(key: str) -> shm.NodeTableWriter:
    return shm.NodeTableWriter(_nodes_name(key), owner_uuid=OWNER, hive_id="local",
                               owner_name="RT.router@local", capacity=4)


def _nodes_name(key: str) -> str:
    return f"/fluxbee-test-{key}"


def _config(key: str) -> shm.ConfigRegionWriter:
    return shm.ConfigRegionWriter(_nodes_name(key), owner_uuid=OWNER, hive_id="local",
                                  owner_name="RT.router@local", capacity_bytes=64)


def _identity(key: str) -> identity.IdentityRegionWriter:
    return identity.IdentityRegionWriter(key, capacity=identity.Capacity(ilk_slots=64, chan_slots=64, heap_size=4096))


def _jsid(key: str) -> identity_jsid.JsidRegionWriter:
    return identity_jsid.JsidRegionWriter(key, limits=identity_jsid.JsidLimits.for_ilks(4))


LAYOUTS = [
    Layout("node table", _nodes, _nodes_name, heartbeat_at=56, owner_pid_at=64),
    Layout("config region", _config, _nodes_name, heartbeat_at=56, owner_pid_at=64),
    Layout("identity region", _identity, identity.region_name, heartbeat_at=48, owner_pid_at=56),
    Layout("original-layout identity region", _jsid, identity_jsid.region_name, heartbeat_at=72, owner_pid_at=96),
]


@pytest.fixture(params=LAYOUTS, ids=[layout.kind for layout in LAYOUTS])
def layout(request: pytest.FixtureRequest) -> Iterator[Layout]:
    yield request.param


@pytest.fixture
def key(layout: Layout) -> Iterator[str]:
    k = f"rr{uuid.uuid4().hex[:12]}"
    yield k
    try:
        posix_ipc.unlink_shared_memory(layout.region_name(k))
    except posix_ipc.ExistentialError:
        pass
    else:
        pytest.fail(f"{layout.region_name(k)} left behind")


def _poke(name: str, offset: int, value: int, width: int = 4) -> None:
    region = posix_ipc.SharedMemory(name)
    with mmap.mmap(region.fd, region.size) as mm:
        region.close_fd()
        mm[offset:offset + width] = value.to_bytes(width, "little")


def _peek_u64(name: str, offset: int) -> int:
    region = posix_ipc.SharedMemory(name, read_only=True)
    with mmap.mmap(region.fd, region.size, prot=mmap.PROT_READ) as mm:
        region.close_fd()
        return int.from_bytes(mm[offset:offset + 8], "little")


def _stop_mid_store(name: str) -> None:
    """Leave the header as a writer that died (or stalls) inside a store leaves it: seq odd."""
    _poke(name, SEQ_AT, _peek_u64(name, SEQ_AT) | 1, width=8)


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True, timeout=30)
    return int(child.stdout)


def _exists(name: str) -> bool:
    return shm.region.inode_of(name) is not None


def test_a_taken_over_writer_that_exits_leaves_its_successors_region(layout: Layout, key: str) -> None:
    name = layout.region_name(key)
    first = layout.open_writer(key)
    _poke(name, layout.heartbeat_at, 1, width=8)  # its heartbeat went stale: a successor may take over
    successor = layout.open_writer(key)
    first.close()
    assert _exists(name), f"the first {layout.kind} writer deleted its successor's region on exit"
    successor.close()
    assert not _exists(name)


def test_a_half_written_header_under_a_live_owner_is_busy(layout: Layout, key: str) -> None:
    name = layout.region_name(key)
    first = layout.open_writer(key)
    try:
        _poke(name, layout.owner_pid_at, os.getppid())  # another live process owns it ...
        _poke(name, layout.heartbeat_at, 1, width=8)  # ... whose heartbeat looks stale ...
        _stop_mid_store(name)  # ... because it is stuck inside a store
        with pytest.raises(shm.RegionBusyError) as caught:
            layout.open_writer(key)
        assert caught.value.owner_pid == os.getppid()
    finally:
        first.close()


def test_a_half_written_header_of_a_crashed_writer_is_taken_over(layout: Layout, key: str) -> None:
    name = layout.region_name(key)
    first = layout.open_writer(key)
    dead = _dead_pid()
    _poke(name, layout.owner_pid_at, dead)  # the owner died in the middle of a store
    _stop_mid_store(name)
    successor = layout.open_writer(key)
    first.close()
    assert _exists(name)
    assert _peek_u64(name, SEQ_AT) % 2 == 0, "the successor's header is consistent"
    successor.close()


@pytest.fixture
def no_dev_shm_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every path under /dev/shm unreachable: regions must be found through shm_open alone."""
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if isinstance(path, str | bytes | os.PathLike) and os.fsdecode(path).startswith("/dev/shm"):
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)


@pytest.mark.usefixtures("no_dev_shm_paths")
def test_an_identity_reader_finds_and_follows_its_region_without_a_dev_shm_path() -> None:
    hive = f"rr{uuid.uuid4().hex[:12]}"
    writer = _identity(hive)
    with writer.batch():
        writer.put_ilk(f"ilk:{uuid.uuid4()}", tenant_id=f"tnt:{uuid.uuid4()}", ilk_type="human",
                       registration_status="temporary")
    handle = identity.RegionHandle(hive, recheck_s=0)
    try:
        reader = handle.get()
        assert reader is not None and reader.header().ilk_count == 1
        assert not reader.replaced()
        assert handle.get() is reader, "a live, unchanged region is kept open"
        writer.close()
        assert reader.replaced()
        assert handle.get() is None
    finally:
        handle.close()
        writer.close()


@pytest.mark.usefixtures("no_dev_shm_paths")
def test_an_original_layout_writer_knows_its_region_without_a_dev_shm_path() -> None:
    hive = f"rr{uuid.uuid4().hex[:12]}"
    writer = _jsid(hive)
    assert writer.is_ours()
    writer.close()
    assert not _exists(identity_jsid.region_name(hive))
