"""Two hives in a cluster, a mother and its worker, for the tests that need both (``pair`` in conftest.py).

Two namespaces, each with the chart installed as a user installs it: ``mother`` (a motherbee) and
``worker`` (``role: worker``, its mother ``mother``), each with the real operator (which makes the
hive's admin ConfigMap) and the cluster admin API (``fluxbee admin --backend kubernetes``) logged in
with a token of that hive's admin ServiceAccount only.  kwok runs no containers, so the data plane
is real local processes: one ``fluxbee router`` per hive, linked over loopback mutual TLS with
certificates from ``fluxbee wan ca``/``issue``, and each admin API finds its hive's router in its
socket directory, as it would in the hive pod.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chart_support import helm
from cluster_support import ControlPlane
from hive_harness import RouterProc
from operator_support import AdminApi, FluxbeeProcess, Release, get, start_admin

GLOBAL_KEY = "global-config.json"
MARK = "fluxbee.io/global-config-version"
FOLLOWER = "fluxbee.io/global-config-follower"


@dataclass
class Hive:
    name: str
    release: Release
    operator: FluxbeeProcess
    router: RouterProc
    work: Path
    admin: AdminApi | None = None

    @property
    def ns(self) -> str:
        return self.release.namespace


@dataclass
class Pair:
    cp: ControlPlane
    mother: Hive
    worker: Hive

    def spec(self, hive: Hive) -> dict[str, Any]:
        found = get(self.cp, hive.ns, "hive", hive.name)
        assert found is not None
        spec: dict[str, Any] = found["spec"]
        return spec

    def doc(self, hive: Hive) -> dict[str, Any] | None:
        """The hive's global document as the API server has it (None: none recorded)."""
        cm = get(self.cp, hive.ns, "configmap", f"{hive.name}-admin-history")
        raw = ((cm or {}).get("data") or {}).get(GLOBAL_KEY)
        return json.loads(raw) if raw is not None else None

    def version(self, hive: Hive) -> int:
        return int((self.doc(hive) or {}).get("version", 0))

    def marked(self, hive: Hive) -> int:
        """The global version the Hive is annotated with (what its spec holds)."""
        found = get(self.cp, hive.ns, "hive", hive.name) or {}
        return int(((found.get("metadata") or {}).get("annotations") or {}).get(MARK, "0"))


def prefixes(spec: dict[str, Any]) -> list[str]:
    return [r["prefix"] for r in spec.get("routes") or []]


def vpn_ids(spec: dict[str, Any]) -> list[int]:
    return [v["vpnId"] for v in spec.get("vpns") or []]


def install(cp: ControlPlane, ns: str, hive: str, *values: str) -> Release:
    """The chart with one Hive (its admin ServiceAccount, Role and token), the operator Deployment at
    0 replicas (the operator under test is a subprocess), identity off (no database needed here)."""
    cp.kubectl("create", "namespace", ns)
    helm(cp, "install", "fb", str(Path(__file__).resolve().parents[3] / "charts" / "fluxbee"), "--namespace", ns,
         "--set", "operator.watchReleaseNamespaceOnly=true", "--set", "image.repository=example.invalid/fluxbee",
         "--set", "image.tag=test", "--set", "hive.enabled=true", "--set", f"hive.name={hive}",
         "--set", "hive.identity.enabled=false", *values)
    release = Release(ns)
    cp.kubectl("-n", ns, "scale", "deployment", release.operator_account, "--replicas=0")
    return release


def fluxbee(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "fluxbee", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def certificate(root: Path, hive: str) -> tuple[str, ...]:
    out = root / f"cert-{hive}"
    fluxbee("wan", "issue", "--ca", str(root / "ca"), "--hive-id", hive, "--out", str(out))
    return ("--wan-cert", str(out / "tls.crt"), "--wan-key", str(out / "tls.key"),
            "--wan-ca-cert", str(root / "ca" / "ca.crt"), "--link-hello-interval", "0.3",
            "--link-dead-interval", "2")


def start_hive_admin(cp: ControlPlane, hive: Hive, label: str) -> AdminApi:
    admin = start_admin(cp, hive.release, hive.name, hive.work / label, hive.router.run_dir,
                        hive.router.credential_file)

    def connected() -> bool:
        return bool(admin.call("GET", "/hive/status")[1]["payload"]["router_connected"])

    admin.process.wait_for(f"{hive.name}'s admin API to join its router", connected, timeout=30)
    return admin
