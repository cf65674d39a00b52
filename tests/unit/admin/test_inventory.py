"""The inventory's merging, without processes: this hive's rows from its backend and router, another
hive's from its own answer over the links, and what a hive that cannot be asked looks like."""

from __future__ import annotations

from typing import Any

import pytest

from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context
from fluxbee.admin.actions.inventory import REMOTE_TIMEOUT, inventory
from fluxbee.admin.backend import NodeObservation
from fluxbee.admin.errors import AdminError, envelope

HTTP = Call("admin_api", "127.0.0.1")
ROUTER = {"nodes": [{"name": "WF.echo@A", "uuid": "u-1", "vpn_id": 0, "connected_at_ms": 5},
                    {"name": "SY.admin@A", "uuid": "u-2", "vpn_id": 0, "connected_at_ms": 1}],
          "wan": {"hive_id": "A", "listen": "127.0.0.1:1", "routes": [{"hive": "B", "next_hop": "B", "path": ["B"]}],
                  "links": [{"hive_id": "B", "address": "127.0.0.1:2", "direction": "out", "state": "up"}]}}


class Backend:
    hive_id = "A"
    kind = "local"

    async def hive_info(self) -> dict[str, Any]:
        return {"hive_id": "A", "role": "motherbee", "mother_hive": None}

    async def remote_hives(self) -> dict[str, dict[str, Any]]:
        return {"B": {"hive_id": "B", "address": "127.0.0.1:2"}}

    async def observe(self, visible: set[str] | None, only: str | None = None) -> list[NodeObservation]:
        return [NodeObservation(node_name="WF.echo@A", hive="A", managed=False, lifecycle_state="RUNNING",
                                visible_in_router="WF.echo@A" in (visible or set()),
                                runtime={"name": "fluxbee.echo", "resolved_version": "0.1.0"}),
                NodeObservation(node_name="AI.off@A", hive="A", managed=True, lifecycle_state="STOPPED",
                                visible_in_router=False, runtime={"name": "fluxbee.echo"})]


class Link:
    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.asked: list[tuple[str, Any, float]] = []

    async def router_status(self) -> dict[str, Any]:
        return ROUTER

    async def request(self, dst: str, payload: Any, *, msg_type: str, msg: str, meta: dict[str, Any], ttl: int,
                      timeout: float) -> tuple[str | None, Any]:
        self.asked.append((dst, payload, timeout))
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return "ADMIN_COMMAND_RESPONSE", reply


def ctx(link: Link) -> Context:
    return Context(backend=Backend(), link=link, history=None)  # type: ignore[arg-type]


def b_answer(*names: str) -> dict[str, Any]:
    nodes = [{"name": n, "node_name": n, "hive": "B", "kind": n.split(".")[0], "status": "running"} for n in names]
    return envelope("inventory", {"status": "ok", "scope": "hive", "hives": [
        {"hive_id": "B", "is_local": True, "status": "alive", "inventory_source": "router",
         "node_count": len(nodes), "nodes": nodes}]})


async def test_the_global_inventory_holds_this_hives_rows_and_the_other_hives_own_answer() -> None:
    link = Link(b_answer("WF.b@B", "SY.admin@B"))
    out = await inventory(ctx(link), "A", s.InventoryParams(), HTTP)
    a, b = out["hives"]
    # a stopped instance is not a node that runs: it leaves `nodes` (as the original's inventory) for `stopped_nodes`
    assert [n["name"] for n in a["nodes"]] == ["SY.admin@A", "WF.echo@A"]
    assert [(n["name"], n["status"]) for n in a["stopped_nodes"]] == [("AI.off@A", "stopped")]
    assert next(n for n in a["nodes"] if n["name"] == "WF.echo@A")["uuid"] == "u-1"
    assert (b["hive_id"], b["is_local"], b["status"], b["link_status"], b["inventory_source"]) == (
        "B", False, "alive", "connected", "admin_command")
    assert [n["name"] for n in b["nodes"]] == ["WF.b@B", "SY.admin@B"]
    assert (out["total_hives"], out["total_nodes"], out["unreachable_hives"]) == (2, 4, 0)
    # every hive's rows again at the top level, each naming its hive (where the original's clients read them)
    assert [(n["hive"], n["name"]) for n in out["nodes"]] == [("A", "SY.admin@A"), ("A", "WF.echo@A"),
                                                               ("B", "WF.b@B"), ("B", "SY.admin@B")]
    ((dst, body, timeout),) = link.asked
    assert dst == "SY.admin@B" and timeout == REMOTE_TIMEOUT
    assert body == {"action": "inventory", "target": "B",
                    "params": {"scope": "hive", "filter_hive": "B", "filter_type": None}}


