"""What a running router has imported: the link machinery and the resource models only when it needs them.

A router without links has no use for the link manager, its TLS sessions or the certificate code (the
``cryptography`` package), nor for any resource model but the routes and VPN rules; loading them cost
it about 13 MB of resident memory.  These tests start ``fluxbee router`` as a user does, with
``PYTHONVERBOSE=1`` (a standard Python setting: every module the process ever loads is reported on
stderr, the ones imported at run time or through ``importlib`` included; ``-X importtime`` misses
the latter), make it take the paths that could
import more (the general path, unreachable answers, a ``next_hop_hive`` route, ``dst: null``, a status
request, a config reload), stop it, and read the list.  The linked router is the control: the same
reading must show the link machinery there, so the check can fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hive_harness import fluxbee_argv, free_port, stop_process, wait_until

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, UnreachableError, connect

LINK_MACHINERY = (
    "cryptography",
    "fluxbee.dataplane.link.certs",
    "fluxbee.dataplane.link.manager",
    "fluxbee.dataplane.link.protocol",
    "fluxbee.dataplane.link.session",
    "fluxbee.dataplane.link.table",
    "fluxbee.dataplane.router.links",
    "fluxbee.dataplane.router.linkroute",
)
"""Modules (and packages, with everything under them) a router without links must not import."""
OTHER_MODELS = (
    "fluxbee.models.crd",
    "fluxbee.models.effective",
    "fluxbee.models.links",
    "fluxbee.models.resources",
    "fluxbee.models.status",
)
"""Resource models the router never builds: it reads routes and VPN rules only (fluxbee.models.routing)."""
ON_DEMAND = ("aiohttp", "regorus", "wasmtime")
"""Loaded for --metrics-addr and for a policy only; this router has neither."""

_IMPORT_LINE = re.compile(r"^import '([^']+)' # ")
CONFIG = {
    "hive_id": "t",
    "routes": [{"prefix": "WF.far", "action": "FORWARD", "next_hop_hive": "other"},
               {"prefix": "WF.legacy", "action": "DROP"}],
    "vpns": [{"pattern": "WF.red", "vpn_id": 7}],
}


def imported(stderr: str) -> set[str]:
    """Every module ``PYTHONVERBOSE`` output reports loaded (``import 'name' # <loader>``)."""
    return {m.group(1) for line in stderr.splitlines() if (m := _IMPORT_LINE.match(line))}


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that are one of ``names`` or under one of them."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


class Router:
    """``fluxbee router`` in a child process that reports its imports on stderr."""

    def __init__(self, run_dir: Path, *extra: str) -> None:
        self.run_dir = run_dir
        self.config = run_dir / "hive-config.json"
        self.config.write_text(json.dumps(CONFIG))
        self.log = run_dir / "router.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                fluxbee_argv("router", "--hive-id", "t", "--run-dir", str(run_dir), "--config", str(self.config),
                             *extra),
                stdout=out, stderr=out, env={**os.environ, "PYTHONVERBOSE": "1", "FLUXBEE_LOG": "INFO"},
            )
        wait_until(self._listening, 30, "the router to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"router exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        return "listening on" in self.log.read_text()

    def stop(self) -> set[str]:
        """Stop the router (it must exit 0) and return every module it imported."""
        code = stop_process(self.proc, "router")
        text = self.log.read_text()
        assert code == 0, text[-3000:]
        return imported(text)


@pytest.fixture
async def started(run_dir: Path) -> AsyncIterator[list[Router]]:
    routers: list[Router] = []
    yield routers
    for router in routers:
        stop_process(router.proc, "router", strict=False)


async def client(run_dir: Path) -> NodeSender:
    sender, _ = await connect(NodeConfig(name="WF.probe", run_dir=run_dir, connect_timeout=10))
    return sender


async def unreachable_reason(sender: NodeSender, dst: str | None) -> str:
    with pytest.raises(UnreachableError) as err:
        await sender.request(dst, "x", timeout=10)
    return err.value.reason


async def test_a_router_without_links_loads_no_link_machinery_and_only_the_routing_models(
        run_dir: Path, started: list[Router]) -> None:
    router = Router(run_dir)
    started.append(router)
    sender = await client(run_dir)
    try:
        assert await unreachable_reason(sender, "WF.nobody") == wire.NODE_NOT_FOUND
        assert await unreachable_reason(sender, "WF.far") == wire.WAN_UNAVAILABLE  # next_hop_hive, no link
        assert await unreachable_reason(sender, "WF.echo@other") == wire.WAN_UNAVAILABLE
        assert await unreachable_reason(sender, None) == wire.OPA_ERROR  # dst null, no policy loaded
        status = await sender.router_status()
        assert status["wan"]["links"] == [] and status["mesh"]["listen"] is None
        assert [r["prefix"] for r in status["routes"]] == ["WF.far", "WF.legacy"]
        version = status["config_version"]
        router.config.write_text(json.dumps({**CONFIG, "vpns": [{"pattern": "WF.blue", "vpn_id": 8}]}))
        for _ in range(600):  # the file is polled every second; generous under load
            status = await sender.router_status()
            if status["config_version"] > version:
                break
            await asyncio.sleep(0.05)
        assert status["vpns"] == [{"pattern": "WF.blue", "match_kind": "PREFIX", "vpn_id": 8, "priority": 100}]
    finally:
        await sender.close()
    modules = router.stop()
    # The reading itself works: the general path and the routing models are listed.
    assert {"fluxbee.dataplane.router.dispatch", "fluxbee.models.routing", "pydantic"} <= modules
    assert loaded(modules, LINK_MACHINERY) == []
    assert loaded(modules, OTHER_MODELS) == []
    assert loaded(modules, ON_DEMAND) == []


async def test_a_router_with_tls_links_loads_the_link_machinery_and_listens(
        run_dir: Path, started: list[Router], tmp_path: Path) -> None:
    ca, cert = tmp_path / "ca", tmp_path / "cert"
    for args in (("wan", "ca", str(ca)), ("wan", "issue", "--ca", str(ca), "--hive-id", "t", "--out", str(cert))):
        done = subprocess.run(fluxbee_argv(*args), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    port = free_port()
    router = Router(run_dir, "--wan-listen", f"127.0.0.1:{port}", "--wan-cert", str(cert / "tls.crt"),
                    "--wan-key", str(cert / "tls.key"), "--wan-ca-cert", str(ca / "ca.crt"))
    started.append(router)
    sender = await client(run_dir)
    try:
        status: dict[str, Any] = await sender.router_status()
        assert status["wan"]["listen"] == f"127.0.0.1:{port}"
        assert await unreachable_reason(sender, "WF.echo@other") == wire.WAN_UNAVAILABLE
    finally:
        await sender.close()
    modules = router.stop()
    for name in ("cryptography", "fluxbee.dataplane.link.manager", "fluxbee.dataplane.link.session",
                 "fluxbee.dataplane.link.certs", "fluxbee.dataplane.router.links"):
        assert name in modules, f"{name} not imported by a router with links"
    assert loaded(modules, OTHER_MODELS) == []
