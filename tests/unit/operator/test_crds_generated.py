"""The CRDs in crds/ (and the chart's copy) are generated from the pydantic models."""

from __future__ import annotations

from typing import Any

import pytest
from crd_walk import CRD_DIR, ROOT, load_crds, schema_of

from fluxbee.models.crd import KINDS, all_crds


@pytest.mark.parametrize("folder", [CRD_DIR, ROOT / "charts" / "fluxbee" / "crds"])
def test_committed_crds_match_the_models(folder: Any) -> None:
    expected = all_crds()
    committed = {p.name: p.read_text() for p in folder.glob("fluxbee.io_*.yaml")}
    assert sorted(committed) == sorted(expected), "run hack/gen-crds.py"
    for name, text in expected.items():
        assert committed[name] == text, f"{folder.name}/{name} is stale: run hack/gen-crds.py"


def _walk(node: Any, path: str) -> list[str]:
    """Structural-schema violations: every node typed, no $ref/anyOf left, no null defaults."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return problems
    for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "const"):
        if banned in node:
            problems.append(f"{path}: {banned}")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    if "default" in node and node["default"] is None:
        problems.append(f"{path}: null default")
    for name, sub in node.get("properties", {}).items():
        problems += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_every_kind_has_a_structural_schema_with_descriptions() -> None:
    crds = load_crds()
    assert sorted(crds) == sorted(k.kind for k in KINDS)
    for kind, crd in crds.items():
        schema = schema_of(crd)
        assert _walk(schema, kind) == []
        spec = schema["properties"]["spec"]
        assert spec["description"], kind
        undocumented = [n for n, s in spec["properties"].items() if not s.get("description")]
        assert undocumented == [], f"{kind}.spec fields without description: {undocumented}"


def test_every_kind_has_status_subresource_short_names_and_phase_column() -> None:
    core_kinds = {"Node", "Pod", "Service", "Module", "Policy"} - {"Module", "Policy"}
    for kind, crd in load_crds().items():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["scope"] == "Namespaced"
        assert crd["spec"]["names"]["shortNames"]
        assert kind not in core_kinds
        columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
        assert columns["Phase"] == ".status.phase"
        status = schema_of(crd)["properties"]["status"]["properties"]
        assert {"observedGeneration", "phase", "conditions"} <= set(status)
