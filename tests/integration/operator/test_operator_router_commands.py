"""The router commands the operator writes into its pods, run for real as ``fluxbee router``.

kwok runs no container, so the cluster tests see the commands but never their effect.  Here the
DaemonSet's and the gateway Deployment's router commands of two hives are started on loopback with
certificates the operator's own path issues (``issue_hive_cert`` with the hive's DNS names, from one
CA), changing only what a pod gets from Kubernetes: mounted file paths become temporary files, the
ports become free loopback ports, and ``--mesh-dns`` (a headless Service whose addresses all share
one port, which loopback cannot give two routers) becomes ``--mesh-peer`` with the other router's
address.  Every other flag is the operator's, unchanged.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hive_harness import RouterProc, free_port, wait_until

from fluxbee.dataplane.link.certs import issue_hive_cert, make_ca
from fluxbee.models import Hive
from fluxbee.operator.hive.build import build_daemon_set, router_config
from fluxbee.operator.hive.gateway import build_gateway_deployment
from fluxbee.operator.hive.links import certificate_dns_names
from fluxbee.operator.settings import OperatorSettings

pytestmark = pytest.mark.integration

SETTINGS = OperatorSettings(image="img:1")
NAMESPACE = "ns"
PATHS = {"--run-dir", "--config", "--claims-dir", "--wan-cert", "--wan-key", "--wan-ca-cert", "--metrics-addr"}


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbo", dir="/tmp"))  # short: socket paths have a length limit
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def started() -> Iterator[list[RouterProc]]:
    procs: list[RouterProc] = []
    yield procs
    for proc in reversed(procs):
        proc.stop()


def router_command(manifest: dict[str, Any]) -> list[str]:
    (router,) = [c for c in manifest["spec"]["template"]["spec"]["containers"] if c["name"] == "router"]
    command: list[str] = router["command"]
    assert command[:2] == ["fluxbee", "router"]
    return command[2:]


def pod_args(args: list[str], *, certs: Path, ports: dict[str, str], mesh_peer: str) -> tuple[str, ...]:
    """The pod's flags minus what RouterProc sets itself (run dir, config, claims, metrics), with the
    certificate files at ``certs`` and the listeners on ``ports``; ``--mesh-dns`` → ``--mesh-peer``."""
    out: list[str] = []
    pairs = iter(args)
    for flag in pairs:
        value = next(pairs)
        if flag in ("--run-dir", "--config", "--claims-dir", "--metrics-addr"):
            continue
        if flag in ("--wan-cert", "--wan-key", "--wan-ca-cert"):
            value = str(certs / Path(value).name)
        elif flag in ports:
            assert value.startswith("0.0.0.0:"), (flag, value)  # the pods listen on every interface
            value = ports[flag]
        elif flag == "--mesh-dns":
            flag, value = "--mesh-peer", mesh_peer
        out += [flag, value]
    return tuple(out)


def issue(root: Path, ca: tuple[bytes, bytes], hive: Hive) -> Path:
    """What ``<hive>-wan-tls`` holds, as the pod sees it mounted."""
    cert, key = issue_hive_cert(*ca, hive.hive_id, dns_names=certificate_dns_names(hive, NAMESPACE))
    out = root / f"tls-{hive.metadata.name}"
    out.mkdir()
    for name, data in (("tls.crt", cert), ("tls.key", key), ("ca.crt", ca[0])):
        (out / name).write_bytes(data)
    return out


def mesh_up(router: RouterProc) -> bool:
    return any(link["state"] == "up" for link in router.status()["mesh"]["links"])


def test_the_operators_router_commands_mesh_a_hive_and_link_two_hives(root: Path,
                                                                       started: list[RouterProc]) -> None:
    ca = make_ca("operator CA")
    mother_wan = free_port()
    mother = Hive.model_validate({"metadata": {"name": "mother", "namespace": NAMESPACE},
                                  "spec": {"wan": {"authorizedHives": ["worker"]}}})
    worker = Hive.model_validate({"metadata": {"name": "worker", "namespace": NAMESPACE},
                                  "spec": {"role": "worker", "wan": {
                                      "uplinks": [{"address": f"127.0.0.1:{mother_wan}"}],
                                      "authorizedHives": ["mother"]}}})
    routers: dict[str, RouterProc] = {}
    for hive in (mother, worker):
        certs = issue(root, ca, hive)
        host_mesh, gateway_mesh = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        wan = f"127.0.0.1:{mother_wan if hive is mother else free_port()}"
        config = router_config(hive, 1)
        for role, manifest, mesh, peer in (
                ("host", build_daemon_set(hive, NAMESPACE, SETTINGS), host_mesh, gateway_mesh),
                ("gateway", build_gateway_deployment(hive, NAMESPACE, SETTINGS), gateway_mesh, host_mesh)):
            args = router_command(manifest)
            assert PATHS <= set(args)
            run_dir = root / f"{hive.metadata.name}-{role}"
            run_dir.mkdir()
            (run_dir / "claims").mkdir()
            extra = pod_args(args, certs=certs, ports={"--mesh-listen": mesh, "--wan-listen": wan}, mesh_peer=peer)
            router = RouterProc(run_dir, hive_id=hive.hive_id, config=yaml.safe_load(yaml.safe_dump(config)),
                                extra=extra)
            started.append(router)
            routers[f"{hive.metadata.name}-{role}"] = router

    # Within each hive, the host's router and the gateway mesh with the operator's certificate.
    for name in ("mother-host", "mother-gateway", "worker-host", "worker-gateway"):
        wait_until(lambda name=name: mesh_up(routers[name]), timeout=30, what=f"{name}'s mesh link")
    assert routers["mother-host"].status()["wan"]["listen"] is None  # only gateways hold WAN links

    # Between hives, the worker's gateway dials the mother's: each side believes the other's certificate.
    def wan_link(name: str, peer: str) -> bool:
        return any(link["state"] == "up" and link["hive_id"] == peer
                   for link in routers[name].status()["wan"]["links"])

    wait_until(lambda: wan_link("worker-gateway", "mother") and wan_link("mother-gateway", "worker"),
               timeout=30, what="the WAN link between the two gateways")
    # …and the worker's host router learns the route to the mother hive over its mesh.
    wait_until(lambda: any(r["hive"] == "mother" for r in routers["worker-host"].status()["wan"]["routes"]),
               timeout=30, what="the worker host router's route to mother")
