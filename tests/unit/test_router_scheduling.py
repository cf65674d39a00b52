"""The router's scheduling class: SCHED_BATCH by default, never overriding a class it was started in."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from fluxbee.dataplane.router import scheduling

needs_sched = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this platform")


def in_child(before: str, policy: str, *, as_nobody: bool = False) -> tuple[str, int]:
    """Apply ``policy`` in a fresh process (first put in class ``before``); the class reported and the kernel's."""
    code = (
        "import os; from fluxbee.dataplane.router import scheduling\n"
        + ("os.setgid(65534); os.setuid(65534)\n" if as_nobody else "")
        + f"before = {before!r}\n"
        "if before != 'normal': os.sched_setscheduler(0, getattr(os, 'SCHED_' + before.upper()), os.sched_param(0))\n"
        f"print(scheduling.apply({policy!r}))\n"
        "print([l for l in open('/proc/self/sched') if l.startswith('policy')][0].rpartition(':')[2].strip())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True).stdout
    said, kernel = out.split()
    return said, int(kernel)


@needs_sched
def test_batch_moves_a_normal_process_to_sched_batch() -> None:
    assert in_child("normal", "batch") == ("batch", os.SCHED_BATCH)


@needs_sched
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to become another user")
def test_an_unprivileged_router_can_switch_to_sched_batch() -> None:
    assert in_child("normal", "batch", as_nobody=True) == ("batch", os.SCHED_BATCH)


@needs_sched
def test_batch_leaves_a_class_the_router_was_started_in() -> None:
    assert in_child("idle", "batch") == ("idle", os.SCHED_IDLE)


@needs_sched
def test_inherit_changes_nothing() -> None:
    assert in_child("normal", "inherit") == ("normal", os.SCHED_OTHER)
    assert in_child("batch", "inherit") == ("batch", os.SCHED_BATCH)


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="batch, inherit"):
        scheduling.apply("fifo")


def test_without_sched_batch_the_router_keeps_its_class_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delattr(os, "SCHED_BATCH", raising=False)
    before = scheduling.current()
    with caplog.at_level(logging.WARNING):
        assert scheduling.apply("batch") == before
    assert "SCHED_BATCH is not available" in caplog.text


@needs_sched
def test_a_refused_switch_is_logged_and_the_router_runs_on(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    if scheduling.current() != "normal":
        pytest.skip("the test process does not run in the normal class")

    def refuse(pid: int, policy: int, param: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING):
        assert scheduling.apply("batch") == "normal"
    assert "cannot switch the router to SCHED_BATCH (Operation not permitted)" in caplog.text
