"""Test-session settings shared by every tier."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest

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


def _fluxbee_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("fluxbee-")}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True, scope="session")
def no_leftover_shared_memory() -> Iterator[None]:
    """Fail the session if its tests left fluxbee shared-memory segments behind."""
    before = _fluxbee_segments()
    yield
    left = _fluxbee_segments() - before
    if left:
        pytest.fail(f"the tests left shared-memory segments behind: {sorted(left)}")
