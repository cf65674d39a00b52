"""The chart, the operator and the admin API on the real control plane, as a user runs them.

:func:`install_chart` installs charts/fluxbee with the real ``helm`` CLI (its CRDs, its
ServiceAccounts and its least-privilege Roles) into a test's namespace, with the in-cluster
operator Deployment at 0 replicas: its image does not exist here, and the operator under test is
``fluxbee operator`` run by :class:`FluxbeeProcess` on this machine, logged in with a token of the
chart's ServiceAccount and nothing else in its environment (PATH, HOME, KUBECONFIG), so every
permission the chart forgot shows up as a failure: a refused request in its log fails the test.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from chart_support import helm
from cluster_support import ControlPlane, wait_for

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "fluxbee"
RELEASE = "fb"
T = TypeVar("T")

# What a refused request looks like in kopf's or our client's log lines.
REFUSALS = ("forbidden", "Forbidden", "401 Unauthorized", "Unauthorized")


@dataclass(frozen=True)
class Release:
    """One helm release of charts/fluxbee in one namespace."""

    namespace: str
    name: str = RELEASE

    @property
    def operator_account(self) -> str:
        return f"{self.name}-fluxbee-operator"

    @property
    def peering(self) -> str:
        return f"{self.name}-fluxbee-operator"


def install_chart(cp: ControlPlane, namespace: str, *, peers: int = 1, hive: str | None = None) -> Release:
    """``helm install`` the chart into ``namespace``, watching that namespace only (a Role, not a
    ClusterRole: releases of parallel tests do not share cluster-wide names).

    ``peers`` is the chart's ``operator.replicas``: 2+ makes the chart add the KopfPeering and the
    rights to it.  The Deployment is scaled to 0 afterwards (its Pods would only be kwok's
    pretence); the operators under test are subprocesses.  ``hive`` also installs one Hive of
    that name with its admin ServiceAccount and token Secret (``hive.enabled``).
    """
    release = Release(namespace)
    values = ["--set", "operator.watchReleaseNamespaceOnly=true", "--set", f"operator.replicas={peers}",
              "--set", "image.repository=example.invalid/fluxbee", "--set", "image.tag=test"]
    if hive is not None:
        values += ["--set", "hive.enabled=true", "--set", f"hive.name={hive}"]
    helm(cp, "install", release.name, str(CHART), "--namespace", namespace, *values)
    if peers:
        cp.kubectl("-n", namespace, "scale", "deployment", f"{release.operator_account}", "--replicas=0")
    return release


def account_token(cp: ControlPlane, namespace: str, account: str) -> str:
    return cp.kubectl("-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()


def user_env(cp: ControlPlane, home: Path, kubeconfig: Path) -> dict[str, str]:
    """PATH (this Python's scripts and the cluster tools), an empty HOME and KUBECONFIG: nothing else."""
    home.mkdir(parents=True, exist_ok=True)
    scripts = Path(sys.executable).parent
    return {"PATH": os.pathsep.join([str(scripts), str(cp.bin), "/usr/bin", "/bin"]), "HOME": str(home),
            "KUBECONFIG": str(kubeconfig)}


@dataclass
class FluxbeeProcess:
    """``fluxbee ARGS…`` as a subprocess with ``env`` only; its output goes to ``log``."""

    args: tuple[str, ...]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    exit_code: int | None = field(default=None, init=False)

    def start(self) -> FluxbeeProcess:
        fluxbee = Path(sys.executable).parent / "fluxbee"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(fluxbee), *self.args], env=self.env, cwd=self.log.parent,
                                         stdout=out, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"fluxbee {' '.join(self.args)} died ({self.proc.returncode}); its log ends:\n{self.tail()}")

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
        """:func:`wait_for`, failing at once with the log's tail if the process died meanwhile."""

        def checked() -> T | None:
            self.check_alive()
            return probe()

        return wait_for(what, checked, timeout)

    def stop(self) -> None:
        """SIGTERM and wait; fails the test if it had died before, or if a request was refused."""
        if self.proc is None:
            return
        self.check_alive()
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.exit_code = proc.wait()
            pytest.fail(f"fluxbee {' '.join(self.args)} did not stop within 30 s of SIGTERM:\n{self.tail()}")
        refused = [line for line in self.output().splitlines() if any(r in line for r in REFUSALS)]
        if refused:
            pytest.fail(f"fluxbee {' '.join(self.args)} was refused by the API server (missing RBAC?):\n"
                        + "\n".join(refused[:10]))


