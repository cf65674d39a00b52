"""Helpers for the CRD and chart tests against the real control plane (see conftest.py there)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import ControlPlane, wait_for

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "crds"
CHART = REPO / "charts" / "fluxbee"
API = "fluxbee.io/v1alpha1"
PLURALS = ("hives", "fluxnodes", "runtimes", "modules", "degrees", "policies")


def apply_crds(cp: ControlPlane) -> list[str]:
    """``kubectl apply -f crds/`` and wait until every fluxbee.io CRD is Established; their names."""
    out = cp.kubectl("apply", "-f", str(CRDS)).stdout
    names = [f"{p}.fluxbee.io" for p in PLURALS]
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    missing = [n for n in names if f"customresourcedefinition.apiextensions.k8s.io/{n}" not in out]
    if missing:
        pytest.fail(f"kubectl apply did not mention {missing}:\n{out}")
    return names


def helm(cp: ControlPlane, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real helm CLI (from the control plane's bin dir) as the cluster admin."""
    proc = subprocess.run([str(cp.bin / "helm"), *args], capture_output=True, text=True, env=cp.env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr.strip()}")
    return proc


def create(cp: ControlPlane, namespace: str, doc: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl create -f -`` of one object in ``namespace``; not checked (refusals are the point)."""
    return cp.kubectl("-n", namespace, "create", "-f", "-", *args, input=json.dumps(doc), check=False)


def readme_resources() -> list[dict[str, Any]]:
    """The fluxbee.io objects in the README's ```yaml blocks, as a user would copy them."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    docs: list[dict[str, Any]] = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and doc.get("apiVersion") == API:
                docs.append(doc)
    return docs


def table(text: str) -> list[dict[str, str]]:
    """Rows of ``kubectl get`` output, split on the header's column starts (values may be empty)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def explain(cp: ControlPlane, field: str) -> str:
    """``kubectl explain FIELD``; the API server publishes a new CRD's OpenAPI a moment after it is Established."""
    def probe() -> str | None:
        proc = cp.kubectl("explain", field, check=False)
        return proc.stdout if proc.returncode == 0 else None
    return wait_for(f"kubectl explain {field}", probe, timeout=30)