@pytest.mark.parametrize("reply, code, state", [
    (AdminError("UNREACHABLE", "no route", payload={"reason": "NO_ROUTE"}), "HIVE_NOT_CONNECTED", "stale"),
    (AdminError("TIMEOUT", "late"), "WAN_TIMEOUT", "stale"),
    ({"status": "error", "action": "inventory", "payload": None, "error_code": "FORBIDDEN",
      "error_detail": "not your mother"}, "FORBIDDEN", "error"),
    (envelope("inventory", {"status": "ok", "hives": [{"hive_id": "C", "nodes": []}]}), "SERVICE_FAILED", "error"),
])
async def test_a_hive_that_cannot_be_asked_is_a_stale_or_error_row_and_counts_for_nothing(
        reply: Any, code: str, state: str) -> None:
    out = await inventory(ctx(Link(reply)), "A", s.InventoryParams(), HTTP)
    b = out["hives"][1]
    assert (b["status"], b["error_code"], b["node_count"], b["nodes"]) == (state, code, None, [])
    assert (out["total_nodes"], out["unreachable_hives"]) == (2, 1)
    assert {n["hive"] for n in out["nodes"]} == {"A"}
    summary = await inventory(ctx(Link(reply)), "A", s.InventoryParams(scope="summary"), HTTP)
    assert summary["hives"][1]["by_kind"] is None and summary["by_kind"] == {"SY": 1, "WF": 1}


async def test_one_hive_is_asked_alone_and_its_failure_is_the_answer() -> None:
    link = Link(b_answer("WF.b@B"))
    out = await inventory(ctx(link), "A", s.InventoryParams(filter_hive="B", filter_type="wf"), HTTP)
    assert (out["scope"], out["hive"], out["node_count"], out["filter_type"]) == ("hive", "B", 1, "WF")
    assert link.asked[0][1]["params"]["filter_type"] == "WF"
    # out of reach: the answer is the hive, stale, with why and no rows (the original's scripts poll for it)
    late = await inventory(ctx(Link(AdminError("TIMEOUT", "late"))), "A", s.InventoryParams(filter_hive="B"), HTTP)
    assert (late["hive_status"], late["node_count"], late["nodes"]) == ("stale", None, [])
    assert late["hives"][0]["error_code"] == "WAN_TIMEOUT"
    refused = {"status": "error", "action": "inventory", "payload": None, "error_code": "FORBIDDEN",
               "error_detail": "not your mother"}
    with pytest.raises(AdminError) as err:  # a refusal is not staleness: it is the answer's error
        await inventory(ctx(Link(refused)), "A", s.InventoryParams(filter_hive="B"), HTTP)
    assert err.value.code == "FORBIDDEN"
    with pytest.raises(AdminError) as err:
        await inventory(ctx(Link()), "A", s.InventoryParams(filter_hive="Z"), HTTP)
    assert err.value.code == "NOT_FOUND"


async def test_the_kind_filter_is_upper_cased_and_checked() -> None:
    out = await inventory(ctx(Link()), "A", s.InventoryParams(filter_hive="A", filter_type="sy"), HTTP)
    assert [n["name"] for n in out["nodes"]] == ["SY.admin@A"]
    for bad, code in (({"filter_type": "robot"}, "INVALID_REQUEST"), ({"filter_hive": "no/such"}, "INVALID_HIVE_ID")):
        with pytest.raises(AdminError) as err:
            await inventory(ctx(Link()), "A", s.InventoryParams(**bad), HTTP)
        assert err.value.code == code


async def test_another_hive_gets_this_hives_rows_only_never_a_relay_further() -> None:
    from_b = Call("admin_command", "SY.admin@B")
    own = await inventory(ctx(Link()), "A", s.InventoryParams(scope="hive", filter_hive="A"), from_b)
    assert own["hive"] == "A"
    for params in (s.InventoryParams(), s.InventoryParams(scope="summary"), s.InventoryParams(filter_hive="B")):
        with pytest.raises(AdminError) as err:
            await inventory(ctx(Link()), "A", params, from_b)
        assert err.value.code == "FORBIDDEN"
