"""An identity replica on a worker hive cut off from the mother by a real network fault, then caught up.

Two hosts (network namespaces, or loopback where they cannot be made): hive A, the mother, with the
identity primary and its PostgreSQL, and hive B, a worker whose router dials A's gateway over their
wire.  The wire's interfaces go down; once A has closed the dead link, an IO node on A provisions an
identity (a write on the primary); the wire comes back up and B's replica must reach the primary's
version and hold the new identity in its shared-memory region.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import topology as topo
from hive_harness import read_identity_region
from hosts import DEAD_S, TIMERS, Host, fluxbee, links_up, negate, until

from fluxbee.dataplane.sdk import NodeConfig, connect
from fluxbee.identity import client as idc

pytestmark = pytest.mark.integration


def hive_file(hive: str, mother: str | None) -> str:
    spec = {"role": "worker", "motherHive": mother} if mother else {"role": "motherbee"}
    docs = [{"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive", "metadata": {"name": hive}, "spec": spec},
            {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": "echo"},
             "spec": {"hive": hive, "nodeName": "WF.echo", "runtime": "fluxbee.echo"}}]
    return "\n---\n".join(json.dumps(d) for d in docs)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[topo.Topology, Host, Host]]:
    net, why = topo.make(["a", "b"], [("a", "b")])
    print(f"\nidentity catch-up test: {net.kind} variant" + (f" ({why})" if why else ""))
    root = Path(tempfile.mkdtemp(prefix="fbi", dir="/tmp"))
    root.chmod(0o755)  # embedded PostgreSQL may drop to 'postgres' when run as root: it must enter the dirs
    started: list[Host] = []
    try:
        assert fluxbee("wan", "ca", str(root / "ca")).returncode == 0
        up = [sys.executable, "-m", "fluxbee", "up", "--admin-listen", "off", "--wan-ca", str(root / "ca"), *TIMERS]
        for host, hive, mother, args in (
                ("a", "A", None, ["--wan-listen", net.listen("a", net.port("a"))]),
                ("b", "B", "A", ["--uplink", net.address("a", "b", net.port("a"))])):
            (root / hive).mkdir()
            (root / hive).chmod(0o755)
            (root / f"{hive}.yaml").write_text(hive_file(hive, mother))
            h = Host(host, [*up, "-f", str(root / f"{hive}.yaml"), "--hive-id", hive, "--run-dir",
                            str(root / hive / "run"), *args], root / hive / "run", root / f"{hive}.log", identity=True)
            h.start(net, f"WF.echo@{hive}")
            started.append(h)
        yield net, started[0], started[1]
    finally:
        if isinstance(net, topo.Loopback):
            net.thaw()
        for h in reversed(started):
            h.stop()
        net.teardown()
        shutil.rmtree(root, ignore_errors=True)


async def metrics(host: Host, target: str) -> dict[str, Any]:
    sender, _ = await connect(NodeConfig(name="WF.faults.probe", run_dir=host.run_dir, connect_timeout=10.0))
    try:
        return await idc.identity_metrics(sender, target=target, fallback=None)
    finally:
        await sender.close()


async def replica_at(host: Host, version: int) -> bool:
    try:
        m = await metrics(host, "SY.identity@B")
    except Exception:  # noqa: BLE001 - SY.identity not up yet, or the link still down: ask again
        return False
    assert m["role"] == "replica" and m["primary"] == "SY.identity@A", m
    return bool(m["sync"]["synced"] and m["sync"]["version"] >= version)


async def test_a_worker_replica_catches_up_after_a_cut_wire(pair: tuple[topo.Topology, Host, Host]) -> None:
    net, a, b = pair
    await until(lambda: replica_at(b, 0), 150, "B's replica synced with the primary on A")
    before = int((await metrics(a, "SY.identity@A"))["published_version"])
    net.cut("a", "b")
    try:
        await until(lambda: negate(asyncio.to_thread(links_up, a.run_dir, "B")), DEAD_S + 15,
                    "A closing the dead link to B")
        address = f"+54{uuid.uuid4().int % 10**9}"
        io, _ = await connect(NodeConfig(name="IO.faults.whatsapp", run_dir=a.run_dir, connect_timeout=10.0))
        try:
            ilk = str((await idc.provision_ilk(io, "whatsapp", address))["ilk_id"])  # the primary takes a write
        finally:
            await io.close()
        version = int((await metrics(a, "SY.identity@A"))["published_version"])
        assert version > before
        assert not await replica_at(b, version)  # B cannot have it: the wire is down
    finally:
        net.heal("a", "b")
    caught = await until(lambda: replica_at(b, version), 90, f"B's replica at the primary's version {version}")
    print(f"\n[{net.kind}] B's replica caught up to version {version} {caught:.2f} s after the wire came back")
    info = read_identity_region("B", b.run_dir, lambda r: r.resolve(ilk))  # written while B was cut off
    assert info is not None and info.registration_status == "temporary"
