"""The in-pod half of policy delivery, with real processes on loopback (kwok runs no containers).

The router is started with the command of the hive DaemonSet's router container, as the
operator's builder writes it, with the mount paths pointed at directories laid out the way kubelet
projects a ConfigMap (``..data`` → a timestamped directory, each key a symlink through ``..data``;
an update writes a new timestamped directory and renames a new ``..data`` link over the old one).
The policy directory holds what the Policy's reconcile writes into the hive's ConfigMap.  Only the
link flags are left out (no certificates here; the mesh plays no part in loading a policy).

Checked: a ``dst: null`` message is routed by the delivered policy; a new version swapped in by
kubelet's rename routes the next messages elsewhere; a rollback to a lower version is taken; a
tampered artefact (bytes that do not match the delivered sha256) and a truncated one are refused
while the running version keeps routing, and the router's status says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hive_harness import free_port, stop_process, wait_until

from fluxbee.dataplane.policy import compile_policy
from fluxbee.dataplane.sdk import NodeConfig, connect
from fluxbee.dataplane.wire import Message, Meta
from fluxbee.models import Hive
from fluxbee.operator.hive.build import (
    CLAIMS_MOUNT,
    CONFIG_MOUNT,
    POLICY_MOUNT,
    RUN_DIR,
    build_config_map,
    build_daemon_set,
    policy_config_map_name,
)
from fluxbee.operator.policy.build import build_delivery_config_map
from fluxbee.operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[3]
HIVE_ID = "mnt"
POLICY = 'package router\n\ntarget := "WF.{name}@mnt" if {{\n\tinput.meta.action == "route"\n}}\n'
LINK_FLAGS = ("--mesh-listen", "--mesh-dns", "--wan-cert", "--wan-key", "--wan-ca-cert")


def _opa() -> str | None:
    proc = subprocess.run(["bash", str(REPO / "hack" / "build-tools.sh"), "--opa"], capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode == 3:
        print(f"no opa here; the artefacts are regorus ones: {proc.stderr.strip()}")
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def project(directory: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into ``directory`` as kubelet updates a ConfigMap volume: a new timestamped
    directory, a ``..data`` link renamed over the old one, key links through ``..data``."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir()
    for key, value in files.items():
        (stamp / key).write_bytes(value)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    tmp = directory / "..data_tmp"
    os.symlink(stamp.name, tmp)
    os.replace(tmp, data)
    for key in files:
        link = directory / key
        if not link.is_symlink():
            os.symlink(f"..data/{key}", link)
    if old is not None:
        shutil.rmtree(directory / old)


def config_map_files(cm: Mapping[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's keys as kubelet writes them (binaryData decoded)."""
    import base64

    out = {k: str(v).encode() for k, v in (cm.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return out


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbm", dir="/tmp"))  # short: the socket path has a length limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


def delivered(version: int, target: str, opa: str | None) -> dict[str, Any]:
    """The hive's policy ConfigMap the Policy's reconcile writes for ``version`` routing to ``target``."""
    artefact = compile_policy(POLICY.format(name=target), opa=opa, use_opa=opa is not None)
    return build_delivery_config_map(policy_config_map_name("mnt"), "route", "ns", version, artefact.to_bytes())


def router_argv(root: Path, metrics_port: int) -> list[str]:
    """The DaemonSet's router command with the mounts moved under ``root`` and without link flags."""
    hive = Hive.model_validate({"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive", "metadata": {"name": "mnt"},
                                "spec": {"hiveId": HIVE_ID}})
    ds = build_daemon_set(hive, "ns", OperatorSettings())
    router = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "router")
    assert {"name": "policy", "mountPath": POLICY_MOUNT, "readOnly": True} in router["volumeMounts"]
    moved = {RUN_DIR: str(root / "run"), CONFIG_MOUNT: str(root / "config"), CLAIMS_MOUNT: str(root / "claims"),
             POLICY_MOUNT: str(root / "policy")}
    argv: list[str] = []
    args = iter(router["command"])
    for arg in args:
        if arg in LINK_FLAGS:
            next(args)
            continue
        if arg == "--metrics-addr":
            next(args)
            argv += [arg, f"127.0.0.1:{metrics_port}"]
            continue
        for mount, local in moved.items():
            if arg == mount or arg.startswith(mount + "/"):
                arg = local + arg[len(mount):]
        argv.append(arg)
    assert argv[:2] == ["fluxbee", "router"] and "--policy-dir" in argv
    project(root / "config", config_map_files(build_config_map(hive, "ns", 1)))
    project(root / "claims", {})
    return [sys.executable, "-m", "fluxbee", *argv[1:]]


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return dict(json.loads(r.read()))["policy"]


async def route_one(run_dir: Path, tag: int) -> str:
    """Send one ``dst: null`` message with action ``route``; the name of the node that got it."""
    got: asyncio.Queue[tuple[str, Message]] = asyncio.Queue()
    nodes = []
    for name in ("WF.a", "WF.b"):
        sender, receiver = await connect(NodeConfig(name=name, run_dir=run_dir, reconnect=False))
        nodes.append(sender)

        async def pump(name: str = name, receiver: Any = receiver) -> None:
            async for msg in receiver:
                await got.put((name, msg))

        asyncio.get_running_loop().create_task(pump(), name=f"pump-{name}")
    probe, _ = await connect(NodeConfig(name="WF.probe", run_dir=run_dir, reconnect=False))
    try:
        await probe.send(None, {"tag": tag}, meta=Meta(type="user", action="route"))
        name, msg = await asyncio.wait_for(got.get(), 10)
        assert msg.payload == {"tag": tag}
        return name
    finally:
        for s in (probe, *nodes):
            await s.close()


def test_router_runs_the_mounted_policy_swaps_versions_and_refuses_a_tampered_one(root: Path) -> None:
    opa = _opa()
    v1, v2 = delivered(1, "a", opa), delivered(2, "b", opa)
    project(root / "policy", config_map_files(v1))
    port = free_port()
    log = root / "router.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(router_argv(root, port), stdout=out, stderr=out)
    try:
        def policy_is(version: int) -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(f"router exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                st = status(port)
            except OSError:
                return None
            return st if st["version"] == version else None

        st = wait_until(lambda: policy_is(1), 30, "version 1 loaded from the mounted directory", step=0.2)
        assert st["hash"] == f"sha256:{v1['data']['sha256']}"
        assert st["engine"] == ("wasm" if opa else "regorus")
        run_dir = root / "run"
        assert asyncio.run(route_one(run_dir, 1)) == "WF.a"

        # kubelet swaps in version 2: the next message goes to WF.b
        project(root / "policy", config_map_files(v2))
        wait_until(lambda: policy_is(2), 30, "version 2 swapped in", step=0.2)
        assert asyncio.run(route_one(run_dir, 2)) == "WF.b"

        # a tampered artefact (one byte changed, the delivered sha256 kept) is refused; 2 keeps routing
        files = config_map_files(delivered(3, "a", opa))
        raw = bytearray(files["artefact"])
        raw[len(raw) // 2] ^= 0x01
        project(root / "policy", {**files, "artefact": bytes(raw)})

        def refused(code: str, version: int) -> dict[str, Any] | None:
            st = status(port)
            err = st.get("error") or {}
            return st if err.get("code") == code and err.get("version") == version else None

        st = wait_until(lambda: refused("HASH_MISMATCH", 3), 30, "the tampered version 3 refused", step=0.2)
        assert st["version"] == 2 and st["error"]["source"] == "policy-dir"
        assert asyncio.run(route_one(run_dir, 3)) == "WF.b"

        # the digest of truncated bytes, but not an artefact: refused by its own check
        cut = files["artefact"][:40]
        project(root / "policy", {**files, "version": b"4", "artefact": cut,
                                  "sha256": hashlib.sha256(cut).hexdigest().encode()})
        st = wait_until(lambda: refused("POLICY_LOAD_ERROR", 4), 30, "the truncated version 4 refused", step=0.2)
        assert st["version"] == 2
        assert asyncio.run(route_one(run_dir, 4)) == "WF.b"

        # rollback: the operator delivers version 1 again; the router goes back to it
        project(root / "policy", config_map_files(v1))
        st = wait_until(lambda: policy_is(1), 30, "the rollback to version 1", step=0.2)
        assert st["error"] is None
        assert asyncio.run(route_one(run_dir, 5)) == "WF.a"
        assert "refused" in log.read_text()
    finally:
        assert stop_process(proc, "router") == 0, log.read_text()[-3000:]
