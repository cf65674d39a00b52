"""Flow control across a link: a one-way flood from hive A to a slow node on hive B, with no window.

Two ``fluxbee router`` processes (hives A and B, B dialling A's gateway over mutual TLS, certificates
from ``fluxbee wan ca`` / ``fluxbee wan issue``), a slow consumer on B in a process of its own, and a
producer on A that sends as fast as its router lets it.  Router B stops reading the link while the
consumer is full, router A's buffer for the link fills and it holds the producer: nothing is lost and
nobody is told DST_CONGESTED.  Run with the C extension and without it (``FLUXBEE_PURE_PYTHON=1``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from hive_harness import free_port, stop_process, wait_until

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, connect

pytestmark = pytest.mark.integration

FLOOD = 200_000
PAD = 250
"""Bytes of padding per message: the flood (~60 MB) is far more than the kernel's socket buffers and the
routers' buffers can hold while the consumer lags, so router A must hold its producer."""

CONSUMER = """
import asyncio, json, sys
from pathlib import Path
from fluxbee.dataplane.sdk import NodeConfig, connect

async def main(run_dir, expect):
    sender, receiver = await connect(NodeConfig(name="WF.slow", run_dir=Path(run_dir), inbound_queue=256))
    print("READY", flush=True)
    got, in_order, other = 0, True, 0
    while got < expect:
        try:
            msg = await receiver.recv(timeout=60)
        except TimeoutError:
            break
        if msg.meta.type != "user" or msg.payload == -1:  # -1: the test's "are you there yet" probes
            other += 1
            continue
        if msg.payload.get("i") != got:
            in_order = False
        got += 1
        if got == 1000:
            await asyncio.sleep(3)  # a stall (well under the slow-consumer timeout): the buffers fill up
        elif got % 200 == 0:
            await asyncio.sleep(0.004)  # then slower than the producer
    print(json.dumps({"got": got, "in_order": in_order, "other": other}), flush=True)
    await sender.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def fluxbee(*args: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "fluxbee", *args]


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbf", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _status(doc: dict[str, Any], hive: str) -> dict[str, Any]:
    links = [x for x in doc.get("wan", {}).get("links", []) if x.get("hive_id") == hive and x.get("state") == "up"]
    assert links, doc.get("wan")
    return dict(links[0])


@pytest.mark.parametrize("pure", [False, True], ids=["c", "pure-python"])
async def test_a_flood_to_a_slow_node_of_another_hive_loses_nothing_and_is_never_refused(
        root: Path, pure: bool) -> None:
    env = {**os.environ}
    env.pop("FLUXBEE_PURE_PYTHON", None)
    if pure:
        env["FLUXBEE_PURE_PYTHON"] = "1"
    for cmd in (["wan", "ca", str(root / "ca")],
                ["wan", "issue", "--ca", str(root / "ca"), "--hive-id", "A", "--out", str(root / "A")],
                ["wan", "issue", "--ca", str(root / "ca"), "--hive-id", "B", "--out", str(root / "B")]):
        done = subprocess.run(fluxbee(*cmd, env=env), capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
    port = free_port()
    procs: list[subprocess.Popen[str]] = []
    logs: list[IO[str]] = []

    def router(hive: str, *link: str) -> subprocess.Popen[str]:
        log = (root / f"router-{hive}.log").open("w")
        logs.append(log)
        proc = subprocess.Popen(
            fluxbee("router", "--hive-id", hive, "--run-dir", str(root / hive / "run"), *link,
                    "--wan-cert", str(root / hive / "tls.crt"), "--wan-key", str(root / hive / "tls.key"),
                    "--wan-ca-cert", str(root / "ca" / "ca.crt"), env=env),
            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        procs.append(proc)
        wait_until(lambda: proc.poll() is not None or any((root / hive / "run" / "routers").glob("*.sock"))
                   if (root / hive / "run" / "routers").exists() else proc.poll() is not None,
                   timeout=60, what=f"router {hive}'s socket", step=0.1)
        assert proc.poll() is None, (root / f"router-{hive}.log").read_text()
        return proc

    try:
        router("A", "--wan-listen", f"127.0.0.1:{port}")
        router("B", "--uplink", f"127.0.0.1:{port}")
        consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, str(root / "B" / "run"), str(FLOOD)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs.append(consumer)
        assert consumer.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(consumer.stdout.readline), 60)
        assert line.strip() == "READY", consumer.stderr.read() if consumer.stderr else line

        sender, receiver = await connect(NodeConfig(name="WF.flood", run_dir=root / "A" / "run"))
        try:
            for _ in range(300):  # until a probe (payload -1, ignored by the consumer) is not refused
                await sender.send("WF.slow@B", -1)
                await asyncio.sleep(0.3)
                answers = []
                while (msg := receiver.recv_nowait()) is not None:
                    answers.append(msg)
                if not answers:
                    break
            else:
                raise AssertionError("WF.slow@B never became reachable from hive A")
            pad = "x" * PAD
            for i in range(FLOOD):
                await sender.send("WF.slow@B", {"i": i, "pad": pad})
            out, err = await asyncio.wait_for(asyncio.to_thread(consumer.communicate), 300)
            refused: list[Any] = []
            while (msg := receiver.recv_nowait()) is not None:
                refused.append(msg.payload)
            assert refused == [], f"{len(refused)} answers, the first: {refused[:3]}"
            status_a = await sender.router_status()
        finally:
            await sender.close()
        looker, _ = await connect(NodeConfig(name="WF.look", run_dir=root / "B" / "run"))
        try:
            status_b = await looker.router_status()
        finally:
            await looker.close()
        result = json.loads(out.strip().splitlines()[-1])
        assert result["got"] == FLOOD and result["in_order"], (result, err[-2000:])
        for status in (status_a, status_b):
            assert status["counters"]["dropped"].get(wire.DST_CONGESTED, 0) == 0, status["counters"]
        # the flood really was paced by flow control: B stopped reading the link, A held its producer
        assert _status(status_b, "A")["read_pauses"] > 0, status_b["wan"]
        assert status_a["counters"]["producer_pauses"] > 0, status_a["counters"]
    finally:
        for proc in reversed(procs):
            stop_process(proc, "flood test process", timeout=20, strict=False)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for log in logs:
            log.close()
