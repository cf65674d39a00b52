"""Keep freed heap memory for the next read instead of handing it back to the kernel (glibc malloc).

Each read from a socket arrives as a new bytes object of up to 256 KiB, and
the router joins what it forwards into buffers of that order too.  With
glibc's defaults such a block is freed to the top of the heap, the heap is
trimmed back to the kernel as soon as more than 128 KiB are free there, and
the next read grows it again: every burst pays page faults (zeroing and
mapping fresh pages, memory-cgroup accounting) for memory it just gave away.
Keeping that memory cuts the CPU the router and a receiving node spend per
message in one-way bursts, and raises the throughput of an A/B inside one run
(figures: BENCHMARKS.md, "The allocator").

:func:`tune` sets three ``mallopt`` parameters: keep up to
:data:`TRIM_THRESHOLD` free at the top of the heap, grow it
:data:`TOP_PAD` at a time, and serve blocks below :data:`MMAP_THRESHOLD`
from the heap (a fixed threshold also stops glibc from moving its own).
The cost is at most a few MiB of resident memory per process.

A process whose environment already sets one of glibc's ``MALLOC_*``
variables or ``GLIBC_TUNABLES`` is left alone: whoever set them decides.  Elsewhere than
glibc (musl, macOS) nothing changes.  The router and the ``fluxbee node``
processes call it at start; a program that embeds the SDK and receives bursts
may call it too (the SDK does not: the allocator belongs to the program).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Mapping
from typing import Final

log = logging.getLogger(__name__)

TRIM_THRESHOLD: Final = 4 * 1024 * 1024
TOP_PAD: Final = 1024 * 1024
MMAP_THRESHOLD: Final = 1024 * 1024

# <malloc.h>
_M_TRIM_THRESHOLD: Final = -1
_M_TOP_PAD: Final = -2
_M_MMAP_THRESHOLD: Final = -3

_ENVIRONMENT: Final = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX",
                       "GLIBC_TUNABLES")

_state = "default"


def state() -> str:
    """What :func:`tune` did in this process: ``tuned``, ``default`` (not called) or why it left things alone."""
    return _state


def left_alone(environ: Mapping[str, str]) -> str | None:
    """Why :func:`tune` would leave a process with this environment as it is, or None if it would tune it."""
    given = [name for name in _ENVIRONMENT if name in environ]
    if given:
        return f"environment ({', '.join(given)})"
    if platform.libc_ver()[0] != "glibc":
        return "default (not glibc)"
    return None


def tune() -> str:
    """Set the allocator parameters above for this process; returns :func:`state`.  Idempotent."""
    global _state
    if _state == "tuned":
        return _state
    reason = left_alone(os.environ)
    if reason is not None:
        _state = reason
        return _state
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as err:
        _state = f"default (no mallopt: {err})"
        return _state
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    for param, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                         (_M_TOP_PAD, TOP_PAD)):
        if mallopt(param, value) != 1:
            log.warning("mallopt(%d, %d) refused; the allocator keeps its defaults for it", param, value)
            _state = "partly tuned"
            return _state
    _state = "tuned"
    return _state
