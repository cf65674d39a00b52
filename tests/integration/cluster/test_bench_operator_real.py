"""``hack/bench-operator-real.py`` runs against the session's control plane and reports complete, sane numbers.

A smoke test of the benchmark with 5 FluxNodes, not a timed test: it checks that every figure is
there and consistent (times ordered, memory and CPU positive, the requests the run must have
made counted), never that anything is fast.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ControlPlane, wait_for

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "hack" / "bench-operator-real.py"
NODES = 5


def _run(control_plane: ControlPlane) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", str(NODES), "--kubeconfig", str(control_plane.kubeconfig),
         "--timeout", "300", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"the benchmark failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_the_real_benchmark_reports_every_figure_for_five_fluxnodes(control_plane: ControlPlane,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(control_plane)
    assert result["emulator"] == []
    [run] = result["real"]
    assert run["nodes"] == NODES and run["timed_out"] is False
    assert (run["pods"], run["pods_running"], run["fluxnodes_ready"]) == (NODES, NODES, NODES)
    assert run["pods_replaced"] == 0

    # The moments are measured from the start of the apply and follow each other.
    assert 0 < run["applied"]
    assert 0 < run["first_pod"] <= run["all_pods_exist"] <= run["all_pods_running"]
    assert 0 < run["all_fluxnodes_exist"] <= run["all_reconciled"] <= run["all_ready"] <= run["converged_s"]
    assert run["converged_s"] <= run["settled_s"] and isinstance(run["settled_quiet"], bool)

    # The operator's memory and CPU are read from /proc: a Python process of some tens of MiB.
    assert 10 < run["rss_before_mib"] <= run["rss_peak_mib"]
    assert 10 < run["rss_settled_mib"] <= run["rss_peak_mib"]
    assert run["operator_cpu_s"] > 0
    assert run["control_plane_cpu_s"] == {}  # an existing cluster: its processes are not this script's

    # The API server counted at least the writes a run cannot do without.
    by = run["api_requests_by_resource"]
    for key in ("fluxnodes POST", "pods POST", "pods/binding POST", "configmaps POST", "secrets POST"):
        assert by.get(key, 0) >= NODES, (key, by)
    assert run["api_requests"] >= sum(by.values())
    assert run["operator_warnings"] >= 0 and run["operator_retries"] >= 0

    # It leaves the cluster as it found it: its namespace goes (the operator removed the finalizers).
    def namespaces_left() -> list[str]:
        items = control_plane.get_json("namespaces")["items"]
        return [i["metadata"]["name"] for i in items if i["metadata"]["name"].startswith("bench-")]

    wait_for("the benchmark's namespace to be gone", lambda: not namespaces_left() or None, timeout=120)

    # The Markdown report renders the run.
    spec = importlib.util.spec_from_file_location("bench_operator_real", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    text = module.report([run], [])
    assert f"| real 1 ({NODES}) |" in text and "TIMED OUT" not in text
