"""`fluxbee up` under faults: a node whose log file cannot be opened, a hive file that cannot be read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_harness import free_port, node_names, wait_until

HIVE = """
apiVersion: fluxbee.io/v1alpha1
kind: Hive
metadata: {name: lh}
spec: {}
"""
NODE = """
---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {name: %s}
spec: {hive: lh, nodeName: %s, runtime: fluxbee.echo, replicas: 1}
"""


class Up:
    """``fluxbee up -f`` as a user starts it, with the admin API on a loopback port."""

    def __init__(self, run_dir: Path, hive_file: Path) -> None:
        self.port = free_port()
        self.err_path = run_dir / "up.err"
        env = {**os.environ, "FLUXBEE_UP_IDENTITY": "0", "PYTHONUNBUFFERED": "1"}
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fluxbee", "up", "-f", str(hive_file), "--run-dir", str(run_dir),
                 "--admin-listen", f"127.0.0.1:{self.port}"], stdout=subprocess.DEVNULL, stderr=err, env=env)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except OSError:
            return 0, None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def hive_file(run_dir: Path) -> Path:
    path = run_dir / "hive.yaml"
    path.write_text(HIVE + NODE % ("echo", "WF.echo"))
    return path


@pytest.fixture
def up(run_dir: Path, hive_file: Path) -> Iterator[Up]:
    proc = Up(run_dir, hive_file)
    yield proc
    assert proc.stop() == 0, proc.stderr()[-3000:]


def _supervised(run_dir: Path, key: str) -> dict[str, Any] | None:
    try:
        state = json.loads((run_dir / "state" / "supervisor.json").read_text())
    except (OSError, ValueError):
        return None
    return next((p for p in state["processes"] if p["key"] == key), None)


def test_a_node_whose_log_file_cannot_be_opened_is_retried_with_the_reason_shown_and_comes_back(
        run_dir: Path, hive_file: Path) -> None:
    log_path = run_dir / "logs" / "WF.echo@lh#0.log"
    log_path.mkdir(parents=True)  # a directory in the way: opening the log file fails, even as root
    up = Up(run_dir, hive_file)
    try:
        failed = wait_until(lambda: (p := _supervised(run_dir, "WF.echo@lh#0")) and p["state"] == "FAILED"
                            and p["reason"] and p, 30, "the supervisor state to say why WF.echo is not running")
        assert "cannot open its log file" in failed["reason"] and str(log_path) in failed["reason"]
        assert "WF.echo@lh#0: cannot open its log file" in up.stderr() and "will retry in" in up.stderr()
        code, body = wait_until(lambda: (r := up.get("/hives/lh/nodes/WF.echo/status"))[0] == 200 and r, 30,
                                "the admin API")
        status = body["payload"]["node_status"]
        assert status["lifecycle_state"] == "FAILED"
        assert "cannot open its log file" in status["process"]["reason"]
        assert "WF.echo@lh" not in node_names(run_dir)
        log_path.rmdir()  # the cause is gone: the retry (with backoff) starts the node
        wait_until(lambda: "WF.echo@lh" in node_names(run_dir), 30, "WF.echo to come back")
        running = wait_until(lambda: (p := _supervised(run_dir, "WF.echo@lh#0")) and p["state"] == "RUNNING" and p,
                             10, "the supervisor state to say RUNNING")
        assert running["reason"] is None
    finally:
        assert up.stop() == 0, up.stderr()[-3000:]


def test_unreadable_edits_of_the_hive_file_are_refused_and_the_hive_keeps_running(
        up: Up, run_dir: Path, hive_file: Path) -> None:
    wait_until(lambda: "WF.echo@lh" in node_names(run_dir), 30, "the declared echo node")
    refusals = 0

    def refused(reason: str) -> None:
        nonlocal refusals
        refusals += 1
        wait_until(lambda: up.stderr().count("hive file change refused") >= refusals, 10, f"a refusal: {reason}")
        last = up.stderr().split("hive file change refused")[-1].splitlines()[0]
        assert reason in last, last
        assert up.proc.poll() is None, up.stderr()[-3000:]
        assert "WF.echo@lh" in node_names(run_dir)

    # one latin-1 byte in a comment
    tmp = hive_file.with_suffix(".tmp")
    tmp.write_bytes((HIVE + "# caf\xe9\n" + NODE % ("red", "WF.red")).encode("latin-1"))
    os.replace(tmp, hive_file)
    refused("not UTF-8 text: byte 0xe9 on line 6")
    # the file vanishes
    hive_file.unlink()
    refused("No such file or directory")
    # a directory in its place
    hive_file.mkdir()
    refused("Is a directory")
    hive_file.rmdir()
    # a good edit still goes through: the hive is alive and reconciling
    hive_file.write_text(HIVE + NODE % ("echo", "WF.echo") + NODE % ("red", "WF.red"))
    wait_until(lambda: "WF.red@lh" in node_names(run_dir), 30, "the good edit to be applied")
    assert "Traceback" not in up.stderr()


def test_a_hive_file_that_is_not_utf8_is_a_clear_error_at_start(run_dir: Path) -> None:
    bad = run_dir / "latin1.yaml"
    bad.write_bytes((HIVE + "# caf\xe9\n").encode("latin-1"))
    folder = run_dir / "folder.yaml"
    folder.mkdir()
    for path, reason in ((bad, "not UTF-8 text: byte 0xe9 on line 6"), (folder, "cannot read: Is a directory")):
        done = subprocess.run([sys.executable, "-m", "fluxbee", "up", "-f", str(path), "--run-dir",
                               str(run_dir / "run"), "--admin-listen", "off"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "FLUXBEE_UP_IDENTITY": "0"})
        assert done.returncode == 2, done.stderr
        assert f"fluxbee up: {path}: {reason}" in done.stderr
        assert "Traceback" not in done.stderr
    shutil.rmtree(run_dir / "run", ignore_errors=True)
