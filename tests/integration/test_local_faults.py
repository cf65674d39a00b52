"""`fluxbee up` under faults: a node whose log file cannot be opened, a hive file that cannot be read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_harness import free_port, node_names, stop_process, wait_until

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

    def __init__(self, run_dir: Path, hive_file: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.err_path = run_dir / "up.err"
        env = {**os.environ, "FLUXBEE_UP_IDENTITY": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fluxbee", "up", "-f", str(hive_file), "--run-dir", str(run_dir),
                 "--admin-listen", f"127.0.0.1:{self.port}"], stdout=subprocess.DEVNULL, stderr=err, env=env)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, Any]:
        return self.call("GET", path)

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except OSError:
            return 0, None

    def ready(self) -> None:
        wait_until(lambda: self.get("/health")[0] == 200 or self.proc.poll() is not None, 30, "the admin API")
        assert self.proc.poll() is None, self.stderr()[-3000:]

    def stop(self) -> int:
        return stop_process(self.proc, "fluxbee up", strict=False, sig=signal.SIGINT, timeout=30)


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


def test_json_nested_too_deep_is_refused_with_a_4xx(up: Up) -> None:
    up.ready()
    deep = b"[" * 100_000 + b"]" * 100_000
    code, body = up.call("PUT", "/config/vpns", raw=deep)
    assert code == 400 and body["error_code"] == "INVALID_JSON", body
    assert "nested deeper than 64 levels" in body["error_detail"]
    config: dict[str, Any] = {}
    for _ in range(100):  # within the parser's reach, beyond the limit
        config = {"a": config}
    code, body = up.call("POST", "/hives/lh/nodes", {"node_name": "WF.deep", "runtime": "fluxbee.echo",
                                                      "config": config})
    assert code == 400 and body["error_code"] == "INVALID_JSON", body
    assert up.call("GET", "/hives/lh/nodes/WF.deep/status")[0] == 404


def _answer(sock: socket.socket, trickle: bytes, deadline: float) -> bytes:
    """Send ``trickle`` a byte every 0.1 s, like a slow client, until the server answers and closes."""
    sock.setblocking(False)
    got = b""
    sent = 0
    while time.monotonic() < deadline:
        if sent < len(trickle):
            try:
                sock.send(trickle[sent:sent + 1])
                sent += 1
            except OSError:
                pass  # closed by the server: read what it said
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            time.sleep(0.1)
            continue
        except OSError:
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the server kept the slow connection open; got {got!r}")


def test_slow_clients_are_cut_off_and_connections_are_limited(run_dir: Path, hive_file: Path) -> None:
    up = Up(run_dir, hive_file, env={"FLUXBEE_ADMIN_HEADER_TIMEOUT": "1", "FLUXBEE_ADMIN_BODY_TIMEOUT": "1",
                                     "FLUXBEE_ADMIN_MAX_CONNECTIONS": "6"})
    try:
        up.ready()
        addr = ("127.0.0.1", up.port)
        # headers a byte at a time, for ever: 408 and closed after about a second
        with socket.create_connection(addr) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            got = _answer(sock, b"X-Slow: " + b"a" * 1000, time.monotonic() + 10)
        assert got.startswith(b"HTTP/1.1 408 ") and b"REQUEST_TIMEOUT" in got, got
        # a body a byte at a time: the same
        with socket.create_connection(addr) as sock:
            sock.sendall(b"PUT /config/vpns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
            got = _answer(sock, b" " * 999, time.monotonic() + 10)
        assert got.startswith(b"HTTP/1.1 408 ") and b"REQUEST_TIMEOUT" in got, got
        # at most 6 connections: the 7th is told so; idle ones are closed after the header timeout
        held = [socket.create_connection(addr) for _ in range(6)]
        try:
            with socket.create_connection(addr) as extra:
                got = _answer(extra, b"", time.monotonic() + 10)
            assert got.startswith(b"HTTP/1.1 503 ") and b"TOO_MANY_CONNECTIONS" in got, got
            for sock in held:
                assert _answer(sock, b"", time.monotonic() + 10) == b""  # closed without a word
        finally:
            for sock in held:
                sock.close()
        assert up.get("/health")[0] == 200
    finally:
        assert up.stop() == 0, up.stderr()[-3000:]


def test_a_change_that_cannot_be_written_is_not_made_and_answers_the_error(up: Up, run_dir: Path) -> None:
    up.ready()
    history = run_dir / "admin" / "history"
    shutil.rmtree(history, ignore_errors=True)
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text("a file where the history directory should be")
    red = {"vpns": [{"pattern": "WF.red", "vpn_id": 7}]}
    code, body = up.call("PUT", "/config/vpns", red)
    assert code == 503 and body["error_code"] == "STATE_WRITE_FAILED", body
    assert "nothing was changed" in body["error_detail"]
    assert up.get("/hives/lh/vpns")[1]["payload"]["vpns"] == []
    code, body = up.call("POST", "/hives/lh/nodes", {"node_name": "WF.spawned", "runtime": "fluxbee.echo"})
    assert code == 503 and body["error_code"] == "STATE_WRITE_FAILED", body
    assert not list((run_dir / "admin" / "nodes").glob("*.yaml"))
    history.unlink()
    code, body = up.call("PUT", "/config/vpns", red)
    assert code == 200, body
    assert [v["pattern"] for v in up.get("/hives/lh/vpns")[1]["payload"]["vpns"]] == ["WF.red"]
    # the node's own config cannot be written: the spawn is undone, not left to start later
    in_the_way = run_dir / "nodes" / "WF.spawned@lh"
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("a file where the node's directory should be")
    code, body = up.call("POST", "/hives/lh/nodes", {"node_name": "WF.spawned", "runtime": "fluxbee.echo"})
    assert code == 503 and body["error_code"] == "STATE_WRITE_FAILED", body
    assert "nothing was changed" in body["error_detail"]
    assert not list((run_dir / "admin" / "nodes").glob("*.yaml"))
    entries = [json.loads(line) for line in (history / "deployments.jsonl").read_text().splitlines()]
    assert [(e["action"], e["result"]) for e in entries] == [("set_config_routes", "ok"), ("run_node", "error")]
    in_the_way.unlink()
    code, body = up.call("POST", "/hives/lh/nodes", {"node_name": "WF.spawned", "runtime": "fluxbee.echo"})
    assert code == 200, body
    wait_until(lambda: "WF.spawned@lh" in node_names(run_dir), 30, "the spawned node")
    # a read does not fail because the status version cannot be written
    (run_dir / "nodes" / "WF.echo@lh" / "status_version").mkdir()
    code, body = up.get("/hives/lh/nodes/WF.echo/status")
    assert code == 200 and body["payload"]["node_status"]["status_version"] >= 1, body
