"""Busy polling (dataplane/router/busypoll.py): a window after each kick, nothing without kicks, and the
CPU budget that ends a window early and keeps new ones from starting until the next second."""

from __future__ import annotations

import asyncio
import time

from fluxbee.dataplane.router.busypoll import BusyPoll


class Counting(BusyPoll):
    __slots__ = ("iterations",)

    def __init__(self, loop: asyncio.AbstractEventLoop, window_us: int) -> None:
        super().__init__(loop, window_us)
        self.iterations = 0

    def _poll(self) -> None:
        self.iterations += 1
        super()._poll()


async def _settle(poll: BusyPoll, limit_s: float = 5.0) -> None:
    end = time.monotonic() + limit_s
    while poll._polling_since is not None:
        assert time.monotonic() < end, "the window never closed"
        await asyncio.sleep(0.001)


async def test_without_a_kick_the_loop_is_left_to_sleep() -> None:
    poll = Counting(asyncio.get_running_loop(), 1000)
    await asyncio.sleep(0.05)
    assert (poll.iterations, poll.polls) == (0, 0)


async def test_a_kick_keeps_the_loop_polling_for_the_window_then_it_stops() -> None:
    poll = Counting(asyncio.get_running_loop(), 20_000)  # 20 ms
    t0 = time.perf_counter()
    poll.kick()
    await _settle(poll)
    lasted = time.perf_counter() - t0
    assert poll.polls == 1 and poll.iterations > 10  # loop iterations, not one timer
    assert lasted >= 0.02  # not before the window is over
    before = poll.iterations
    await asyncio.sleep(0.05)
    assert poll.iterations == before  # and nothing after it
    poll.kick()
    poll.kick()  # a kick while polling moves the window on, it does not start a second poller
    await _settle(poll)
    assert poll.polls == 2


async def test_the_budget_ends_a_window_early_and_holds_new_ones_until_the_next_second() -> None:
    poll = Counting(asyncio.get_running_loop(), 5_000_000)  # a 5 s window: only the budget can end it
    poll._budget_s = 0.01
    t0 = time.perf_counter()
    poll.kick()
    await _settle(poll)
    assert time.perf_counter() - t0 < 2.0
    assert poll._spent >= 0.01
    spent_iterations = poll.iterations
    poll.kick()  # same second, budget gone: no polling
    await asyncio.sleep(0.01)
    assert poll.polls == 1 and poll.iterations == spent_iterations
    poll._period_start -= 1.0  # the next second
    poll.kick()
    assert poll.polls == 2
    await _settle(poll)
    assert poll.status() == {"window_us": 5_000_000, "windows": 2, "budget_cpu_share": 0.01}
