"""Helpers for the child processes Fluxbee's own commands start (local hive, benchmark)."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for a child: SIGTERM it when its parent dies, even by SIGKILL (Linux; a no-op elsewhere).

    Runs between fork and exec.  Without it a killed supervisor or benchmark would leave its
    routers, nodes and servers running, and the routers' shared-memory regions behind.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
