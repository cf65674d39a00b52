"""Fixtures: kmock's emulator (fixed up) on loopback, and the real kopf operator against it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from fluxbee_emulator import FluxEmulator, declare_fluxbee_resources
from operator_kmock_support import IMAGE, Cluster, OperatorHandle

from fluxbee.operator.app import run
from fluxbee.operator.kube import KubeClient, KubeConfig
from fluxbee.operator.settings import OperatorSettings


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    emulator = FluxEmulator()
    declare_fluxbee_resources(emulator)
    async with emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        async with KubeClient(KubeConfig(server=url)) as api:
            yield Cluster(emulator, url, api)


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[OperatorHandle]:
    """The real operator, in its own thread and event loop (as in its own process).

    kopf cancels every task of its loop that appeared after it started when it stops, so it
    must not share the test's loop.  ``stop()`` then ``start()`` simulate a restart.
    """
    settings = OperatorSettings(image=IMAGE)
    state: dict[str, Any] = {}

    def thread_main(stop_flag: threading.Event, ready_flag: threading.Event,
                    errors: list[BaseException]) -> None:
        async def main() -> None:
            access = KubeConfig(server=cluster.url)
            async with KubeClient(access) as client:
                await run(settings, client, access, stop_flag=stop_flag,
                          ready_flag=ready_flag)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass  # kopf ends by cancelling its root task after a stop flag
        except BaseException as err:  # reported by stop()
            errors.append(err)

    async def start() -> None:
        stop_flag, ready_flag = threading.Event(), threading.Event()
        errors: list[BaseException] = []
        thread = threading.Thread(target=thread_main, args=(stop_flag, ready_flag, errors),
                                  name="fluxbee-operator", daemon=True)
        thread.start()
        state.update(thread=thread, stop_flag=stop_flag, errors=errors)
        if not await asyncio.to_thread(ready_flag.wait, 15):
            raise AssertionError(f"operator not ready within 15 s; errors: {errors}")

    async def stop() -> None:
        if "thread" not in state:
            return
        state["stop_flag"].set()
        thread: threading.Thread = state["thread"]
        errors: list[BaseException] = state["errors"]
        state.clear()
        await asyncio.to_thread(thread.join, 20)
        if thread.is_alive():
            raise AssertionError("the operator did not stop within 20 s of its stop flag")
        if errors:
            raise AssertionError(f"the operator failed: {errors[0]!r}") from errors[0]

    logging.getLogger("kopf").setLevel(logging.WARNING)
    try:
        await start()
        yield OperatorHandle(start=start, stop=stop)
    finally:
        await stop()
