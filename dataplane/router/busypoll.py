"""Busy polling: after routing a read, keep the event loop polling for a short window instead of sleeping.

Off by default (``fluxbee router --busy-poll-us N``).  What it trades: a request that crosses a link
wakes four processes in turn (client, router A, router B, the destination) and back; on a virtual
machine each wake-up of a sleeping process costs tens of microseconds, more than the routing itself.
A router that keeps polling for the next read for ``N`` µs after the last one answers the reply
without going to sleep first.  Measured on the cross-hive bench (README, "Links"; BENCHMARKS.md),
the round trip drops by about a third with a 100 µs window.

What it costs: CPU.  While it polls the router runs one loop iteration after another (each an
``epoll_wait`` with a zero timeout), so a router that sees a message every few milliseconds spends
up to ``N`` µs of CPU after each.  Two bounds keep that in check:

* the window restarts only when there was something to route: an idle router sleeps as before;
* a budget: at most :data:`BUDGET` (half) of one CPU per second goes to polling; past it the router sleeps
  between reads as it does without the option, until the next second.

Under sustained load the option changes nothing (the loop is never idle long enough to poll).
It suits latency-sensitive hives on hosts with CPU to spare, not hosts packed with other work.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

BUDGET: Final = 0.5
"""The share of one CPU that polling may take per second (half a CPU: a router that routes a reply
every ~100 µs polls through most of the gaps, one that routes every ~10 ms polls 1 % of the time)."""


class BusyPoll:
    """Keeps ``loop`` polling for ``window_us`` after each :meth:`kick` (see the module docstring)."""

    __slots__ = ("_budget_s", "_loop", "_period_start", "_polling_since", "_spent", "_window", "last", "polls")

    def __init__(self, loop: asyncio.AbstractEventLoop, window_us: int) -> None:
        self._loop = loop
        self._window = window_us / 1e6
        self._budget_s = BUDGET
        self.last = 0.0
        self._polling_since: float | None = None
        self._period_start = time.perf_counter()
        self._spent = 0.0
        self.polls = 0
        """Windows started (status: how often the router kept polling)."""

    def kick(self) -> None:
        """Something was routed: poll for the window from now (unless polling already or over budget)."""
        now = time.perf_counter()
        self.last = now
        if self._polling_since is not None:
            return
        if now - self._period_start >= 1.0:
            self._period_start = now
            self._spent = 0.0
        if self._spent >= self._budget_s:
            return
        self._polling_since = now
        self.polls += 1
        self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        # Re-scheduling itself keeps a callback ready, so the loop polls for I/O with a zero timeout.
        now = time.perf_counter()
        since = self._polling_since
        if since is None:
            return
        if now - self.last < self._window and self._spent + (now - since) < self._budget_s:
            self._loop.call_soon(self._poll)
            return
        self._spent += now - since
        self._polling_since = None

    def status(self) -> dict[str, float | int]:
        return {"window_us": round(self._window * 1e6), "windows": self.polls,
                "budget_cpu_share": self._budget_s}
