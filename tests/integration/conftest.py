"""Fixtures for data-plane integration tests (the harness itself is in hive_harness.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_harness import NodeProc, RawPeer, RouterProc, node_names, wait_until

from fluxbee.dataplane import shm
from fluxbee.dataplane.sdk import CREDENTIAL_FILE_ENV


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: keep the run dir short.
    path = Path(tempfile.mkdtemp(prefix="fbt", dir="/tmp"))
    path.chmod(0o755)  # embedded PostgreSQL runs as another user when the tests run as root
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def router_factory(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RouterProc]]:
    started: list[RouterProc] = []

    def make(config: dict[str, Any] | None = None, extra: tuple[str, ...] = ()) -> RouterProc:
        r = RouterProc(run_dir, config=config, extra=extra)
        # The test's SDK nodes and the processes it starts prove the SY.* names they use (TEST_SYSTEM_NAMES).
        monkeypatch.setenv(CREDENTIAL_FILE_ENV, str(r.credential_file))
        started.append(r)
        return r

    yield make
    problems: list[str] = []  # every router is stopped before any problem fails the test: no process leaks
    for r in started:
        uid = r.uuid if (run_dir / "routers").exists() and any((run_dir / "routers").glob("*.sock")) else None
        try:
            code = r.stop()
        except AssertionError as err:
            problems.append(str(err))
            continue
        if code != 0:
            problems.append(f"router exited with {code}: {r.log_path.read_text()[-3000:]}")
        if uid is not None:
            problems += [f"{name} left behind" for name in (shm.node_table_name(uid), shm.config_region_name(uid))
                         if Path("/dev/shm" + name).exists()]
    assert not problems, "\n".join(problems)


@pytest.fixture
def router(router_factory: Callable[..., RouterProc]) -> RouterProc:
    return router_factory()


@pytest.fixture
def spawn(run_dir: Path) -> Iterator[Callable[..., NodeProc]]:
    nodes: list[NodeProc] = []

    def make(kind: str, name: str, *, wait: bool = True, persistent: bool = False) -> NodeProc:
        before = len(node_names(run_dir).get(f"{name}@t", []))
        node = NodeProc(kind, name, run_dir, persistent=persistent)
        nodes.append(node)
        if wait:
            wait_until(lambda: len(node_names(run_dir).get(f"{name}@t", [])) > before
                       or node.proc.poll() is not None, 15, f"{name} to register")
            assert node.proc.poll() is None, node.log_path.read_text()
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def raw_peers() -> Iterator[list[RawPeer]]:
    peers: list[RawPeer] = []
    yield peers
    for p in peers:
        p.close()
