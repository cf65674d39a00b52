"""read_node_table: a write in progress when the table is opened is waited out, as one met while reading."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import posix_ipc
import pytest

from fluxbee.dataplane import shm
from fluxbee.dataplane.sdk import nodetable, read_node_table


@pytest.fixture
def router_table(tmp_path: Path) -> Iterator[tuple[Path, shm.NodeTableWriter]]:
    router_uuid = str(uuid.uuid4())
    (tmp_path / "routers").mkdir()
    (tmp_path / "routers" / f"{router_uuid}.sock").touch()
    writer = shm.NodeTableWriter(shm.node_table_name(router_uuid), owner_uuid=router_uuid, hive_id="t",
                                 owner_name="RT.router@t", capacity=4)
    writer.put(shm.NodeRecord(str(uuid.uuid4()), "WF.echo@t", 0, 1_700_000_000_000))
    try:
        yield tmp_path, writer
    finally:
        writer.close()
        try:
            posix_ipc.unlink_shared_memory(shm.node_table_name(router_uuid))
        except posix_ipc.ExistentialError:
            pass


def _opening_times_out(times: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the first ``times`` openings meet a half-finished header write; returns the opening count."""
    real = shm.NodeTableReader
    opened = [0]

    def reader(name: str) -> shm.NodeTableReader:
        opened[0] += 1
        if opened[0] <= times:
            raise shm.ReadTimeoutError(name, "header", 0.005)
        return real(name)

    monkeypatch.setattr(nodetable.shm, "NodeTableReader", reader)
    return opened


def test_a_header_write_in_progress_at_open_is_retried(router_table: tuple[Path, shm.NodeTableWriter],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, _ = router_table
    opened = _opening_times_out(2, monkeypatch)
    assert [r.name for r in read_node_table(run_dir)] == ["WF.echo@t"]
    assert opened[0] == 3


def test_a_writer_that_never_finishes_is_reported_not_hidden(router_table: tuple[Path, shm.NodeTableWriter],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, _ = router_table
    opened = _opening_times_out(100, monkeypatch)
    with pytest.raises(shm.ReadTimeoutError):
        read_node_table(run_dir)
    assert opened[0] == nodetable._ATTEMPTS


def test_a_router_without_a_table_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "routers").mkdir()
    (tmp_path / "routers" / f"{uuid.uuid4()}.sock").touch()
    assert read_node_table(tmp_path) == []
