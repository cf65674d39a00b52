"""``sync_hint`` and ``update`` against a hive's own store, and the ``node_name@hive`` precedence of the
node actions — without processes: a backend that reports a store, a router link that records relays."""

from __future__ import annotations

from typing import Any

import pytest

from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context
from fluxbee.admin.actions.distribution import sync_hint, update
from fluxbee.admin.actions.registry import dispatch
from fluxbee.admin.errors import AdminError, envelope

HTTP = Call("admin_api", "127.0.0.1")
READY = {"runtime_present": True, "start_sh_executable": True, "base_runtime_ready": True}


def store(**overrides: Any) -> dict[str, Any]:
    runtimes = {"wf.a": {"available": ["1.0.0", "2.0.0"], "current": "2.0.0", "type": "full_runtime",
                         "readiness": {"1.0.0": READY, "2.0.0": READY}},
                "wf.b": {"available": ["0.1.0"], "current": "0.1.0", "type": "full_runtime",
                         "readiness": {"0.1.0": READY}}}
    return {"status": "ok", "manifest_version": 100, "manifest_hash": "ab" * 32, "runtimes": runtimes, **overrides}


class Backend:
    hive_id = "A"
    kind = "local"

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    async def hive_info(self) -> dict[str, Any]:
        return {"hive_id": "A", "role": "motherbee", "mother_hive": None}

    async def remote_hives(self) -> dict[str, dict[str, Any]]:
        return {"B": {"hive_id": "B", "address": "127.0.0.1:2"}}

    async def runtimes(self) -> dict[str, Any]:
        return self.info


class Link:
    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.asked: list[tuple[str, Any]] = []

    async def router_status(self) -> dict[str, Any]:
        return {"nodes": [], "wan": {"hive_id": "A", "routes": [{"hive": "B", "next_hop": "B", "path": ["B"]}],
                                     "links": [{"hive_id": "B", "state": "up"}]}}

    async def request(self, dst: str, payload: Any, *, msg_type: str, msg: str, meta: dict[str, Any], ttl: int,
                      timeout: float) -> tuple[str | None, Any]:
        self.asked.append((dst, payload))
        return "ADMIN_COMMAND_RESPONSE", self.replies.pop(0)


def ctx(info: dict[str, Any] | None = None, link: Link | None = None) -> Context:
    return Context(backend=Backend(info or store()), link=link or Link(), history=None)  # type: ignore[arg-type]


async def up(info: dict[str, Any], **params: Any) -> dict[str, Any]:
    return await update(ctx(info), "A", s.UpdateParams(**params), HTTP)


async def test_sync_hint_has_nothing_to_wait_for_but_checks_the_folder_against_the_channel() -> None:
    out = await sync_hint(ctx(), "A", s.SyncHintParams(channel="dist"), HTTP)
    assert (out["status"], out["folder_id"], out["state"], out["replication"]) == ("ok", "fluxbee-dist", "idle",
                                                                                  "none")
    assert (await sync_hint(ctx(), "A", s.SyncHintParams(), HTTP))["folder_id"] == "fluxbee-blob"
    with pytest.raises(AdminError) as err:
        await sync_hint(ctx(), "A", s.SyncHintParams(channel="dist", folder_id="fluxbee-blob"), HTTP)
    assert err.value.code == "INVALID_REQUEST"


async def test_update_is_ok_only_for_the_same_manifest_with_every_current_runtime_launchable() -> None:
    out = await up(store(), manifest_version=100, manifest_hash="ab" * 32)
    assert (out["status"], out["readiness_scope"], out["unchanged"]) == ("ok", "global_current",
                                                                        ["wf.a@2.0.0", "wf.b@0.1.0"])
    assert out["global_runtime_health"]["status"] == "ok" and out["targeted_runtime_health"] is None
    # version 0 skips the version check; the hash still has to match
    assert (await up(store(), manifest_hash="ab" * 32))["status"] == "ok"


