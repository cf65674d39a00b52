"""The session's shared-memory leak check (tests/shm_leaks.py): it must catch this session's leaks
and must ignore segments of hives and test runs it did not start."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import posix_ipc
import pytest
from shm_leaks import SessionSegments, fluxbee_segments

from fluxbee.dataplane import shm
from fluxbee.dataplane.shm import identity as identity_shm


def _crash_a_hive(router_uuid: str, run_dir: Path) -> None:
    """Another process creates a router's two regions and an identity region, then dies without
    removing them (a crashed hive: the segments stay, their owner is gone)."""
    script = f"""
        import os
        from fluxbee.dataplane import shm
        from fluxbee.dataplane.shm import identity as identity_shm
        shm.NodeTableWriter(shm.node_table_name({router_uuid!r}), owner_uuid={router_uuid!r}, hive_id="t",
                            owner_name="RT.router@t", capacity=8)
        shm.ConfigRegionWriter(shm.config_region_name({router_uuid!r}), owner_uuid={router_uuid!r}, hive_id="t",
                               owner_name="RT.router@t")
        identity_shm.IdentityRegionWriter("t", capacity=identity_shm.Capacity.for_ilks(8), run_dir={str(run_dir)!r})
        os._exit(0)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def crashed_hive(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    router_uuid = str(uuid.uuid4())
    run_dir = tmp_path / "elsewhere"
    (run_dir / "state").mkdir(parents=True)
    (run_dir / "state" / "RT.router@t.uuid").write_text(router_uuid + "\n")
    names = [shm.node_table_name(router_uuid), shm.config_region_name(router_uuid),
             identity_shm.region_name("t", run_dir)]
    try:
        yield run_dir, sorted(n[1:] for n in names)
    finally:
        for name in names:
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                pass


def test_segments_left_by_processes_the_session_did_not_start_are_not_counted(
        crashed_hive: tuple[Path, list[str]]) -> None:
    run_dir, names = crashed_hive
    check = SessionSegments(fluxbee_segments())
    _crash_a_hive((run_dir / "state" / "RT.router@t.uuid").read_text().strip(), run_dir)
    assert set(names) <= fluxbee_segments(), "the crashed process left its segments"
    assert check.leftovers() == []


def test_segments_left_by_a_hive_in_a_run_dir_the_tests_used_are_counted(
        crashed_hive: tuple[Path, list[str]]) -> None:
    run_dir, names = crashed_hive
    check = SessionSegments(fluxbee_segments())
    _crash_a_hive((run_dir / "state" / "RT.router@t.uuid").read_text().strip(), run_dir)
    check.note_run_dir(run_dir.parent)  # a test's tmp_path, with the run dir below it
    assert check.leftovers() == names


def test_a_segment_this_process_created_and_did_not_remove_is_counted() -> None:
    owner = str(uuid.uuid4())
    check = SessionSegments(fluxbee_segments())
    writer = shm.NodeTableWriter(shm.node_table_name(owner), owner_uuid=owner, hive_id="t",
                                 owner_name="RT.router@t", capacity=8)
    try:
        assert check.leftovers() == [shm.node_table_name(owner)[1:]]
    finally:
        writer.close()
    assert check.leftovers() == []


def test_segments_that_existed_before_the_session_are_not_counted() -> None:
    owner = str(uuid.uuid4())
    with shm.NodeTableWriter(shm.node_table_name(owner), owner_uuid=owner, hive_id="t",
                             owner_name="RT.router@t", capacity=8):
        assert SessionSegments(fluxbee_segments()).leftovers() == []
