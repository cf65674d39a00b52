"""The router's CPU scheduling class (Linux ``SCHED_BATCH`` by default).

A routed round trip is four socket hops between three processes: client →
router → node → router → client.  With the kernel's default class the
router, woken by a frame, usually preempts the process that wrote it.  The
writer is then still runnable when the router writes onwards, and on a small
VM the next process is woken on the other, idle, CPU — a cross-CPU wake-up,
several times dearer than a context switch — while the writer later runs
again only to go to sleep.  In ``SCHED_BATCH`` the router never preempts on
wake-up: the writer finishes and sleeps first, so every hop is one hand-off
on one CPU.

On a 2-vCPU VM (A/B inside one run; figures in BENCHMARKS.md, "The router's
scheduling class") rested round trips get faster and steadier at the median,
throughput is unchanged, and ``fluxbee bench``'s routed/floor ratio drops.
The costs: a woken router waits for a CPU-bound task on its CPU to block or
to use up its slice, so when every CPU is saturated the tail grows; and one
request/reply flow running back to back for seconds, which on such a VM
spreads its processes over both CPUs, is sometimes faster in the default
class than in batch (with several concurrent flows the two classes are
alike).  ``inherit`` keeps whatever class the router was started with (also
any real-time class an operator gave it).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

POLICIES = ("batch", "inherit")
"""What ``fluxbee router --scheduling`` accepts."""

_NAMES = {
    getattr(os, name): label
    for name, label in (("SCHED_OTHER", "normal"), ("SCHED_BATCH", "batch"), ("SCHED_IDLE", "idle"),
                        ("SCHED_FIFO", "fifo"), ("SCHED_RR", "rr"))
    if hasattr(os, name)
}


def current() -> str:
    """The calling thread's scheduling class (``normal``, ``batch`` …; ``unknown`` where it cannot be read)."""
    getter = getattr(os, "sched_getscheduler", None)
    if getter is None:
        return "unknown"
    try:
        return _NAMES.get(getter(0), "unknown")
    except OSError:
        return "unknown"


def apply(policy: str) -> str:
    """Put the calling process in ``policy``'s class and return the class in effect.

    ``batch`` moves a process of the default class (``SCHED_OTHER``) to
    ``SCHED_BATCH``, which needs no privilege; any other class the process was
    started in (idle, real-time) is left alone.  Where the platform has no
    ``SCHED_BATCH`` (macOS) or refuses it, the router runs as it was started,
    with a warning.  Call it before any thread is started: threads inherit it.
    """
    if policy not in POLICIES:
        raise ValueError(f"scheduling must be one of {', '.join(POLICIES)}, not {policy!r}")
    if policy == "inherit":
        return current()
    setter = getattr(os, "sched_setscheduler", None)
    batch = getattr(os, "SCHED_BATCH", None)
    if setter is None or batch is None:
        log.warning("SCHED_BATCH is not available on this platform; the router keeps its scheduling class")
        return current()
    if current() != "normal":
        log.info("the router was started in the %s scheduling class; leaving it", current())
        return current()
    try:
        setter(0, batch, os.sched_param(0))
    except OSError as err:
        log.warning("cannot switch the router to SCHED_BATCH (%s); it keeps the normal class", err.strerror)
    return current()
