"""Examples validate against the models, the CRD schemas and the CEL rules; mistakes do not."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from crd_walk import EXAMPLES, cel_failures, example_documents, load_crds, schema_errors

from fluxbee.models import ResourceError, load_documents, parse_document

CRDS = load_crds()
EXAMPLE_DOCS = example_documents()


def test_examples_exist_for_every_kind() -> None:
    assert {doc["kind"] for _, doc in EXAMPLE_DOCS} == set(CRDS)


@pytest.mark.parametrize("where,doc", EXAMPLE_DOCS, ids=[w for w, _ in EXAMPLE_DOCS])
def test_example_is_accepted_by_schema_cel_and_models(where: str, doc: dict[str, Any]) -> None:
    crd = CRDS[doc["kind"]]
    assert schema_errors(crd, doc) == []
    assert cel_failures(crd, doc) == []
    assert cel_failures(crd, doc, old=copy.deepcopy(doc)) == []
    parse_document(doc, where)


def test_every_example_file_loads_as_resources() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert load_documents(path), path


def _node(**spec: Any) -> dict[str, Any]:
    base = {"hive": "demo", "nodeName": "AI.echo.a", "runtime": "fluxbee.echo"}
    return {
        "apiVersion": "fluxbee.io/v1alpha1",
        "kind": "FluxNode",
        "metadata": {"name": "n"},
        "spec": {**base, **spec},
    }


@pytest.mark.parametrize(
    "name", ["echo.a", "XX.echo", "AI", "AI..x", "AI.a b", "AI." + ".".join("f" * 10)]
)
def test_bad_node_names_are_rejected_by_cel_and_models(name: str) -> None:
    doc = _node(nodeName=name)
    assert any("nodeName must be" in m for m in cel_failures(CRDS["FluxNode"], doc))
    with pytest.raises(ResourceError, match="node name"):
        parse_document(doc, "test")


def test_node_name_and_hive_cannot_change_after_creation() -> None:
    old = _node()
    messages = cel_failures(CRDS["FluxNode"], _node(nodeName="AI.echo.z", hive="other"), old=old)
    assert any("nodeName is immutable" in m for m in messages)
    assert any("spec.hive is immutable" in m for m in messages)


def test_config_may_not_set_system_block() -> None:
    doc = _node(config={"_system": {"hive_id": "x"}})
    assert any("_system" in m for m in cel_failures(CRDS["FluxNode"], doc))
    with pytest.raises(ResourceError, match="_system"):
        parse_document(doc, "test")


def _runtime(name: str = "ai.x", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fluxbee.io/v1alpha1",
        "kind": "Runtime",
        "metadata": {"name": name},
        "spec": {"version": "1.0.0", **spec},
    }


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"type": "config_only"}, "needs a runtimeBase"),
        ({"type": "full_runtime", "runtimeBase": "ai.y", "command": ["x"]}, "no runtimeBase"),
        ({"type": "full_runtime"}, "needs a command or an image"),
        ({"type": "workflow", "runtimeBase": "ai.y"}, "needs a flow"),
    ],
)
def test_inconsistent_packages_are_rejected_by_cel_and_models(
    spec: dict[str, Any], message: str
) -> None:
    doc = _runtime(**spec)
    assert cel_failures(CRDS["Runtime"], doc), "CEL accepted an inconsistent package"
    with pytest.raises(ResourceError, match=message):
        parse_document(doc, "test")


def test_runtime_names_follow_the_package_grammar() -> None:
    failures = cel_failures(
        CRDS["Runtime"], _runtime("AI-Chat", type="full_runtime", command=["x"])
    )
    assert any("runtime name" in m for m in failures)


def test_forward_route_needs_a_next_hop() -> None:
    doc = {
        "apiVersion": "fluxbee.io/v1alpha1",
        "kind": "Hive",
        "metadata": {"name": "demo"},
        "spec": {"routes": [{"prefix": "AI.", "action": "FORWARD"}]},
    }
    assert "a FORWARD route needs nextHopHive" in cel_failures(CRDS["Hive"], doc)


def test_schema_rejects_bad_types_and_out_of_range_values() -> None:
    # Unknown fields are pruned by the API server (and refused by `kubectl --validate=strict`),
    # so only types and ranges are checked here.
    assert schema_errors(CRDS["FluxNode"], _node(replicas="three"))
    assert schema_errors(CRDS["FluxNode"], _node(replicas=-1))
    assert schema_errors(CRDS["FluxNode"], _node(replicas=1001))
