"""What rides on the links, the pure parts: relaying an envelope, who may command a hive from
another, the router's link view, and the global config's version order and collection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fluxbee.admin import global_config as g
from fluxbee.admin import remote, wan
from fluxbee.admin.actions.common import Call, Context
from fluxbee.admin.errors import SYNC_PENDING, AdminError, envelope, http_status


class ScriptedLink:
    """A router link whose requests answer from a script and are recorded."""

    def __init__(self, *replies: Any, status: dict[str, Any] | None = None) -> None:
        self.replies = list(replies)
        self.asked: list[tuple[str, str, Any, float]] = []
        self.status = status or {}

    async def request(self, dst: str, payload: Any, *, msg_type: str, msg: str, meta: dict[str, Any], ttl: int,
                      timeout: float) -> tuple[str | None, Any]:
        self.asked.append((dst, msg, payload, timeout))
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return f"{msg}_RESPONSE", reply

    async def router_status(self) -> dict[str, Any]:
        return self.status


# relay ------------------------------------------------------------------------------------------
async def test_a_relayed_action_is_an_admin_command_to_the_hives_admin_and_its_payload_comes_back() -> None:
    link = ScriptedLink(envelope("list_nodes", {"status": "ok", "hive": "B", "nodes": []}))
    payload = await remote.relay(link, "B", "list_nodes", {})  # type: ignore[arg-type]
    assert payload == {"status": "ok", "hive": "B", "nodes": []}
    dst, msg, body, timeout = link.asked[0]
    assert (dst, msg, body) == ("SY.admin@B", "ADMIN_COMMAND", {"action": "list_nodes", "target": "B", "params": {}})
    assert timeout == remote.RELAY_TIMEOUT


async def test_a_remote_error_is_raised_with_its_own_code_detail_and_payload() -> None:
    link = ScriptedLink({"status": "error", "action": "kill_node", "payload": {"node_name": "WF.x@B"},
                         "error_code": "NODE_NOT_FOUND", "error_detail": "no such node"})
    with pytest.raises(AdminError) as err:
        await remote.relay(link, "B", "kill_node", {"node_name": "WF.x"})  # type: ignore[arg-type]
    assert (err.value.code, err.value.detail, err.value.payload) == ("NODE_NOT_FOUND", "no such node",
                                                                     {"node_name": "WF.x@B"})
    assert err.value.http_status == 404


@pytest.mark.parametrize("reply", [None, [], {"status": "ok"}, {"payload": {}}, {"status": "ok", "payload": 3}])
def test_an_answer_that_is_not_an_envelope_is_a_service_failure(reply: Any) -> None:
    with pytest.raises(AdminError) as err:
        remote.unwrap("B", "list_nodes", reply)
    assert err.value.code == "SERVICE_FAILED"


def test_a_remote_error_without_a_code_is_a_service_failure() -> None:
    with pytest.raises(AdminError) as err:
        remote.unwrap("B", "x", {"status": "error", "payload": None, "error_code": None, "error_detail": None})
    assert err.value.code == "SERVICE_FAILED"


@pytest.mark.parametrize(("raised", "code", "status"), [
    (AdminError("TIMEOUT", "5 s"), "WAN_TIMEOUT", 504),
    (AdminError("UNREACHABLE", "WAN_UNAVAILABLE for SY.admin@B", payload={"reason": "WAN_UNAVAILABLE"}),
     "HIVE_NOT_CONNECTED", 503),
    (AdminError("NODE_NOT_FOUND", "NODE_NOT_FOUND for SY.admin@B", payload={"reason": "NODE_NOT_FOUND"}),
     "REMOTE_ADMIN_UNAVAILABLE", 503),
    (AdminError("ROUTER_UNREACHABLE", "no router"), "ROUTER_UNREACHABLE", 503),
])
async def test_transport_failures_get_codes_of_their_own(raised: AdminError, code: str, status: int) -> None:
    with pytest.raises(AdminError) as err:
        await remote.relay(ScriptedLink(raised), "B", "list_nodes", {}, timeout=1.0)  # type: ignore[arg-type]
    assert err.value.code == code and http_status(code) == status


# authorisation --------------------------------------------------------------------------------
def _authorise(sender: str, action: str = "list_nodes", target: str | None = "B", mother: str | None = "A",
               known: tuple[str, ...] = ("A", "C")) -> None:
    remote.authorise(sender, action=action, target=target, local_hive="B", mother_hive=mother, known_hives=known)


def test_the_mothers_admin_may_command_a_worker() -> None:
    _authorise("SY.admin@A")
    _authorise("SY.admin@A", target=None)


@pytest.mark.parametrize(("sender", "kwargs", "why"), [
    ("WF.evil@A", {}, "only SY.admin"),
    ("SY.admin.x@A", {}, "only SY.admin"),
    ("SY.admin@C", {}, "only its mother"),
    ("SY.admin@Z", {}, "not linked"),
    ("SY.admin@A", {"known": ("C",)}, "not linked"),
    ("SY.admin@A", {"target": "C"}, "not relayed further"),
    ("SY.admin@A", {"mother": None}, "no mother hive"),
    ("SY.admin", {}, "has no hive"),
])
def test_anyone_else_is_forbidden_with_the_reason(sender: str, kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(AdminError) as err:
        _authorise(sender, **kwargs)
    assert err.value.code == "FORBIDDEN" and why in err.value.detail


def test_any_linked_hives_admin_may_read_the_global_config_but_nothing_else() -> None:
    _authorise("SY.admin@C", action="get_global_config", mother=None)
    with pytest.raises(AdminError):
        _authorise("SY.admin@Z", action="get_global_config")
    with pytest.raises(AdminError):
        _authorise("WF.x@C", action="get_global_config")


def test_only_senders_of_another_hive_count_as_remote() -> None:
    assert remote.is_remote("SY.admin@A", "B") and not remote.is_remote("SY.admin@B", "B")
    assert not remote.is_remote(None, "B") and not remote.is_remote("", "B")


# the router's link view ---------------------------------------------------------------------
STATUS = {"wan": {"hive_id": "A", "listen": "127.0.0.1:9000", "links": [
    {"hive_id": "B", "router_id": "r1", "address": "127.0.0.1:9001", "direction": "out", "state": "up",
     "since": 1, "last_lsa_seq": 4, "last_lsa_age_ms": 120, "rtt_ms": 0.4, "reason": None},
    {"hive_id": None, "address": "127.0.0.1:9009", "direction": "out", "state": "connecting", "since": 2},
    "junk"],
    "routes": [{"hive": "B", "next_hop": "B", "path": ["B"]}, {"hive": "C", "next_hop": "B", "path": ["B", "C"]},
               {"hive": 7}]}}


def test_the_link_view_reads_links_and_the_hives_reached_through_transit() -> None:
    view = wan.WanView.from_status(STATUS)
    assert view.enabled and view.listen == "127.0.0.1:9000"
    assert view.reachable == {"B", "C"}
    assert view.link_to("B") is not None and view.link_to("B").rtt_ms == 0.4  # type: ignore[union-attr]
    assert view.link_at("127.0.0.1:9009") is not None and not view.link_at("127.0.0.1:9009").up  # type: ignore
    assert wan.WanView.from_status({}).reachable == frozenset() and not wan.WanView.from_status(None).enabled


def test_hive_rows_show_each_link_and_transit_and_registered_hives_without_links() -> None:
    rows = wan.hive_rows({"hive_id": "A", "is_local": True}, {"D": {"hive_id": "D", "address": "10.0.0.4:9000"}},
                         wan.WanView.from_status(STATUS))
    by_id = {r["hive_id"]: r for r in rows}
    assert list(by_id) == ["A", "B", "C", "D"]
    assert by_id["B"]["wan_connected"] and by_id["B"]["link"]["last_lsa_seq"] == 4
    assert by_id["C"]["wan_connected"] and by_id["C"]["via"] == "transit" and by_id["C"]["link"] is None
    assert not by_id["D"]["wan_connected"] and by_id["D"]["link"] is None


@pytest.mark.parametrize(("address", "parsed"), [
    ("10.0.0.2", ("10.0.0.2", 9000)), ("10.0.0.2:9100", ("10.0.0.2", 9100)),
    ("hive-b.example:1", ("hive-b.example", 1)),
    ("[::1]:9001", ("::1", 9001)), ("::1", ("::1", 9000)),
])
def test_gateway_addresses_parse(address: str, parsed: tuple[str, int]) -> None:
    assert wan.parse_address(address) == parsed


@pytest.mark.parametrize("address", ["x:0", "x:65536", "x:port", "-bad-", "a..b", "[::1", "[::1]x", "",
                                     "host:1:2:3x", "a b"])
def test_bad_gateway_addresses_are_invalid_address(address: str) -> None:
    with pytest.raises(AdminError) as err:
        wan.parse_address(address)
    assert err.value.code == "INVALID_ADDRESS"


# global config: version order, collection ------------------------------------------------------
def test_a_global_version_only_grows() -> None:
    assert g.next_version(4, None) == 5 and g.next_version(4, 10) == 10
    for stale in (4, 3):
        with pytest.raises(AdminError) as err:
            g.next_version(4, stale)
        assert err.value.code == "VERSION_MISMATCH"


def test_a_change_of_one_list_keeps_the_other() -> None:
    doc = g.GlobalDoc(3, [{"prefix": "WF.a"}], [{"pattern": "WF.b"}])
    assert g.merged(doc, 4, None, []) == g.GlobalDoc(4, [{"prefix": "WF.a"}], [])
    assert g.merged(doc, 5, [], None) == g.GlobalDoc(5, [], [{"pattern": "WF.b"}])


def test_the_collection_names_pending_hives_and_refusals() -> None:
    results = g.collect(["B", "C", "D", "E"], {
        "B": {"status": "ok", "applied": True, "version": 7},
        "C": AdminError("WAN_TIMEOUT", "no answer"),
        "E": AdminError("CONFIG_FAILED", "refused")})
    assert [(r.hive, r.status) for r in results] == [("B", "ok"), ("C", "pending"), ("D", "pending"),
                                                     ("E", "error")]
    done = g.summary(results)
    assert done["pending"] == ["C", "D"] and done["status"] == SYNC_PENDING
    assert g.summary(results[:1]) == {"hives": [{"hive": "B", "status": "ok", "version": 7, "applied": True}],
                                      "pending": [], "status": "ok"}
    assert envelope("set_config_routes", done)["status"] == SYNC_PENDING


async def test_the_store_writes_whole_documents_and_refuses_a_damaged_one(tmp_path: Path) -> None:
    store = g.FileGlobalStore(tmp_path / "admin" / "global-config.json")
    assert await store.load() == g.GlobalDoc()
    await store.save(g.GlobalDoc(9, [{"prefix": "WF.a"}], None), 0)
    assert await store.load() == g.GlobalDoc(9, [{"prefix": "WF.a"}], None)
    assert not list(store.path.parent.glob("*.tmp"))
    with pytest.raises(AdminError) as stale:  # computed from version 3, but 9 is held: not written
        await store.save(g.GlobalDoc(4, [], None), 3)
    assert stale.value.code == "BUSY" and (await store.load()).version == 9
    for bad in ("{", "[]", json.dumps({"version": -1}), json.dumps({"version": 2, "routes": "x"}),
                json.dumps({"version": True})):
        store.path.write_text(bad)
        with pytest.raises(AdminError) as err:
            await store.load()
        assert err.value.code == "STATE_WRITE_FAILED"
        with pytest.raises(AdminError):
            await store.save(g.GlobalDoc(10, [], None), 9)
        assert store.path.read_text() == bad


class HiveInfo:
    hive_id = "B"

    def __init__(self, mother: str | None) -> None:
        self.mother = mother

    async def hive_info(self) -> dict[str, Any]:
        return {"hive_id": "B", "mother_hive": self.mother}


class FakeRoutes:
    def __init__(self) -> None:
        self.applied: list[tuple[str, list[dict[str, Any]]]] = []

    async def lists(self) -> dict[str, Any]:
        return {}

    async def apply(self, subsystem: str, items: list[dict[str, Any]], version: int,
                    base: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        self.applied.append((subsystem, items))
        return {"status": "ok", "version": len(self.applied)}


async def test_a_worker_never_goes_back_to_an_older_global_version(tmp_path: Path) -> None:
    routes = FakeRoutes()
    ctx = Context(backend=HiveInfo("A"), link=None, history=None, routes=routes)  # type: ignore[arg-type]
    gc = g.GlobalConfig(g.FileGlobalStore(tmp_path / "g.json"))
    v2 = g.GlobalDoc(2, [{"prefix": "WF.two"}], None)
    v1 = g.GlobalDoc(1, [{"prefix": "WF.one"}], [{"pattern": "WF.v"}])
    assert (await g.apply_offered(ctx, gc, v2))["applied"] is True
    late = await g.apply_offered(ctx, gc, v1)
    assert late["applied"] is False and late["version"] == 2
    assert (await g.apply_offered(ctx, gc, v2))["applied"] is False  # the same version again: nothing to do
    assert routes.applied == [("routes", [{"prefix": "WF.two"}])]
    assert (await gc.store.load()).version == 2


async def test_concurrent_offers_apply_in_version_order(tmp_path: Path) -> None:
    routes = FakeRoutes()
    ctx = Context(backend=HiveInfo("A"), link=None, history=None, routes=routes)  # type: ignore[arg-type]
    gc = g.GlobalConfig(g.FileGlobalStore(tmp_path / "g.json"))
    docs = [g.GlobalDoc(v, [{"prefix": f"WF.v{v}"}], None) for v in (3, 1, 5, 2, 4)]
    await asyncio.gather(*(g.apply_offered(ctx, gc, d) for d in docs))
    versions = [int(items[0]["prefix"][4:]) for _, items in routes.applied]
    assert versions == sorted(versions) and versions[-1] == 5 and (await gc.store.load()).version == 5


async def test_each_applied_version_is_marked_once_and_a_failed_mark_does_not_undo_it(tmp_path: Path) -> None:
    marks: list[int] = []

    async def mark(version: int) -> None:
        marks.append(version)
        if version == 3:
            raise AdminError("KUBERNETES_API_ERROR", "down")

    ctx = Context(backend=HiveInfo("A"), link=None, history=None, routes=FakeRoutes())  # type: ignore[arg-type]
    gc = g.GlobalConfig(g.FileGlobalStore(tmp_path / "g.json"), applied=mark)
    for version in (2, 1, 3, 2):
        await g.apply_offered(ctx, gc, g.GlobalDoc(version, [], None))
    assert marks == [2, 3] and (await gc.store.load()).version == 3


async def test_a_refused_apply_is_not_recorded_so_it_is_tried_again(tmp_path: Path) -> None:
    class Refusing(FakeRoutes):
        async def apply(self, subsystem: str, items: list[dict[str, Any]], version: int,
                        base: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            return {"status": "error", "error_code": "INVALID_CONFIG", "error_detail": "bad"}

    ctx = Context(backend=HiveInfo("A"), link=None, history=None, routes=Refusing())  # type: ignore[arg-type]
    gc = g.GlobalConfig(g.FileGlobalStore(tmp_path / "g.json"))
    with pytest.raises(AdminError) as err:
        await g.apply_offered(ctx, gc, g.GlobalDoc(1, [], None))
    assert err.value.code == "CONFIG_FAILED" and (await gc.store.load()).version == 0


async def test_a_worker_takes_the_global_config_only_from_its_mothers_admin(tmp_path: Path) -> None:
    routes = FakeRoutes()
    gc = g.GlobalConfig(g.FileGlobalStore(tmp_path / "g.json"))
    ctx = Context(backend=HiveInfo("A"), link=None, history=None, routes=routes,  # type: ignore[arg-type]
                  global_config=gc)
    params = g.GlobalConfigParams(version=3, routes=None, vpns=[])
    for actor in ("SY.admin@C", "SY.identity@A", "WF.cli@B"):
        with pytest.raises(AdminError) as err:
            await g.apply_global_config(ctx, "B", params, Call("admin_command", actor))
        assert err.value.code == "FORBIDDEN"
    assert (await g.apply_global_config(ctx, "B", params, Call("admin_command", "SY.admin@A")))["applied"]
    ctx.backend = HiveInfo(None)  # type: ignore[assignment]
    with pytest.raises(AdminError):
        await g.apply_global_config(ctx, "B", g.GlobalConfigParams(version=4), Call("admin_command", "SY.admin@A"))


# the ADMIN_COMMAND gateway --------------------------------------------------------------------
class WorkerB:
    """Hive B, a worker of A, as the gateway and the hive actions see it."""

    hive_id = "B"
    kind = "local"

    async def hive_info(self) -> dict[str, Any]:
        return {"hive_id": "B", "mother_hive": "A"}

    async def remote_hives(self) -> dict[str, dict[str, Any]]:
        return {}


def _command(sender: str, action: str, target: str | None = "B") -> Any:
    from fluxbee.dataplane.wire import Message, Meta, Routing

    body: dict[str, Any] = {"action": action, "params": {}}
    if target is not None:
        body["target"] = target
    return Message(Routing(src="u-1", dst="u-2", ttl=10, trace_id="t-1", src_l2_name=sender),
                   Meta(type="admin", msg="ADMIN_COMMAND"), body)


B_STATUS = {"wan": {"hive_id": "B", "listen": None, "links": [
    {"hive_id": "A", "address": "127.0.0.1:9000", "direction": "out", "state": "up"}],
    "routes": [{"hive": "A", "next_hop": "A", "path": ["A"]}, {"hive": "C", "next_hop": "A", "path": ["A", "C"]}]}}


@pytest.mark.parametrize(("sender", "target", "why"), [
    ("SY.admin@C", "B", "only its mother"), ("SY.admin@Z", "B", "not linked"), ("WF.x@A", "B", "only SY.admin"),
    ("SY.admin@A", "C", "not relayed")])
async def test_the_gateway_refuses_a_remote_command_before_it_runs(sender: str, target: str, why: str) -> None:
    from fluxbee.admin.gateway import answer

    link = ScriptedLink(status=B_STATUS)
    ctx = Context(backend=WorkerB(), link=link, history=None)  # type: ignore[arg-type]
    reply = await answer(ctx, _command(sender, "list_hives", target))
    assert reply["status"] == "error" and reply["error_code"] == "FORBIDDEN" and why in reply["error_detail"]
    assert link.asked == []  # nothing was relayed or run


async def test_the_gateway_runs_the_mothers_command_here() -> None:
    from fluxbee.admin.gateway import answer

    ctx = Context(backend=WorkerB(), link=ScriptedLink(status=B_STATUS), history=None)  # type: ignore[arg-type]
    reply = await answer(ctx, _command("SY.admin@A", "list_admin_actions", None))
    assert reply["status"] == "ok" and reply["action"] == "list_admin_actions", reply


async def test_a_global_change_of_neither_list_takes_no_version(tmp_path: Path) -> None:
    gc = g.GlobalConfig(g.FileGlobalStore(tmp_path / "g.json"))
    await gc.store.save(g.GlobalDoc(7, [], None), 0)
    ctx = Context(backend=HiveInfo(None), link=None, history=None, routes=FakeRoutes())  # type: ignore[arg-type]

    async def here() -> dict[str, Any]:
        return {"status": "ok", "hive": "A"}

    out = await g.put_global(ctx, gc, None, None, None, here)
    assert out == {"status": "ok", "hive": "A", "global_version": 7, "hives": [], "pending": []}
    assert (await gc.store.load()).version == 7


async def test_a_global_config_too_large_for_one_frame_is_refused_before_anything_is_applied(tmp_path: Path) -> None:
    gc = g.GlobalConfig(g.FileGlobalStore(tmp_path / "g.json"))
    ctx = Context(backend=HiveInfo(None), link=None, history=None, routes=FakeRoutes())  # type: ignore[arg-type]
    applied: list[str] = []

    async def here() -> dict[str, Any]:
        applied.append("here")
        return {"status": "ok"}

    routes = [{"prefix": f"WF.{'x' * 200}.{i}", "action": "DROP", "match_kind": "PREFIX"} for i in range(1000)]
    with pytest.raises(AdminError) as err:
        await g.put_global(ctx, gc, None, routes, None, here)
    assert err.value.code == "PAYLOAD_TOO_LARGE" and http_status("PAYLOAD_TOO_LARGE") == 413
    assert applied == [] and (await gc.store.load()).version == 0
