"""A real Kubernetes control plane for the tests of this folder, built from source.

``hack/build-tools.sh`` builds (or finds in its cache) etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl, kwok and helm; ``hack/cluster-up.sh DIR`` starts them on loopback with
three kwok nodes that take Pods to Running. One control plane serves the whole session (it takes
~10 s to start); each test works in a namespace of its own (:func:`namespace`), so tests do not see
each other's objects. Without Go, the tests here are skipped with the reason printed.

``pair`` is a mother hive and its worker on that control plane (see hive_pair.py).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ControlPlane, wait_for
from hive_harness import RouterProc, free_port
from hive_pair import Hive, Pair, certificate, fluxbee, install, start_hive_admin
from operator_support import FluxbeeProcess, Release, get, install_chart, start_operator

REPO = Path(__file__).resolve().parents[3]
HACK = REPO / "hack"


def _tools() -> Path:
    proc = subprocess.run(["bash", str(HACK / "build-tools.sh")], capture_output=True, text=True, timeout=3600)
    if proc.returncode == 3:  # no Go on this machine: say so instead of failing or passing silently
        pytest.skip(f"the real control plane cannot be built here: {proc.stderr.strip()}")
    if proc.returncode != 0:
        pytest.fail(f"hack/build-tools.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir = _tools()
    state = tmp_path_factory.mktemp("control-plane")
    up = subprocess.run(["bash", str(HACK / "cluster-up.sh"), str(state)], capture_output=True, text=True,
                        timeout=300)
    if up.returncode != 0:
        subprocess.run(["bash", str(HACK / "cluster-down.sh"), str(state)], capture_output=True, timeout=120)
        pytest.fail(f"hack/cluster-up.sh failed ({up.returncode}):\n{up.stderr[-4000:]}")
    try:
        yield ControlPlane(dir=state, bin=bin_dir, kubeconfig=state / "kubeconfig")
    finally:
        down = subprocess.run(["bash", str(HACK / "cluster-down.sh"), str(state)], capture_output=True, text=True,
                              timeout=180)
        if down.returncode != 0:
            pytest.fail(f"hack/cluster-down.sh failed ({down.returncode}): {down.stderr}")


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of this test's own, deleted afterwards (without waiting for its finalizers)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def release(control_plane: ControlPlane, namespace: str) -> Release:
    """The chart installed in the test's namespace (CRDs, RBAC, ServiceAccounts)."""
    return install_chart(control_plane, namespace)


@pytest.fixture
def operator(control_plane: ControlPlane, release: Release, tmp_path: Path) -> Iterator[FluxbeeProcess]:
    """``fluxbee operator`` as a subprocess with the chart's ServiceAccount token (a file may define its own)."""
    proc = start_operator(control_plane, release, tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def pair(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A mother and a worker hive (hive_pair.py), their routers linked; one pair per test module."""
    cp = control_plane
    work = tmp_path_factory.mktemp("global-config")
    root = Path(tempfile.mkdtemp(prefix="fbg", dir="/tmp"))  # short: socket paths have a length limit
    root.chmod(0o755)
    fluxbee("wan", "ca", str(root / "ca"))
    tag = uuid.uuid4().hex[:8]
    ns_m, ns_w = f"t-gm-{tag}", f"t-gw-{tag}"
    started: list[Any] = []
    hives: list[Hive] = []
    try:
        port = free_port()
        for name, ns, values, link in (
                ("mother", ns_m, (), ("--wan-listen", f"127.0.0.1:{port}")),
                ("worker", ns_w, ("--set", "hive.role=worker", "--set", "hive.identity.primaryHive=mother"),
                 ("--uplink", f"127.0.0.1:{port}"))):
            release = install(cp, ns, name, *values)
            operator = start_operator(cp, release, work / name)
            started.append(operator)
            (root / name).mkdir()
            router = RouterProc(root / name, hive_id=name, extra=(*link, *certificate(root, name)))
            started.append(router)
            hives.append(Hive(name, release, operator, router, work / name))
        for hive in hives:
            hive.operator.wait_for(f"{hive.name}'s admin ConfigMap (the operator makes it)",
                                   lambda h=hive: get(cp, h.ns, "configmap", f"{h.name}-admin-history"), timeout=90)
            hive.admin = start_hive_admin(cp, hive, "admin")
        mother, worker = hives

        def linked() -> bool:
            return any(x["state"] == "up" for x in mother.router.status()["wan"]["links"])

        wait_for("the worker's router to link to the mother's", linked, timeout=30)
        yield Pair(cp, mother, worker)
    finally:
        try:
            for hive in hives:  # the admin API running now (a test may have replaced it)
                if hive.admin is not None:
                    hive.admin.process.stop()
        finally:
            for proc in reversed(started):
                proc.stop()
        for ns in (ns_m, ns_w):
            cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        shutil.rmtree(root, ignore_errors=True)
