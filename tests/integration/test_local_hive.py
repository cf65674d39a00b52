"""`fluxbee up` as a supervisor: live reconciliation of the hive file, and failing nodes reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hive_harness import node_names, wait_until

from fluxbee.dataplane.sdk import read_node_table

HIVE = """
apiVersion: fluxbee.io/v1alpha1
kind: Hive
metadata: {name: lh}
spec:
  vpns: %s
"""
NODE = """
---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {name: %s}
spec: {hive: lh, nodeName: %s, runtime: %s, replicas: %d}
"""
FAILING_RUNTIME = """
---
apiVersion: fluxbee.io/v1alpha1
kind: Runtime
metadata: {name: broken}
spec: {version: "1.0", command: [sh, -c, "echo 'cannot open model file' >&2; exit 3"]}
"""


class Up:
    def __init__(self, run_dir: Path, hive_file: Path) -> None:
        env = {**os.environ, "FLUXBEE_UP_IDENTITY": "0", "FLUXBEE_UP_POLICY": "0", "PYTHONUNBUFFERED": "1"}
        self.err_path = run_dir / "up.err"
        self._err = open(self.err_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "fluxbee", "up", "-f", str(hive_file), "--run-dir",
                                      str(run_dir), "--admin-listen", "off"], stdout=subprocess.DEVNULL,
                                     stderr=self._err, env=env)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        return self.proc.returncode


@pytest.fixture
def up(run_dir: Path) -> Iterator[tuple[Up, Path]]:
    hive_file = run_dir / "hive.yaml"
    hive_file.write_text(HIVE % "[]" + NODE % ("echo", "WF.echo", "fluxbee.echo", 1))
    proc = Up(run_dir, hive_file)
    yield proc, hive_file
    assert proc.stop() == 0, proc.stderr()[-3000:]


def rewrite(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    time.sleep(0.01)


def test_edits_to_the_hive_file_are_reconciled_while_the_hive_runs(up: tuple[Up, Path], run_dir: Path) -> None:
    proc, hive_file = up
    wait_until(lambda: "WF.echo@lh" in node_names(run_dir), 30, "the declared echo node")
    status = subprocess.run([sys.executable, "-m", "fluxbee", "status", "--json", "--run-dir", str(run_dir)],
                            capture_output=True, text=True, timeout=30, check=True)
    # the supervisor waits for the router through shared memory: the only connections so far are
    # the echo node's and this status query's (a probe connection would make it three)
    assert json.loads(status.stdout)["counters"]["connections"] == 2
    # add a node with two replicas and a VPN rule
    rewrite(hive_file, HIVE % "[{pattern: WF.red, vpnId: 7}]" + NODE % ("echo", "WF.echo", "fluxbee.echo", 1)
            + NODE % ("red", "WF.red.echo", "fluxbee.echo", 2))
    wait_until(lambda: len(node_names(run_dir).get("WF.red.echo@lh", [])) == 2, 30, "two WF.red.echo replicas")
    wait_until(lambda: {r.vpn_id for r in read_node_table(run_dir) if r.name == "WF.red.echo@lh"} == {7}, 10,
               "the VPN rule applied live")
    # a bad edit is refused and the running hive stays as it was
    rewrite(hive_file, "kind: Hive\nmetadata: {name: lh}\nspec: {role: nonsense}\n")
    wait_until(lambda: "hive file change refused" in proc.stderr(), 10, "the refusal to be logged")
    assert len(node_names(run_dir).get("WF.red.echo@lh", [])) == 2
    # remove the node again
    rewrite(hive_file, HIVE % "[]" + NODE % ("echo", "WF.echo", "fluxbee.echo", 1))
    wait_until(lambda: "WF.red.echo@lh" not in node_names(run_dir), 30, "WF.red.echo to be stopped")
    assert "WF.echo@lh" in node_names(run_dir)


def test_a_node_that_keeps_failing_is_reported_on_the_terminal(run_dir: Path) -> None:
    hive_file = run_dir / "hive.yaml"
    hive_file.write_text(HIVE % "[]" + FAILING_RUNTIME + NODE % ("bad", "WF.bad", "broken", 1))
    proc = Up(run_dir, hive_file)
    try:
        wait_until(lambda: "WF.bad@lh#0 keeps failing (exit 3)" in proc.stderr(), 30, "the failure report")
        assert "cannot open model file" in proc.stderr()
    finally:
        assert proc.stop() == 0, proc.stderr()[-3000:]


def test_a_supervisor_killed_with_sigkill_takes_its_hive_down(run_dir: Path) -> None:
    hive_file = run_dir / "hive.yaml"
    hive_file.write_text(HIVE % "[]" + NODE % ("echo", "WF.echo", "fluxbee.echo", 1))
    up = Up(run_dir, hive_file)
    try:
        wait_until(lambda: any((run_dir / "routers").glob("*.sock")) and "WF.echo@lh" in node_names(run_dir), 30,
                   "the hive to come up")
        children = [int(p.name) for p in Path("/proc").glob("[0-9]*")
                    if _parent_of(int(p.name)) == up.proc.pid]
        router_uuid = next((run_dir / "routers").glob("*.sock")).stem
        assert len(children) >= 2  # the router and the echo node
        up.proc.kill()
        up.proc.wait()
        # every child got SIGTERM from the kernel (PR_SET_PDEATHSIG) and cleaned up after itself
        wait_until(lambda: not any(_parent_of(c) is not None for c in children), 20, "the children to exit")
        wait_until(lambda: not list(Path("/dev/shm").glob(f"fluxbee-*{router_uuid}")), 5,
                   "the router's regions to be removed")
    finally:
        up.stop()


def _parent_of(pid: int) -> int | None:
    """The parent of a live process (None once it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])
