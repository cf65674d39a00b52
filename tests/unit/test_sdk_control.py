"""The node-control contract as pure functions: CONFIG_GET/CONFIG_SET version rules, NODE_STATUS_GET answers."""

from __future__ import annotations

from typing import Any

import pytest

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import control
from fluxbee.dataplane.sdk.control import NodeStatus, answer_config, answer_status, initial_config_version

SYSTEM = {"_system": {"config_version": 3, "hive": "prod"}}


def config_set(body: Any, *, version: int = 3, config: dict[str, Any] | None = None,
               on_config_set: Any = None) -> control.ConfigAnswer:
    return answer_config(wire.CONFIG_SET, body, node_name="WF.a@prod", config_version=version,
                         node_config=dict(config if config is not None else {**SYSTEM, "k": 1}),
                         on_config_set=on_config_set)


def test_the_initial_version_is_the_system_one_when_it_is_a_positive_integer() -> None:
    assert initial_config_version(SYSTEM) == 3
    assert initial_config_version({}) == 1
    assert initial_config_version({"_system": {"config_version": 0}}) == 1
    assert initial_config_version({"_system": {"config_version": "4"}}) == 1
    assert initial_config_version({"_system": "x"}) == 1


def test_config_get_serves_the_current_config_and_changes_nothing() -> None:
    config = {**SYSTEM, "k": 1}
    answer = answer_config(wire.CONFIG_GET, None, node_name="WF.a@prod", config_version=3, node_config=config)
    assert answer.payload == {"ok": True, "state": "current", "node_name": "WF.a@prod", "config_version": 3,
                              "effective_config": config, "error": None, "contract": control.CONFIG_CONTRACT}
    assert (answer.config_version, answer.node_config) == (3, config)


def test_a_config_set_with_a_greater_version_replaces_every_key_but_system() -> None:
    answer = config_set({"config": {"k": 2, "new": True}, "config_version": 5})
    assert answer.payload["ok"] is True and answer.payload["state"] == "applied"
    assert answer.config_version == 5
    assert answer.node_config == {"k": 2, "new": True, "_system": {"config_version": 5, "hive": "prod"}}
    assert answer.payload["effective_config"] == answer.node_config


def test_a_config_set_without_a_version_bumps_it_by_one() -> None:
    answer = config_set({"config": {"k": 2}}, config={"k": 1})
    assert (answer.config_version, answer.node_config) == (4, {"k": 2})


@pytest.mark.parametrize("version", [3, 2, "9", 4.5])
def test_a_stale_or_non_integer_version_is_refused_and_nothing_changes(version: Any) -> None:
    answer = config_set({"config": {"k": 2}, "config_version": version})
    assert answer.payload["ok"] is False and answer.payload["state"] == "rejected"
    assert answer.payload["error"] == "STALE_CONFIG_VERSION: config_version must be greater than 3"
    assert (answer.config_version, answer.node_config) == (3, {**SYSTEM, "k": 1})


@pytest.mark.parametrize(("body", "error"), [
    ({"config": [1]}, "INVALID_CONFIG_SET: config must be a JSON object"),
    ("not a dict", "INVALID_CONFIG_SET: config must be a JSON object"),
    ({"config": {}, "apply_mode": "merge"}, "INVALID_CONFIG_SET: apply_mode 'merge' is not supported (only 'replace')"),
    ({"config": {"_system": {}}}, "INVALID_CONFIG_SET: `_system` is managed by the hive and cannot be set"),
])
def test_a_malformed_config_set_is_refused_with_its_reason(body: Any, error: str) -> None:
    answer = config_set(body)
    assert (answer.payload["ok"], answer.payload["state"], answer.payload["error"]) == (False, "rejected", error)
    assert answer.config_version == 3


def test_the_node_may_refuse_a_config_and_is_only_asked_about_valid_ones() -> None:
    seen: list[dict[str, Any]] = []

    def refuse(proposed: dict[str, Any]) -> str:
        seen.append(proposed)
        return "k must be odd"

    assert config_set({"config": {"k": 2}, "config_version": 2}, on_config_set=refuse).payload["error"].startswith(
        "STALE")
    answer = config_set({"config": {"k": 2}, "config_version": 4}, on_config_set=refuse)
    assert answer.payload["error"] == "REJECTED: k must be odd"
    assert seen == [{"k": 2}]
    assert answer.config_version == 3
    assert config_set({"config": {"k": 3}}, on_config_set=lambda _: None).payload["state"] == "applied"


def test_the_status_answer_carries_last_error_and_extensions_only_when_set() -> None:
    assert answer_status("WF.a@prod", NodeStatus()) == {
        "status": "ok", "node_name": "WF.a@prod", "lifecycle_state": "RUNNING", "health_state": "HEALTHY",
        "health_source": "NODE_REPORTED", "status_version": 1}
    status = NodeStatus(health_state="DEGRADED", status_version=7, last_error="disk full", extensions={"q": 3})
    payload = answer_status("WF.a@prod", status)
    assert (payload["health_state"], payload["status_version"]) == ("DEGRADED", 7)
    assert (payload["last_error"], payload["extensions"]) == ("disk full", {"q": 3})
