"""Shared helpers of the operator integration tests (a unique module name, not `conftest`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fluxbee_emulator import FluxEmulator

from fluxbee.operator.kube import KubeClient

T = TypeVar("T")
NS = "hives"
IMAGE = "fluxbee/fluxbee:test"


@dataclass
class Cluster:
    emulator: FluxEmulator
    url: str
    api: KubeClient  # the test's own client (what `kubectl` would do)


@dataclass
class OperatorHandle:
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0,
                     what: str = "condition") -> T:
    """Poll ``probe`` (every 50 ms, up to ``timeout`` s) until it returns neither None nor False."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: T | None = None
    while loop.time() < deadline:
        last = await probe()
        if last is not None and last is not False:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")