@pytest.mark.parametrize("version, digest", [(101, "ab" * 32), (100, "cd" * 32), (0, "cd" * 32)])
async def test_an_older_or_different_local_manifest_is_sync_pending(version: int, digest: str) -> None:
    out = await up(store(), manifest_version=version, manifest_hash=digest)
    assert out["status"] == "sync_pending" and "install the packages" in out["message"]
    assert envelope("update", out)["status"] == "sync_pending"  # the envelope (and HTTP 202) follows


async def test_a_newer_local_manifest_is_a_version_mismatch() -> None:
    with pytest.raises(AdminError) as err:
        await up(store(), manifest_version=99, manifest_hash="ab" * 32)
    assert err.value.code == "VERSION_MISMATCH"


async def test_a_runtime_in_scope_that_cannot_launch_keeps_the_update_pending_and_says_why() -> None:
    info = store()
    info["runtimes"]["wf.b"]["readiness"]["0.1.0"] = {**READY, "start_sh_executable": False}
    out = await up(info, manifest_version=100, manifest_hash="ab" * 32)
    assert out["status"] == "sync_pending" and out["errors"] == ["wf.b 0.1.0: bin/start.sh missing or not executable"]
    # targeting another runtime leaves wf.b out of scope (but still in the global health)
    aimed = await up(info, manifest_version=100, manifest_hash="ab" * 32, runtime="wf.a", runtime_version="1.0.0")
    assert (aimed["status"], aimed["unchanged"], aimed["readiness_scope"]) == ("ok", ["wf.a@1.0.0"], "targeted")
    assert aimed["targeted_runtime_health"]["status"] == "ok"
    assert aimed["global_runtime_health"]["error_count"] == 1
    missing = await up(info, manifest_hash="ab" * 32, runtime="wf.zz")
    assert missing["status"] == "sync_pending" and missing["errors"] == ["wf.zz: not in this hive's manifest"]


@pytest.mark.parametrize("params, code", [
    ({"category": "core", "manifest_hash": "x"}, "NOT_IMPLEMENTED"),
    ({"manifest_hash": "x", "runtime_version": "1.0.0"}, "INVALID_REQUEST"),
])
async def test_what_update_does_not_do_is_refused_by_name(params: dict[str, Any], code: str) -> None:
    with pytest.raises(AdminError) as err:
        await up(store(), **params)
    assert err.value.code == code


async def test_update_params_refuse_the_legacy_fields_and_a_missing_hash() -> None:
    for params in ({"manifest_hash": "x", "version": 3}, {"manifest_hash": "x", "hash": "y"}, {"category": "runtime"}):
        with pytest.raises(AdminError) as err:
            await dispatch(ctx(), "update", "A", params, HTTP)
        assert err.value.code == "INVALID_REQUEST"


async def test_node_name_at_hive_chooses_the_hive_of_a_node_action() -> None:
    answer = envelope("get_node_status", {"status": "ok", "target": "B", "hive": "B", "node_name": "WF.x@B"})
    link = Link(answer)
    out = await dispatch(ctx(link=link), "get_node_status", "A", {"node_name": "WF.x@B"}, HTTP)
    assert out["hive"] == "B"
    ((dst, body),) = link.asked
    assert dst == "SY.admin@B" and body["target"] == "B" and body["params"] == {"node_name": "WF.x@B"}


async def test_a_command_from_another_hive_is_not_retargeted_by_a_node_name() -> None:
    link = Link()
    with pytest.raises(AdminError) as err:
        await dispatch(ctx(link=link), "get_node_status", "A", {"node_name": "WF.x@C"}, Call("admin_command",
                                                                                                 "SY.admin@B"))
    assert err.value.code == "INVALID_REQUEST" and link.asked == []
    with pytest.raises(AdminError) as err:
        await dispatch(ctx(), "get_node_status", "A", {"node_name": "WF.x@bad/hive"}, HTTP)
    assert err.value.code == "INVALID_HIVE_ID"
