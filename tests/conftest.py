"""Test-session settings shared by every tier."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from shm_leaks import SessionSegments, fluxbee_segments

# Subprocesses started by tests run `python -m fluxbee …` from the repo root, whose `operator/`
# folder would shadow the stdlib module if the working directory went onto sys.path.
os.environ.setdefault("PYTHONSAFEPATH", "1")


@pytest.fixture(autouse=True)
async def no_leftover_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail an async test that leaves asyncio tasks running behind it (every task needs an owner)."""
    if not asyncio.iscoroutinefunction(getattr(request.node, "function", None)):
        yield
        return
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    for _ in range(3):  # let tasks that were told to stop finish their last step
        leftover = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        if not leftover:
            return
        await asyncio.sleep(0.05)
    names = ", ".join(sorted(t.get_name() for t in leftover))
    for task in leftover:
        task.cancel()
    pytest.fail(f"the test left {len(leftover)} asyncio task(s) running: {names}")


_SEGMENTS = pytest.StashKey[SessionSegments]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SEGMENTS] = SessionSegments(fluxbee_segments())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Note the run dirs a test used before its fixtures remove them (see shm_leaks.py)."""
    segments = item.config.stash[_SEGMENTS]
    for value in getattr(item, "funcargs", {}).values():
        path = value if isinstance(value, Path) else getattr(value, "run_dir", None)
        if isinstance(path, Path):
            segments.note_run_dir(path)
    return (yield)


@pytest.fixture(autouse=True, scope="session")
def no_leftover_shared_memory(request: pytest.FixtureRequest,
                              tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the session if its tests left fluxbee shared-memory segments behind.

    Only segments this session created count: hives of other users or other test runs on the same
    machine create ``fluxbee-*`` segments too."""
    yield
    segments = request.config.stash[_SEGMENTS]
    segments.note_run_dir(tmp_path_factory.getbasetemp())
    left = segments.leftovers()
    if left:
        pytest.fail(f"the tests left shared-memory segments behind: {left}")
