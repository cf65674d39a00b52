"""Hives linked on loopback the way a user runs them: `fluxbee wan ca`, `fluxbee up --wan-*`, `fluxbee send`.

Each hive has its own run dir, hive id and free ports; nothing is injected that `fluxbee up` would have
to find by itself.  Identity (PostgreSQL) is off: links do not need it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_harness import free_port, stop_process, wait_until

pytestmark = pytest.mark.integration

HIVE_FILE = """\
apiVersion: fluxbee.io/v1alpha1
kind: Hive
metadata: {{name: h}}
spec: {spec}
"""
NODE = """\
---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {{name: {key}}}
spec: {{hive: h, nodeName: {name}, runtime: fluxbee.echo}}
"""


def fluxbee(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxbee", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


class Hive:
    """`fluxbee up` for one hive."""

    def __init__(self, root: Path, hive_id: str, ca: Path, *args: str, spec: str = "{}",
                 nodes: tuple[str, ...] = ("WF.echo",)) -> None:
        self.hive_id = hive_id
        self.run_dir = root / hive_id
        self.run_dir.mkdir()
        self.file = root / f"{hive_id}.yaml"
        self.file.write_text(HIVE_FILE.format(spec=spec) + "".join(
            NODE.format(key=name.lower().replace(".", "-"), name=name) for name in nodes))
        self.up_log = root / f"{hive_id}.up.log"
        self.log = self.up_log.open("w")
        env = {**os.environ, "FLUXBEE_UP_IDENTITY": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxbee", "up", "-f", str(self.file), "--hive-id", hive_id, "--run-dir",
             str(self.run_dir), "--admin-listen", "off", "--wan-ca", str(ca), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: self.proc.poll() is not None or self._echo_up(), timeout=60, what=f"hive {hive_id} up",
                   step=0.2)
        assert self.proc.poll() is None, (root / f"{hive_id}.up.log").read_text()

    def _echo_up(self) -> bool:
        try:
            return any(n["name"] == f"WF.echo@{self.hive_id}" for n in self.status()["nodes"])
        except (AssertionError, ValueError, KeyError):
            return False

    def status(self) -> dict[str, Any]:
        done = fluxbee("status", "--run-dir", str(self.run_dir), "--json")
        assert done.returncode == 0, (f"{done.stderr}; the hive's log ends with: {_read(self.up_log)[-1500:]}; "
                                      f"its router's log: {_read(self.run_dir / 'logs' / 'router.log')[-3000:]}")
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def send(self, dst: str, payload: Any = "ping", timeout: float = 5) -> subprocess.CompletedProcess[str]:
        return fluxbee("send", dst, "--run-dir", str(self.run_dir), "--payload", json.dumps(payload), "--wait",
                       "--timeout", str(timeout))

    def links(self, role: str = "wan") -> list[dict[str, Any]]:
        return list(self.status()[role]["links"])

    def up_with(self, hive: str) -> bool:
        return any(link["hive_id"] == hive and link["state"] == "up" for link in self.links())

    def router_pid(self) -> int:
        return int(self.status()["router"]["pid"])

    def stop(self) -> None:
        stop_process(self.proc, f"fluxbee up ({self.hive_id})", sig=signal.SIGINT, timeout=20, strict=False)
        self.log.close()


def answered(done: subprocess.CompletedProcess[str], by: str) -> bool:
    if done.returncode != 0:
        return False
    return bool(json.loads(done.stdout)["from"] == by)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbl", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ca(root: Path) -> Path:
    done = fluxbee("wan", "ca", str(root / "ca"))
    assert done.returncode == 0, done.stderr
    return root / "ca"


@pytest.fixture
def hives(root: Path, ca: Path) -> Iterator[list[Hive]]:
    started: list[Hive] = []
    yield started
    for hive in reversed(started):
        hive.stop()


def test_two_hives_link_over_mutual_tls_and_answer_each_other(root: Path, ca: Path, hives: list[Hive]) -> None:
    port = free_port()
    hives.append(a := Hive(root, "A", ca, "--wan-listen", f"127.0.0.1:{port}"))
    # B's uplink comes from its hive file (spec.wan), A's listener from the flag
    hives.append(b := Hive(root, "B", ca, spec=f"{{wan: {{listen: '127.0.0.1:{free_port()}', "
                                              f"uplinks: [{{address: '127.0.0.1:{port}'}}]}}}}"))
    wait_until(lambda: a.up_with("B") and b.up_with("A"), timeout=20, what="the A-B link", step=0.2)
    assert (b.run_dir / "wan" / "tls.key").stat().st_mode & 0o777 == 0o600
    assert wait_until(lambda: answered(a.send("WF.echo@B", {"n": 1}), "WF.echo@B"), timeout=10, step=0.2)
    assert answered(b.send("WF.echo@A"), "WF.echo@A")
    missing = a.send("WF.nope@B")
    assert missing.returncode == 3 and "NODE_NOT_FOUND" in missing.stderr  # answered by hive B, across the link
    nowhere = a.send("WF.echo@Z")
    assert nowhere.returncode == 3 and "WAN_UNAVAILABLE" in nowhere.stderr
    link = next(x for x in b.links() if x["hive_id"] == "A")
    assert link["direction"] == "out" and link["state"] == "up" and link["last_lsa_seq"] >= 1
    assert next(x for x in a.links() if x["hive_id"] == "B")["direction"] == "in"
    assert a.status()["wan"]["routes"][0]["hive"] == "B"
    shown = fluxbee("status", "--run-dir", str(b.run_dir))
    assert shown.returncode == 0 and "wan links" in shown.stdout and "route to A: A" in shown.stdout


def test_transit_a_b_c_then_the_middle_gateway_killed_and_restarted(root: Path, ca: Path, hives: list[Hive]) -> None:
    pa, pb = free_port(), free_port()
    timers = ("--link-hello-interval", "0.3", "--link-dead-interval", "1.5")
    # A's one static route sends WF.far to hive C, which A reaches only through B
    hives.append(a := Hive(root, "A", ca, "--wan-listen", f"127.0.0.1:{pa}", *timers,
                           spec="{routes: [{prefix: WF.far, matchKind: EXACT, nextHopHive: C}]}"))
    hives.append(b := Hive(root, "B", ca, "--wan-listen", f"127.0.0.1:{pb}", "--uplink", f"127.0.0.1:{pa}", *timers))
    hives.append(c := Hive(root, "C", ca, "--uplink", f"127.0.0.1:{pb}", *timers, nodes=("WF.echo", "WF.far")))
    # no route is written anywhere: A learns C through B (path vector)
    wait_until(lambda: any(r["hive"] == "C" for r in a.status()["wan"]["routes"]), timeout=20, what="A's route to C")
    assert next(r for r in a.status()["wan"]["routes"] if r["hive"] == "C")["path"] == ["B", "C"]
    assert wait_until(lambda: answered(a.send("WF.echo@C"), "WF.echo@C"), timeout=10, step=0.2)
    assert answered(c.send("WF.echo@A"), "WF.echo@A")
    assert answered(c.send("WF.echo@*"), "WF.echo@C")  # name@* prefers the sender's hive
    assert answered(a.send("WF.far"), "WF.far@C")  # next_hop_hive C, two hops away
    assert answered(b.send("WF.far@*"), "WF.far@C")  # the nearest hive that has it
    # a broadcast from A reaches C through B (ttl 16: mesh hops >= 2, WAN hops >= 3)
    before = c.status()["counters"]["broadcasts"]
    sent = fluxbee("send", "broadcast", "--run-dir", str(a.run_dir), "--payload", '"to all hives"')
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: c.status()["counters"]["broadcasts"] > before, timeout=10, what="the broadcast at C")
    # SIGKILL B's router: A and C lose each other, and say why
    os.kill(b.router_pid(), signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: "WAN_UNAVAILABLE" in a.send("WF.echo@C", timeout=2).stderr, timeout=10, step=0.1,
               what="UNREACHABLE WAN_UNAVAILABLE for C")
    assert time.monotonic() - killed < 1.5 + 5  # within the dead interval (and the time to ask)
    # `fluxbee up` restarts B's router; B redials A, C redials B, everything is advertised again
    try:
        wait_until(lambda: answered(a.send("WF.echo@C", timeout=2), "WF.echo@C"), timeout=90, step=0.5,
                   what="A reaching C again after B's restart")
    except AssertionError as err:
        raise AssertionError(f"{err}; links: A {a.status()['wan']}; C {c.status()['wan']}; B's router log: "
                             f"{_read(root / 'B' / 'logs' / 'router.log')[-3000:]}") from None
    assert answered(c.send("WF.echo@A"), "WF.echo@A")


def test_a_silent_gateway_is_declared_dead_and_the_link_comes_back(root: Path, ca: Path, hives: list[Hive]) -> None:
    port = free_port()
    timers = ("--link-hello-interval", "0.3", "--link-dead-interval", "1.5")
    hives.append(a := Hive(root, "A", ca, "--wan-listen", f"127.0.0.1:{port}", *timers))
    hives.append(b := Hive(root, "B", ca, "--uplink", f"127.0.0.1:{port}", *timers))
    wait_until(lambda: a.up_with("B"), timeout=20, what="the A-B link")
    pid = b.router_pid()
    os.kill(pid, signal.SIGSTOP)  # the TCP connection stays open; only the dead timer can notice
    try:
        stopped = time.monotonic()
        wait_until(lambda: not a.up_with("B"), timeout=15, step=0.1, what="A closing the silent link")
        assert time.monotonic() - stopped < 1.5 + 0.3 + 3
        gone = a.send("WF.echo@B", timeout=2)
        assert gone.returncode == 3 and "WAN_UNAVAILABLE" in gone.stderr
        assert "DEAD_INTERVAL" in (root / "A" / "logs" / "router.log").read_text()
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: answered(a.send("WF.echo@B", timeout=2), "WF.echo@B"), timeout=30, step=0.3,
               what="the link back after SIGCONT")


def test_a_peer_presenting_another_hives_certificate_is_refused(root: Path, ca: Path, hives: list[Hive]) -> None:
    port = free_port()
    hives.append(a := Hive(root, "A", ca, "--wan-listen", f"127.0.0.1:{port}"))
    issued = fluxbee("wan", "issue", "--ca", str(ca), "--hive-id", "C", "--out", str(root / "c-cert"))
    assert issued.returncode == 0, issued.stderr
    # `fluxbee up` itself refuses a certificate of another hive
    refused = fluxbee("up", "--hive-id", "B", "--run-dir", str(root / "b-up"), "--admin-listen", "off", "--wan-ca",
                      str(ca), "--uplink", f"127.0.0.1:{port}", "--wan-cert", str(root / "c-cert" / "tls.crt"),
                      "--wan-key", str(root / "c-cert" / "tls.key"))
    assert refused.returncode == 2 and "is for hive 'C', not 'B'" in refused.stderr
    # a router started by hand with C's certificate, claiming to be B, is refused by A
    (root / "rogue").mkdir()
    rogue = subprocess.Popen(
        [sys.executable, "-m", "fluxbee", "router", "--hive-id", "B", "--run-dir", str(root / "rogue"),
         "--uplink", f"127.0.0.1:{port}", "--wan-cert", str(root / "c-cert" / "tls.crt"), "--wan-key",
         str(root / "c-cert" / "tls.key"), "--wan-ca-cert", str(ca / "ca.crt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "CERT_HIVE_MISMATCH" in (root / "A" / "logs" / "router.log").read_text(), timeout=20,
                   what="A refusing the mismatched certificate")
        assert not any(link["state"] == "up" for link in a.links())
    finally:
        stop_process(rogue, "rogue router")
    assert rogue.stderr is not None
    with rogue.stderr:
        assert "CERT_HIVE_MISMATCH" in rogue.stderr.read()
    # a certificate from another CA does not even finish the TLS handshake
    other = fluxbee("wan", "ca", str(root / "other-ca"))
    assert other.returncode == 0
    (root / "stranger").mkdir()
    stranger = subprocess.Popen(
        [sys.executable, "-m", "fluxbee", "up", "--hive-id", "D", "--run-dir", str(root / "stranger"),
         "--admin-listen", "off", "--wan-ca", str(root / "other-ca"), "--uplink", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "FLUXBEE_UP_IDENTITY": "0"})
    try:
        wait_until(lambda: "link to" in _read(root / "stranger" / "logs" / "router.log"), timeout=30,
                   what="the stranger's failed dial")
        time.sleep(1)
        assert not a.links()
        assert "certificate verify failed" in _read(root / "stranger" / "logs" / "router.log").lower()
    finally:
        stop_process(stranger, "stranger hive", sig=signal.SIGINT, timeout=20)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
