"""The Policy's pure builders: entry points, digests, version and delivery ConfigMaps, pruning."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from fluxbee.models import Hive, PolicySpec
from fluxbee.operator.hive.build import POLICY_MOUNT, build_daemon_set
from fluxbee.operator.hive.gateway import build_gateway_deployment
from fluxbee.operator.hive.identity import build_identity_deployment
from fluxbee.operator.policy.build import (
    MAX_ARTEFACT_BYTES,
    StoredVersionError,
    build_delivery_config_map,
    build_version_config_map,
    delivered,
    entrypoints,
    next_version,
    source_digest,
    stored_artefact,
    stored_version,
    to_prune,
)
from fluxbee.operator.settings import OperatorSettings


def version_cm(artefact: bytes = b"\x81artefact", version: int = 3) -> dict[str, Any]:
    return build_version_config_map("route", "ns", version, artefact, engine="wasm", compiler="opa 1.22.4",
                                    source_sha256="s" * 64, fallback_reason=None)


def test_entrypoints_follow_the_spec_rule_and_allow_lives_in_its_package() -> None:
    assert entrypoints(PolicySpec(rego="x")) == ("router/target", "router/allow")
    assert entrypoints(PolicySpec(rego="x", entrypoint="data.acme.routing.pick")) == (
        "acme/routing/pick", "acme/routing/allow")


def test_the_source_digest_changes_with_rego_entrypoint_and_data_only() -> None:
    base = PolicySpec(rego="package router")
    assert source_digest(base) == source_digest(PolicySpec(rego="package router", keepVersions=9, pinVersion=2))
    assert len({source_digest(base), source_digest(PolicySpec(rego="package router\n")),
                source_digest(PolicySpec(rego="package router", data={"a": 1})),
                source_digest(PolicySpec(rego="package router", entrypoint="data.router.other"))}) == 4


def test_a_version_config_map_is_immutable_and_reads_back_with_its_checked_artefact() -> None:
    cm = version_cm()
    assert cm["immutable"] is True and cm["metadata"]["name"] == "route-policy-v3"
    assert cm["metadata"]["labels"]["fluxbee.io/policy"] == "route"
    info = stored_version(cm)
    assert (info.version, info.engine, info.compiler) == (3, "wasm", "opa 1.22.4")
    assert info.sha256 == hashlib.sha256(b"\x81artefact").hexdigest()
    assert stored_artefact(cm) == b"\x81artefact"


@pytest.mark.parametrize("edit, match", [
    (lambda cm: cm["binaryData"].update(artefact=base64.b64encode(b"\x81artefacT").decode()), "hashes to"),
    (lambda cm: cm["binaryData"].update(artefact="%%%"), "not base64"),
    (lambda cm: cm["binaryData"].clear(), "hashes to"),
    (lambda cm: cm["data"].update(version="x"), "not a stored policy version"),
    (lambda cm: cm["data"].pop("engine"), "not a stored policy version"),
    (lambda cm: cm["data"].update(version="4"), "says version 4"),
    (lambda cm: cm["data"].update(version="0"), "says version 0"),
])
def test_an_edited_version_config_map_is_refused(edit: Any, match: str) -> None:
    cm = version_cm()
    edit(cm)
    with pytest.raises(StoredVersionError, match=match):
        stored_artefact(cm)


def test_an_artefact_too_large_for_a_config_map_is_refused() -> None:
    with pytest.raises(ValueError, match="a ConfigMap holds at most"):
        version_cm(b"x" * (MAX_ARTEFACT_BYTES + 1))


def test_the_delivery_config_map_says_what_it_holds() -> None:
    cm = build_delivery_config_map("pol-policy", "route", "ns", 7, b"bytes")
    assert delivered(cm) == (7, hashlib.sha256(b"bytes").hexdigest())
    assert base64.b64decode(cm["binaryData"]["artefact"]) == b"bytes"
    assert delivered({"data": {"version": "x", "sha256": "y"}}) is None
    assert delivered({}) is None


def test_versions_never_reuse_a_number_and_pruning_keeps_delivered_and_pinned() -> None:
    assert next_version([], None) == 1
    assert next_version([2, 5], None) == 6
    assert next_version([2], 9) == 10  # 3..9 were pruned: never given out again
    assert to_prune([1, 2, 3, 4, 5], 2, delivered_version=5, pinned=None) == [3, 2, 1]
    assert to_prune([1, 2, 3, 4, 5], 2, delivered_version=2, pinned=2) == [3, 1]
    assert to_prune([1, 2], 5, delivered_version=2, pinned=None) == []


def test_every_router_of_a_hive_mounts_its_policy_config_map_and_reads_it() -> None:
    hive = Hive.model_validate({"metadata": {"name": "h", "namespace": "ns"},
                                "spec": {"wan": {"listen": "0.0.0.0:9000"}}})
    settings = OperatorSettings()
    templates = [build_daemon_set(hive, "ns", settings), build_gateway_deployment(hive, "ns", settings),
                 build_identity_deployment(hive, "ns", settings)]
    for manifest in templates:
        pod = manifest["spec"]["template"]["spec"]
        router = next(c for c in pod["containers"] if c["name"] == "router")
        assert router["command"][router["command"].index("--policy-dir") + 1] == POLICY_MOUNT
        assert {"name": "policy", "mountPath": POLICY_MOUNT, "readOnly": True} in router["volumeMounts"]
        assert {"name": "policy", "configMap": {"name": "h-policy", "optional": True}} in pod["volumes"]
