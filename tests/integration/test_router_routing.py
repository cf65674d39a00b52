"""Routing through a real router process, between SDK nodes in separate processes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hive_harness import NodeProc, RouterProc, eventually, node_names

from fluxbee.dataplane import fastpath, wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, RequestTimeoutError, UnreachableError, connect

Client = Callable[..., Awaitable[NodeSender]]


@pytest.fixture
async def client(run_dir: Path) -> AsyncIterator[Client]:
    senders: list[NodeSender] = []

    async def make(name: str = "WF.client", **kw: object) -> NodeSender:
        sender, _ = await connect(NodeConfig(name=name, run_dir=run_dir, connect_timeout=5, **kw))  # type: ignore[arg-type]
        senders.append(sender)
        return sender

    yield make
    for s in senders:
        await s.close()


async def test_unicast_by_name_and_by_uuid_reach_the_echo_node(router: RouterProc, spawn: Callable[..., NodeProc],
                                                                client: Client, run_dir: Path) -> None:
    spawn("echo", "WF.echo")
    sender = await client()
    by_name = await sender.request("WF.echo", {"n": 1})
    assert by_name.payload == {"n": 1}
    assert by_name.routing.src_l2_name == "WF.echo@t"
    echo_uuid = node_names(run_dir)["WF.echo@t"][0]
    by_uuid = await sender.request(echo_uuid, {"n": 2})
    assert by_uuid.payload == {"n": 2}
    assert by_uuid.routing.src == echo_uuid
    full_name = await sender.request("WF.echo@t", "full")
    assert full_name.payload == "full"


async def test_name_at_star_resolves_the_base_name_in_any_hive(router: RouterProc, spawn: Callable[..., NodeProc],
                                                               client: Client) -> None:
    spawn("echo", "WF.star.echo")
    sender = await client()
    reply = await sender.request("WF.star.echo@*", "hi")
    assert reply.payload == "hi"
    assert reply.routing.src_l2_name == "WF.star.echo@t"


async def test_unknown_name_and_unknown_uuid_answer_node_not_found(router: RouterProc, client: Client) -> None:
    sender = await client()
    with pytest.raises(UnreachableError) as by_name:
        await sender.request("WF.nobody", None)
    assert by_name.value.reason == wire.NODE_NOT_FOUND
    assert by_name.value.original_dst == "WF.nobody"
    ghost = str(uuid.uuid4())
    with pytest.raises(UnreachableError) as by_uuid:
        await sender.request(ghost, None)
    assert by_uuid.value.reason == wire.NODE_NOT_FOUND
    assert by_uuid.value.original_dst == ghost
    assert router.counter("unreachable", wire.NODE_NOT_FOUND) == 2


async def test_ttl_zero_is_answered_ttl_exceeded_with_the_original_fields(router: RouterProc,
                                                                          spawn: Callable[..., NodeProc],
                                                                          client: Client) -> None:
    spawn("echo", "WF.echo")
    sender = await client()
    reply = await sender.request("WF.echo", "x", ttl=0, raise_unreachable=False)
    assert reply.meta.type == wire.TYPE_SYSTEM
    assert reply.meta.msg == wire.TTL_EXCEEDED
    assert reply.payload == {"original_dst": "WF.echo", "last_hop": f"router:{router.uuid}"}
    assert reply.routing.ttl == wire.DEFAULT_TTL


async def test_dst_null_without_a_policy_is_unreachable_opa_error(router: RouterProc, client: Client) -> None:
    sender = await client()
    with pytest.raises(UnreachableError) as err:
        await sender.request(None, "who?")
    assert err.value.reason == wire.OPA_ERROR
    assert err.value.original_dst == "null"


async def test_broadcast_reaches_each_live_node_once(router: RouterProc, spawn: Callable[..., NodeProc],
                                                     client: Client) -> None:
    listeners = [spawn("listener", f"WF.listen.n{i}") for i in range(3)]
    sender = await client()
    trace = str(uuid.uuid4())
    await sender.send("broadcast", {"hello": "all"}, trace_id=trace)
    await sender.send("broadcast", {"hello": "again"}, trace_id=trace)  # duplicate trace id: dropped
    other = await sender.send("broadcast", {"hello": "second"})
    for node in listeners:
        await eventually(lambda node=node: len(node.lines(0.05)) >= 2, 10, "two broadcasts")
        traces = Counter(line["routing"]["trace_id"] for line in node.lines(0.2))
        assert traces == {trace: 1, other: 1}
        first = next(line for line in node.lines() if line["routing"]["trace_id"] == trace)
        assert first["payload"] == {"hello": "all"}
        assert first["routing"]["src_l2_name"] == "WF.client@t"
    assert router.counter("dropped", "BROADCAST_DUPLICATE") == 1


async def test_broadcast_target_filters_receivers(router: RouterProc, spawn: Callable[..., NodeProc],
                                                  client: Client) -> None:
    a = spawn("listener", "WF.team.a")
    b = spawn("listener", "WF.other.b")
    sender = await client()
    await sender.send("broadcast", "only team", meta=wire.Meta(target="WF.team.*"))
    await eventually(lambda: a.lines(0.05), 10, "the targeted listener")
    assert [line["payload"] for line in a.lines()] == ["only team"]
    assert b.lines(0.3) == []


async def test_load_is_spread_over_live_nodes_with_the_same_name(router: RouterProc, spawn: Callable[..., NodeProc],
                                                                 client: Client, run_dir: Path) -> None:
    for _ in range(3):
        spawn("echo", "WF.pool")
    assert len(node_names(run_dir)["WF.pool@t"]) == 3
    sender = await client()
    answered = Counter()
    for i in range(30):
        reply = await sender.request("WF.pool", i)
        assert reply.payload == i
        answered[reply.routing.src] += 1
    assert sorted(answered.values()) == [10, 10, 10]


async def test_vpn_rules_block_across_vpns_but_not_system_nodes(router_factory: Callable[..., RouterProc],
                                                                spawn: Callable[..., NodeProc],
                                                                client: Client) -> None:
    router_factory({"vpns": [{"pattern": "WF.red", "vpn_id": 10}, {"pattern": "WF.blue", "vpn_id": 20}]})
    spawn("echo", "WF.blue.echo")
    spawn("echo", "WF.red.echo")
    red = await client("WF.red.client")
    assert red.vpn_id == 10
    assert (await red.request("WF.red.echo", "same vpn")).payload == "same vpn"
    with pytest.raises(UnreachableError) as err:
        await red.request("WF.blue.echo", "other vpn")
    assert err.value.reason == wire.VPN_BLOCKED
    admin = await client("SY.admin")
    assert admin.vpn_id == 0
    assert (await admin.request("WF.blue.echo", "system is exempt")).payload == "system is exempt"


async def test_vpn_change_from_the_config_file_applies_live(router: RouterProc, spawn: Callable[..., NodeProc],
                                                            client: Client) -> None:
    spawn("echo", "WF.blue.echo")
    red = await client("WF.red.client")
    assert (await red.request("WF.blue.echo", 1)).payload == 1
    version = router.status()["config_version"]
    router.write_config({"vpns": [{"pattern": "WF.blue", "match_kind": "PREFIX", "vpn_id": 20}]})
    await eventually(lambda: router.status()["config_version"] > version, 10, "the config reload")
    with pytest.raises(UnreachableError) as err:
        await red.request("WF.blue.echo", 2)
    assert err.value.reason == wire.VPN_BLOCKED
    router.write_config({"vpns": "not a list"})  # refused: the previous config stays
    await eventually(lambda: router.counter("config_errors", "file") == 1, 10, "the bad config to be refused")
    with pytest.raises(UnreachableError):
        await red.request("WF.blue.echo", 3)


async def test_config_changed_from_a_system_node_replaces_routes_and_answers(router: RouterProc,
                                                                             spawn: Callable[..., NodeProc],
                                                                             client: Client) -> None:
    spawn("echo", "WF.secret.echo")
    user = await client("WF.user")
    assert (await user.request("WF.secret.echo", "before")).payload == "before"
    denied = await user.request(router.uuid, {"subsystem": "routes", "version": 1, "config": []},
                                msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_CHANGED)
    assert denied.meta.msg == wire.CONFIG_RESPONSE
    assert denied.payload["status"] == "error" and denied.payload["error_code"] == "FORBIDDEN"
    admin = await client("SY.admin")
    change = {"subsystem": "routes", "version": 5,
              "config": {"routes": [{"prefix": "WF.secret", "match_kind": "PREFIX", "action": "DROP"}]}}
    ok = await admin.request(router.uuid, change, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_CHANGED)
    assert ok.payload["status"] == "ok" and ok.payload["version"] == 5
    stale = await admin.request(router.uuid, change, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_CHANGED)
    assert stale.payload["error_code"] == "STALE_VERSION"
    bad = await admin.request(router.uuid, {"subsystem": "routes", "version": 6, "config": [{"action": "EXPLODE"}]},
                              msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_CHANGED)
    assert bad.payload["error_code"] == "INVALID_CONFIG"
    with pytest.raises(RequestTimeoutError):
        await user.request("WF.secret.echo", "after", timeout=0.5)
    assert router.counter("dropped", "ROUTE_DROP") == 1


async def test_drop_route_wins_over_a_connected_node(router_factory: Callable[..., RouterProc],
                                                     spawn: Callable[..., NodeProc], client: Client) -> None:
    router = router_factory({"routes": [{"prefix": "WF.black.*", "match_kind": "PREFIX", "action": "DROP"},
                                        {"prefix": "WF.black.allowed", "match_kind": "EXACT", "action": "FORWARD"}]})
    spawn("echo", "WF.black.hole")
    spawn("echo", "WF.black.allowed")
    spawn("echo", "WF.blackbird")  # no dot boundary: not covered by WF.black.*
    sender = await client()
    with pytest.raises(RequestTimeoutError):
        await sender.request("WF.black.hole", "dropped", timeout=0.5)
    assert (await sender.request("WF.black.allowed", "more specific")).payload == "more specific"
    assert (await sender.request("WF.blackbird", "not a prefix match")).payload == "not a prefix match"
    assert router.counter("dropped", "ROUTE_DROP") == 1


async def test_forward_route_to_another_hive_is_unreachable_without_a_gateway(
        router_factory: Callable[..., RouterProc], client: Client) -> None:
    router_factory({"routes": [{"prefix": "AI.remote", "action": "FORWARD", "next_hop_hive": "mother"}]})
    sender = await client()
    with pytest.raises(UnreachableError) as err:
        await sender.request("AI.remote.agent", None)
    assert err.value.reason == wire.WAN_UNAVAILABLE


async def test_node_status_get_is_answered_by_the_sdk(router: RouterProc, spawn: Callable[..., NodeProc],
                                                      client: Client) -> None:
    spawn("echo", "WF.echo")
    sender = await client()
    reply = await sender.request("WF.echo", None, msg_type=wire.TYPE_SYSTEM, msg=wire.NODE_STATUS_GET)
    assert reply.meta.msg == wire.NODE_STATUS_GET_RESPONSE
    assert reply.payload["lifecycle_state"] == "RUNNING"
    assert reply.payload["health_state"] == "HEALTHY"
    assert reply.payload["health_source"] == "NODE_REPORTED"
    assert reply.payload["node_name"] == "WF.echo@t"


async def test_router_status_and_metrics_report_nodes_and_counters(router: RouterProc,
                                                                   spawn: Callable[..., NodeProc],
                                                                   client: Client) -> None:
    spawn("echo", "WF.echo")
    sender = await client()
    await sender.request("WF.echo", 1)
    status = await sender.router_status()
    assert {n["name"] for n in status["nodes"]} == {"WF.echo@t", "WF.client@t"}
    assert status["router"]["uuid"] == router.uuid
    assert status["router"]["fast_path"] == fastpath.IMPLEMENTATION  # "c" wherever the extension is built
    metrics = router.metrics()
    assert "fluxbee_router_delivered_total 2" in metrics
    assert "fluxbee_router_nodes 2" in metrics
    await asyncio.sleep(0)


def _kernel_policy(pid: int) -> int:
    for line in Path(f"/proc/{pid}/sched").read_text().splitlines():
        if line.startswith("policy"):
            return int(line.rpartition(":")[2])
    raise AssertionError(f"no policy line for {pid}")


needs_sched_batch = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this platform")


@needs_sched_batch
async def test_the_router_runs_in_sched_batch_by_default(router: RouterProc) -> None:
    assert router.proc is not None
    assert router.status()["router"]["scheduling"] == "batch"
    assert _kernel_policy(router.proc.pid) == os.SCHED_BATCH


async def test_the_router_says_how_its_allocator_runs(router: RouterProc) -> None:
    """Tuned on glibc (fluxbee.dataplane.alloc) unless the environment sets malloc variables."""
    from fluxbee.dataplane import alloc

    assert router.status()["router"]["allocator"] == (alloc.left_alone(os.environ) or "tuned")


@needs_sched_batch
async def test_the_router_keeps_its_class_when_told_to_inherit(router_factory: Callable[..., RouterProc]) -> None:
    router = router_factory(extra=("--scheduling", "inherit"))
    assert router.proc is not None
    assert router.status()["router"]["scheduling"] == "normal"
    assert _kernel_policy(router.proc.pid) == os.SCHED_OTHER


async def test_busy_polling_is_off_by_default(router: RouterProc) -> None:
    assert router.status()["router"]["busy_poll"] is None


async def test_a_busy_polling_router_routes_as_before_and_says_it_polls(router_factory: Callable[..., RouterProc],
                                                                        spawn: Callable[..., NodeProc],
                                                                        client: Client) -> None:
    polling = router_factory(extra=("--busy-poll-us", "200"))
    spawn("echo", "WF.echo")
    node = await client("WF.asker")
    for _ in range(20):  # routed as without the option
        assert (await node.request("WF.echo", {"n": 1})).payload == {"n": 1}
    busy = polling.status()["router"]["busy_poll"]
    assert busy["window_us"] == 200 and busy["windows"] > 0 and busy["budget_cpu_share"] == 0.5


async def test_the_sdk_serves_config_get_and_applies_config_set(router: RouterProc, spawn: Callable[..., NodeProc],
                                                                client: Client) -> None:
    spawn("echo", "WF.echo")
    admin = await client("SY.admin")
    meta = wire.Meta(target="node_config_control")
    got = await admin.request("WF.echo", {"node_name": "WF.echo"}, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_GET,
                              meta=meta)
    assert got.meta.msg == wire.CONFIG_RESPONSE
    assert got.payload["ok"] is True and got.payload["config_version"] == 1
    assert got.payload["contract"]["apply_modes"] == ["replace"]
    new = {"node_name": "WF.echo", "schema_version": "1", "config_version": 2, "apply_mode": "replace",
           "config": {"temperature": 0.5}}
    applied = await admin.request("WF.echo", new, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_SET,
                                  meta=wire.Meta(target="node_config_control"))
    assert applied.payload["ok"] is True and applied.payload["state"] == "applied"
    assert applied.payload["effective_config"] == {"temperature": 0.5}
    stale = await admin.request("WF.echo", new, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_SET,
                                meta=wire.Meta(target="node_config_control"))
    assert stale.payload["ok"] is False and stale.payload["error"].startswith("STALE_CONFIG_VERSION")
    system = await admin.request("WF.echo", {**new, "config_version": 3, "config": {"_system": {}}},
                                 msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_SET,
                                 meta=wire.Meta(target="node_config_control"))
    assert system.payload["ok"] is False and "_system" in system.payload["error"]
    again = await admin.request("WF.echo", {}, msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_GET,
                                meta=wire.Meta(target="node_config_control"))
    assert again.payload["config_version"] == 2 and again.payload["effective_config"] == {"temperature": 0.5}


async def test_a_node_that_names_its_hive_joins_a_router_of_that_hive_when_two_share_a_socket_dir(
        run_dir: Path) -> None:
    from hive_harness import RouterProc as Router

    routers = [Router(run_dir, hive_id=h) for h in ("t", "u")]
    try:
        for name in ("WF.a@t", "WF.b@u", "WF.c@t", "WF.d@u", "WF.e@u"):
            sender, _ = await connect(NodeConfig(name=name, run_dir=run_dir, connect_timeout=5))
            try:
                assert sender.name == name
            finally:
                await sender.close()
    finally:
        for r in routers:
            assert r.stop() == 0


async def test_the_metrics_endpoint_survives_bad_http_and_answers_only_get(router: RouterProc) -> None:
    import socket as socket_mod

    def exchange(data: bytes) -> bytes:
        """The answer, or b"" when the server just closes (a reset counts: it left input unread)."""
        with socket_mod.create_connection(("127.0.0.1", router.metrics_port), timeout=10) as s:
            chunks = []
            try:
                s.sendall(data)
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except ConnectionResetError:
                pass
            return b"".join(chunks)

    assert exchange(b"POST /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405")
    assert exchange(b"GET /nope HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404")
    # Not HTTP, or a request line over the limit: refused (400 and closed), and the server goes on.
    assert exchange(b"\x00\xff garbage without a blank line").split(b"\r\n", 1)[0] == b"HTTP/1.0 400 Bad Request"
    assert exchange(b"GET /" + b"a" * 200_000 + b" HTTP/1.0\r\n\r\n").split(b"\r\n", 1)[0] in (
        b"", b"HTTP/1.0 400 Bad Request")
    assert "fluxbee_router_nodes" in router.metrics()
    assert router.status()["router"]["uuid"] == router.uuid
