"""Pure builders and state machines of the operator, with plain dicts and models."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fluxbee.models import FluxNode, Hive, Runtime
from fluxbee.models.effective import config_digest, effective_config
from fluxbee.operator.children import is_subset
from fluxbee.operator.conditions import Outcome, status_changed, status_patch
from fluxbee.operator.fluxnode.build import build_pod, pod_index, resolve_package
from fluxbee.operator.hive.build import build_daemon_set, build_services, router_config
from fluxbee.operator.hive.handlers import hive_outcome
from fluxbee.operator.runtime.build import runtime_outcome
from fluxbee.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(image="img:1")


def hive(**spec: Any) -> Hive:
    return Hive.model_validate({"metadata": {"name": "h"}, "spec": spec})


def runtime(name: str = "ai.x", **spec: Any) -> Runtime:
    return Runtime.model_validate({"metadata": {"name": name},
                                   "spec": {"version": "1.0.0", **spec}})


def node(**spec: Any) -> FluxNode:
    return FluxNode.model_validate({"metadata": {"name": "n"}, "spec": {
        "hive": "h", "nodeName": "AI.x.y", "runtime": "ai.x", **spec}})


def test_effective_config_is_template_then_shallow_overrides_then_forced_system() -> None:
    rt = runtime(command=["x"], configTemplate={"a": {"deep": 1}, "b": 2, "_system": {"x": 1}})
    nd = node(config={"a": {"other": 3}}, tenantId="tnt:550e8400-e29b-41d4-a716-446655440000")
    config = effective_config(rt, nd, "hv", 1000, created_at_ms=500)
    assert config["a"] == {"other": 3} and config["b"] == 2  # shallow: `a` replaced whole
    assert config["tenant_id"] == "tnt:550e8400-e29b-41d4-a716-446655440000"
    system = config["_system"]
    assert system["node_name"] == "AI.x.y@hv" and system["runtime_version"] == "1.0.0"
    assert (system["created_at_ms"], system["updated_at_ms"]) == (500, 1000)
    assert "runtime_base" not in system and "x" not in system
    later = effective_config(rt, nd, "hv", 9999, created_at_ms=500)
    assert config_digest(later) == config_digest(config)  # timestamps do not count


def test_derived_packages_run_their_base_and_record_it() -> None:
    base = runtime("ai.base", command=["run"], image="base:2")
    derived = runtime("ai.derived", type="config_only", runtimeBase="ai.base")
    package = resolve_package(derived, base, SETTINGS)
    assert (package.image, package.command, package.runtime) == ("base:2", ["run"], "ai.derived")
    system = effective_config(derived, node(runtime="ai.derived"), "hv", 1, base=base)["_system"]
    assert system["runtime_base"] == "ai.base"
    assert system["package_path"].endswith("/ai.derived/1.0.0")
    assert runtime_outcome(derived, None, SETTINGS).reason == "BaseRuntimeNotFound"
    assert runtime_outcome(derived, base, SETTINGS).phase == "Ready"


def test_hive_pod_template_does_not_depend_on_routes() -> None:
    plain = build_daemon_set(hive(), "ns", SETTINGS)
    routed = build_daemon_set(hive(routes=[{"prefix": "AI.", "action": "DROP"}]), "ns", SETTINGS)
    assert plain == routed  # routes reach the router by ConfigMap reload, not a restart
    assert router_config(hive(hiveId="prod"), 3)["hive_id"] == "prod"
    no_admin = build_daemon_set(hive(admin={"enabled": False}), "ns", SETTINGS)
    assert [c["name"] for c in no_admin["spec"]["template"]["spec"]["containers"]] == ["router", "identity-replica"]
    assert build_services(hive(admin={"enabled": False}), "ns") == []


def test_the_router_container_gets_the_hives_scheduling_class() -> None:
    def command(h: Hive) -> list[str]:
        containers = build_daemon_set(h, "ns", SETTINGS)["spec"]["template"]["spec"]["containers"]
        return list(next(c for c in containers if c["name"] == "router")["command"])

    default = command(hive())
    assert default[default.index("--scheduling") + 1] == "batch"
    inherit = command(hive(routerScheduling="inherit"))
    assert inherit[inherit.index("--scheduling") + 1] == "inherit"
    with pytest.raises(ValidationError, match="routerScheduling"):
        hive(routerScheduling="fifo")


def test_the_router_container_busy_polls_only_when_the_hive_asks() -> None:
    def command(h: Hive) -> list[str]:
        containers = build_daemon_set(h, "ns", SETTINGS)["spec"]["template"]["spec"]["containers"]
        return list(next(c for c in containers if c["name"] == "router")["command"])

    assert "--busy-poll-us" not in command(hive())
    polling = command(hive(routerBusyPollUs=50))
    assert polling[polling.index("--busy-poll-us") + 1] == "50"
    with pytest.raises(ValidationError, match="routerBusyPollUs"):
        hive(routerBusyPollUs=-1)


def test_pod_spec_digest_changes_with_config_and_image_only() -> None:
    package = resolve_package(runtime(command=["x"]), None, SETTINGS)
    a = build_pod(node(), hive(), package, "ns", 0, "d1", SETTINGS)
    b = build_pod(node(), hive(), package, "ns", 0, "d1", SETTINGS)
    c = build_pod(node(), hive(), package, "ns", 0, "d2", SETTINGS)
    key = "fluxbee.io/spec-digest"
    assert a["metadata"]["annotations"][key] == b["metadata"]["annotations"][key]
    assert a["metadata"]["annotations"][key] != c["metadata"]["annotations"][key]
    assert pod_index(a) == 0 and pod_index({"metadata": {"name": "x-12"}}) == 12


def test_status_patch_keeps_transition_time_until_the_status_flips() -> None:
    first = status_patch(Outcome.reconciling("WaitingForPods", "0/1"), 1, now="T1")
    again = status_patch(Outcome.reconciling("WaitingForPods", "0/1"), 1,
                         first["conditions"], now="T2")
    assert [c["lastTransitionTime"] for c in again["conditions"]] == ["T1"] * 3
    assert not status_changed(first, again)
    ready = status_patch(Outcome.ready("1/1"), 2, again["conditions"], now="T3")
    by_type = {c["type"]: c for c in ready["conditions"]}
    assert by_type["Ready"]["lastTransitionTime"] == "T3"
    assert by_type["Degraded"]["lastTransitionTime"] == "T1"
    assert ready["observedGeneration"] == 2 and status_changed(again, ready)


def test_hive_outcome_follows_the_daemonset() -> None:
    assert hive_outcome(hive(), None).reason == "WaitingForHosts"
    ds = {"status": {"desiredNumberScheduled": 2, "numberReady": 1}}
    assert hive_outcome(hive(), ds).reason == "WaitingForPods"
    ds["status"]["numberReady"] = 2
    assert hive_outcome(hive(), ds).phase == "Ready"


def test_subset_ignores_server_defaults_but_not_changed_values() -> None:
    assert is_subset({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3})
    assert not is_subset({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert not is_subset({"a": {"b": 1}}, {"a": {"b": 2}})


def test_subset_takes_an_absent_field_for_an_empty_one() -> None:
    # A real API server drops `annotations: {}`: comparing must not see drift there (it did,
    # and every Hive reconcile patched its ConfigMaps and Services for nothing).
    desired = {"metadata": {"labels": {"x": "1"}, "annotations": {}, "ownerReferences": []}}
    assert is_subset(desired, {"metadata": {"labels": {"x": "1"}}})
    assert not is_subset({"metadata": {"annotations": {"a": "1"}}}, {"metadata": {}})
    assert not is_subset({"data": {"k": ""}}, {})
