"""A real ``fluxbee up`` hive with its admin API on a free port, shared by the module's tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hive_harness import free_port, wait_until


@dataclass
class AdminHive:
    run_dir: Path
    base: str
    proc: subprocess.Popen[str]

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


@contextlib.contextmanager
def running_hive(*, identity: bool = True) -> Iterator[AdminHive]:
    """``fluxbee up`` on a free port; with ``identity`` (the default) it waits for SY.identity to answer."""
    run_dir = Path(tempfile.mkdtemp(prefix="fba", dir="/tmp"))
    run_dir.chmod(0o755)  # embedded PostgreSQL drops to 'postgres' when run as root: it must enter the run dir
    port = free_port()
    log = open(run_dir / "up.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not identity:
        env["FLUXBEE_UP_IDENTITY"] = "0"
    proc = subprocess.Popen([sys.executable, "-m", "fluxbee", "up", "--run-dir", str(run_dir), "--admin-listen",
                             f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    h = AdminHive(run_dir, f"http://127.0.0.1:{port}", proc)
    try:
        wait_until(lambda: "is ready" in (run_dir / "up.log").read_text() or proc.poll() is not None, 30,
                   "the hive to be ready")
        assert proc.poll() is None, (run_dir / "up.log").read_text()
        assert "admin API on" in (run_dir / "up.log").read_text()
        if identity:
            # SY.identity answers DB_NOT_READY (503) until embedded PostgreSQL is up: wait for it once here
            wait_until(lambda: h.call("GET", "/hives/local/identity/ilks")[0] == 200, 30, "SY.identity to be ready")
        yield h
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def hive() -> Iterator[AdminHive]:
    with running_hive() as h:
        yield h