def start_operator(cp: ControlPlane, release: Release, workdir: Path, *extra: str,
                   label: str = "operator") -> FluxbeeProcess:
    """``fluxbee operator --namespace NS`` logged in as the chart's operator ServiceAccount."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = account_token(cp, release.namespace, release.operator_account)
    kubeconfig = cp.token_kubeconfig(token, workdir / f"{label}.kubeconfig", release.namespace)
    env = user_env(cp, workdir / f"{label}-home", kubeconfig)
    return FluxbeeProcess(("operator", "--namespace", release.namespace, *extra), env,
                          workdir / f"{label}.log").start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AdminApi:
    """``fluxbee admin --backend kubernetes`` on a loopback port, and how to call it."""

    process: FluxbeeProcess
    base: str
    token: str | None

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             token: str | None = "default") -> tuple[int, Any]:
        bearer = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


def start_admin(cp: ControlPlane, release: Release, hive: str, workdir: Path,
                run_dir: Path | None = None, credential_file: Path | None = None) -> AdminApi:
    """The admin API of ``hive`` logged in as the chart's admin ServiceAccount of that hive, with
    the bearer token of the chart's admin Secret (``--token-file``); ``run_dir`` is where it looks
    for the hive's router (short: socket paths have a length limit), and ``credential_file`` the token
    that proves its claimed name SY.admin to that router (README: Trust model)."""
    workdir.mkdir(parents=True, exist_ok=True)
    admin = "app.kubernetes.io/component=admin"
    (account,) = objects(cp, release.namespace, "serviceaccounts", admin)  # the chart makes one
    token = account_token(cp, release.namespace, account["metadata"]["name"])
    kubeconfig = cp.token_kubeconfig(token, workdir / "admin.kubeconfig", release.namespace)
    (secret,) = [s for s in objects(cp, release.namespace, "secrets", admin) if "token" in (s.get("data") or {})]
    bearer = base64.b64decode(secret["data"]["token"]).decode()
    token_file = workdir / "admin-token"
    token_file.write_text(bearer)
    run_dir = run_dir or workdir / "run"
    run_dir.mkdir(exist_ok=True)
    port = free_port()
    env = user_env(cp, workdir / "admin-home", kubeconfig)
    if credential_file is not None:
        env["FLUXBEE_NODE_CREDENTIAL_FILE"] = str(credential_file)
    process = FluxbeeProcess(("admin", "--backend", "kubernetes", "--listen", f"127.0.0.1:{port}", "--hive", hive,
                              "--token-file", str(token_file), "--run-dir", str(run_dir)),
                             env, workdir / "admin.log").start()
    api = AdminApi(process, f"http://127.0.0.1:{port}", bearer)

    def serving() -> bool:
        try:
            return api.call("GET", "/health")[0] == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    process.wait_for("the admin API to serve", serving, timeout=30)
    return api


# --- what the tests read back with kubectl ---------------------------------------------------------


def objects(cp: ControlPlane, namespace: str, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["-n", namespace, kind] + (["-l", selector] if selector else [])
    items: list[dict[str, Any]] = cp.get_json(*args)["items"]
    return sorted(items, key=lambda o: o["metadata"]["name"])


def get(cp: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = cp.kubectl("-n", namespace, "get", kind, name, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            return None
        pytest.fail(f"kubectl get {kind} {name}: {proc.stderr.strip()}")
    obj: dict[str, Any] = json.loads(proc.stdout)
    return obj


def apply(cp: ControlPlane, namespace: str, manifest: dict[str, Any] | list[dict[str, Any]],
          check: bool = True) -> subprocess.CompletedProcess[str]:
    docs = manifest if isinstance(manifest, list) else [manifest]
    return cp.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                             "items": docs}), check=check)


def running_pods(cp: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods of ``selector`` that are scheduled, Running and not being deleted."""
    return [p for p in objects(cp, namespace, "pods", selector)
            if p["spec"].get("nodeName") and p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    found = [c for c in conds if c.get("type") == ctype]
    assert found, f"no {ctype} condition in {obj.get('status')}"
    return found[0]


def reconciled(cp: ControlPlane, namespace: str, kind: str, name: str, phase: str) -> Callable[[], Any]:
    """A probe: the object at ``phase`` with ``observedGeneration`` equal to its generation."""

    def probe() -> dict[str, Any] | None:
        obj = get(cp, namespace, kind, name)
        status = (obj or {}).get("status") or {}
        if obj and status.get("phase") == phase and status.get("observedGeneration") == obj["metadata"]["generation"]:
            return obj
        return None

    return probe
