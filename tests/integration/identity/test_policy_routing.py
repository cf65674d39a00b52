"""Policy-driven routing end to end: a real router, SY.identity on PostgreSQL, SDK nodes, the policy region.

The test process plays the hive's policy service: it compiles Rego (``opa`` when ``$FLUXBEE_OPA`` or
``PATH`` has it, regorus otherwise), publishes the artefact in the policy region and sends OPA_RELOAD
as an authenticated ``SY.*`` node, as SY.policy does.
"""

from __future__ import annotations

import asyncio
import mmap
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import posix_ipc
import pytest
from conftest import Db, IdentityProc
from hive_harness import RouterProc, wait_until

from fluxbee.dataplane import wire
from fluxbee.dataplane.policy import compile_policy
from fluxbee.dataplane.sdk import NodeConfig, NodeReceiver, NodeSender, connect
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.dataplane.shm.policy import POLICY_ARTEFACT_OFFSET, PolicyRegion, artefact_digest
from fluxbee.identity import client as idc

pytestmark = pytest.mark.integration

SEED = """package router

default allow := false

allow if input.meta.action != "system_status"

allow if {
	input.meta.action == "system_status"
	ident := data.identity[input.src_ilk]
	ident.type == "human"
	ident.human_subtype == "internal"
}

target := cap if {
	cap := input.meta.context.required_capability
	data.by_capability[cap]
}

target := "AI.ops" if input.meta.action == "system_status"
"""

CONFLICT = """package router

target := input.meta.context.a if input.meta.context.a
target := input.meta.context.b if input.meta.context.b
"""


def by_name(name: str) -> str:
    return f'package router\n\ntarget := "{name}"\n'


@dataclass
class Publisher:
    """The policy service's side: the region and the OPA_RELOAD sender."""

    region: PolicyRegion
    admin: NodeSender
    router_uuid: str
    version: int = 0

    def publish(self, source: str) -> tuple[int, str]:
        artefact = compile_policy(source)
        blob = artefact.to_bytes()
        self.version += 1
        digest = artefact_digest(blob)
        self.region.publish(blob, self.version, digest, engine=artefact.engine, entrypoints=artefact.entrypoints)
        return self.version, digest

    async def reload(self, version: int, digest: str) -> dict[str, Any]:
        answer = await self.admin.request(self.router_uuid, {"version": version, "hash": f"sha256:{digest}"},
                                          msg_type=wire.TYPE_SYSTEM, msg=wire.OPA_RELOAD, timeout=30)
        assert answer.meta.msg == wire.OPA_RELOAD_RESPONSE
        return dict(answer.payload)

    async def apply(self, source: str) -> int:
        version, digest = self.publish(source)
        answer = await self.reload(version, digest)
        assert answer["status"] == "ok" and answer["version"] == version, answer
        return version


async def node(run_dir: Path, name: str) -> tuple[NodeSender, NodeReceiver]:
    return await connect(NodeConfig(name=name, run_dir=run_dir, connect_timeout=5))


@pytest.fixture
async def publisher(run_dir: Path, router: RouterProc, identity: IdentityProc) -> AsyncIterator[Publisher]:
    region = PolicyRegion.create("t", owner_uuid=str(uuid.uuid4()), run_dir=run_dir, capacity_bytes=1 << 22)
    admin, _ = await node(run_dir, "SY.admin")
    try:
        yield Publisher(region, admin, router.uuid)
    finally:
        await admin.close()
        region.close()


async def drain(rx: NodeReceiver, timeout: float = 0.3) -> list[wire.Message]:
    got: list[wire.Message] = []
    while True:
        try:
            got.append(await rx.recv(timeout=timeout))
        except TimeoutError:
            return got


async def decisions(sender: NodeSender, router_uuid: str, after: int = 0) -> dict[str, Any]:
    answer = await sender.request(router_uuid, {"after": after}, msg_type=wire.TYPE_SYSTEM,
                                  msg=wire.OPA_DECISIONS_GET, timeout=10)
    assert answer.meta.msg == wire.OPA_DECISIONS_GET_RESPONSE and answer.payload["status"] == "ok", answer.payload
    return dict(answer.payload)


async def test_seed_rules_capability_load_balancing_and_system_status(
        run_dir: Path, router: RouterProc, identity: IdentityProc, identity_db: Db, publisher: Publisher) -> None:
    orch, _ = await node(run_dir, "SY.orchestrator")
    desk, _ = await node(run_dir, "SY.frontdesk.gov")
    agent1, rx1 = await node(run_dir, "AI.billing1")
    agent2, rx2 = await node(run_dir, "AI.billing2")
    io, io_rx = await node(run_dir, "IO.web")
    admin_rx = None
    try:
        conn = await identity_db.connect()
        try:
            tenant = f"tnt:{await conn.fetchval('SELECT tenant_id FROM identity_tenants WHERE is_default')}"
        finally:
            await conn.close()
        ilks = {}
        for name in ("AI.billing1", "AI.billing2"):
            made = await idc.register(orch, f"ilk:{uuid.uuid4()}", "agent", tenant,
                                      identification={"node_name": f"{name}@t"})
            await idc.update_ilk(orch, made["ilk_id"], add_capabilities=["billing"])
            ilks[name] = made["ilk_id"]
        for who, subtype in (("staff", "internal"), ("customer", "external")):
            made = await idc.register(desk, f"ilk:{uuid.uuid4()}", "human", tenant)
            await idc.update_ilk(orch, made["ilk_id"], human_subtype=subtype)
            ilks[who] = made["ilk_id"]
        for ilk, subtype in ((ilks["AI.billing1"], "internal"), (ilks["staff"], "contractor")):
            with pytest.raises(idc.IdentityCallError) as err:  # validated by SY.identity, nothing written
                await idc.update_ilk(orch, ilk, human_subtype=subtype)
            assert err.value.code == "INVALID_REQUEST"

        status = router.status()["policy"]
        assert status["status"] == "none" and status["version"] is None
        no_policy = await io.request(None, {"n": 0}, raise_unreachable=False, timeout=5,
                                     meta=wire.Meta(type="user", context={"required_capability": "billing"}))
        assert no_policy.payload["reason"] == wire.OPA_ERROR

        version = await publisher.apply(SEED)
        status = router.status()["policy"]
        assert status["version"] == version and status["status"] == "loaded" and status["engine"] in ("wasm", "regorus")
        assert status["hash"] == f"sha256:{publisher.region.sha256}"

        before = router.status()["policy"]["cache"]
        for i in range(6):  # a customer message naming a capability: the agents holding it, in turn
            await io.send(None, {"n": i}, meta=wire.Meta(type="user", src_ilk=ilks["customer"],
                                                          context={"required_capability": "billing"}))
        got1, got2 = await drain(rx1), await drain(rx2)
        assert len(got1) == 3 and len(got2) == 3, (len(got1), len(got2))
        assert sorted(m.payload["n"] for m in got1 + got2) == list(range(6))
        assert got1[0].routing.dst in (agent1.uuid, agent2.uuid), "the chosen node is stamped into routing.dst"
        after = router.status()["policy"]["cache"]
        # the six messages differ only in payload: one evaluation, five cache hits
        assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 5)

        # an identity change (a third agent gains the capability) reaches the policy's data within
        # seconds: the engine is rebuilt once for the new identity version, not per message
        agent3, rx3 = await node(run_dir, "AI.billing3")
        made = await idc.register(orch, f"ilk:{uuid.uuid4()}", "agent", tenant,
                                  identification={"node_name": "AI.billing3@t"})
        await idc.update_ilk(orch, made["ilk_id"], add_capabilities=["billing"])
        loaded_for = router.status()["policy"]["identity_version"]
        wait_until(lambda: router.status()["policy"]["identity_version"] != loaded_for, 10,
                   "the router to rebuild the policy data for the new identity version")
        for i in range(6):
            await io.send(None, {"n": i}, meta=wire.Meta(type="user", src_ilk=ilks["customer"],
                                                          context={"required_capability": "billing"}))
        counts = [len(await drain(rx)) for rx in (rx1, rx2, rx3)]
        assert counts == [2, 2, 2], counts
        await agent3.close()

        nothing = await io.request(None, {"n": 9}, raise_unreachable=False, timeout=5,
                                   meta=wire.Meta(type="user", context={"required_capability": "plumbing"}))
        assert nothing.payload["reason"] == wire.OPA_NO_TARGET

        # system_status: allowed only from an internal human's ILK
        admin_sender, admin_rx = await node(run_dir, "AI.ops")
        await io.send(None, {"q": "status"}, meta=wire.Meta(type="user", action="system_status",
                                                           src_ilk=ilks["staff"]))
        assert (await admin_rx.recv(timeout=5)).payload == {"q": "status"}
        for who in ("customer", "AI.billing1"):
            denied = await io.request(None, {"q": "status"}, raise_unreachable=False, timeout=5,
                                      meta=wire.Meta(type="user", action="system_status", src_ilk=ilks[who]))
            assert denied.payload["reason"] == wire.POLICY_DENIED, who
        # ... whatever the destination: an explicit dst does not get around the allow rule
        denied = await io.request("AI.ops", {"q": "status"}, raise_unreachable=False, timeout=5,
                                  meta=wire.Meta(type="user", action="system_status", src_ilk=ilks["customer"]))
        assert denied.payload["reason"] == wire.POLICY_DENIED
        await io.send("AI.ops", {"q": "direct"}, meta=wire.Meta(type="user", action="system_status",
                                                                src_ilk=ilks["staff"]))
        assert (await admin_rx.recv(timeout=5)).payload == {"q": "direct"}
        # an alias is judged as its canonical ILK: the staff member's WhatsApp got a temporary ILK,
        # which the front desk merged into the staff ILK; a message still carrying the old ILK is the staff's
        temp = await idc.provision_ilk(io, "whatsapp", "+34600999000")
        await idc.add_channel(desk, ilks["staff"], "whatsapp", "+34600999000",
                              ich_id=idc.ich_for(tenant, "whatsapp", "+34600999000"),
                              merge_from_ilk_id=temp["ilk_id"], change_reason="same person")
        reader = identity_shm.IdentityRegionReader("t", run_dir=run_dir)
        try:
            wait_until(lambda: reader.canonical(temp["ilk_id"]) == ilks["staff"], 10, "the alias in the region")
        finally:
            reader.close()
        await io.send(None, {"q": "alias"}, meta=wire.Meta(type="user", action="system_status",
                                                           src_ilk=temp["ilk_id"]))
        aliased = await admin_rx.recv(timeout=5)
        assert aliased.payload == {"q": "alias"} and aliased.meta.src_ilk == ilks["staff"], aliased.meta
        await io.send("AI.ops", {"q": "alias direct"}, meta=wire.Meta(type="user", action="system_status",
                                                                      src_ilk=temp["ilk_id"]))
        assert (await admin_rx.recv(timeout=5)).payload == {"q": "alias direct"}
        # a plain message with an explicit dst is not evaluated at all
        before = router.status()["policy"]["cache"]
        await io.send("AI.billing1", {"plain": True})
        assert (await rx1.recv(timeout=5)).payload == {"plain": True}
        after = router.status()["policy"]["cache"]
        assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])

        audit = await decisions(io, router.uuid)
        results: Counter[str] = Counter()
        for d in audit["decisions"]:  # a record is one decision, or the fast lane's aggregate of `count`
            results[d["result"]] += d["count"]
        assert results == {"routed": 14, wire.OPA_NO_TARGET: 1, wire.POLICY_DENIED: 3, "allowed": 2}, results
        lane = [d for d in audit["decisions"] if d["count"] > 1]
        assert lane and all(d["cached"] and d["result"] == "routed" and d["since_ms"] <= d["ts_ms"] for d in lane), \
            "repeated decisions were taken by the fast lane and audited as aggregates"
        assert {d["policy_version"] for d in audit["decisions"]} == {version}
        assert all(len(d["input_digest"]) == 16 for d in audit["decisions"])
        metrics = router.metrics()
        cache = router.status()["policy"]["cache"]
        assert f'fluxbee_router_policy_cache_total{{outcome="hit"}} {cache["hits"]}' in metrics, metrics
        assert f'fluxbee_router_policy_cache_total{{outcome="miss"}} {cache["misses"]}' in metrics
        assert 'fluxbee_router_policy_decisions_total{result="routed"} 14' in metrics
        assert 'fluxbee_router_policy_decisions_total{result="POLICY_DENIED"} 3' in metrics
        assert f"fluxbee_router_policy_version {version}" in metrics
        await admin_sender.close()
    finally:
        for s in (orch, desk, agent1, agent2, io):
            await s.close()


async def test_evaluation_error_tampered_region_and_bad_reloads(
        run_dir: Path, router: RouterProc, publisher: Publisher) -> None:
    io, _ = await node(run_dir, "IO.web")
    target, target_rx = await node(run_dir, "AI.one")
    try:
        await publisher.apply(CONFLICT)
        failed = await io.request(None, {}, raise_unreachable=False, timeout=5,
                                  meta=wire.Meta(type="user", context={"a": "AI.one", "b": "AI.two"}))
        assert failed.payload["reason"] == wire.OPA_ERROR and "policy evaluation failed" in failed.payload["detail"]
        good = await publisher.apply(by_name("AI.one"))

        # a tampered artefact: the region's bytes no longer hash to its digest
        version, digest = publisher.publish(by_name("AI.evil"))
        shm = posix_ipc.SharedMemory(publisher.region.name)
        mm = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        try:
            mm[POLICY_ARTEFACT_OFFSET + 20] ^= 0x01
        finally:
            mm.close()
        answer = await publisher.reload(version, digest)
        assert answer["status"] == "error" and answer["error_code"] == "HASH_MISMATCH", answer
        status = router.status()["policy"]
        assert status["version"] == good and status["error"]["code"] == "HASH_MISMATCH"
        await io.send(None, {"still": "v2"})
        assert (await target_rx.recv(timeout=5)).payload == {"still": "v2"}, "the previous policy keeps running"

        # an OPA_RELOAD naming another hash, a malformed one, and one from a node that may not send it
        v, _ = publisher.publish(by_name("AI.one"))
        wrong = await publisher.reload(v, "0" * 64)
        assert wrong["error_code"] == "HASH_MISMATCH"
        bad = await publisher.admin.request(router.uuid, {"version": "x"}, msg_type=wire.TYPE_SYSTEM,
                                            msg=wire.OPA_RELOAD, timeout=10)
        assert bad.payload["error_code"] == "INVALID_REQUEST"
        forbidden = await io.request(router.uuid, {"version": v, "hash": "sha256:" + "0" * 64},
                                     msg_type=wire.TYPE_SYSTEM, msg=wire.OPA_RELOAD, timeout=10)
        assert forbidden.meta.msg == wire.OPA_RELOAD_RESPONSE and forbidden.payload["error_code"] == "FORBIDDEN"
        bad_page = await io.request(router.uuid, {"limit": 0}, msg_type=wire.TYPE_SYSTEM,
                                    msg=wire.OPA_DECISIONS_GET, timeout=10)
        assert bad_page.payload["error_code"] == "INVALID_REQUEST"
    finally:
        await io.close()
        await target.close()


async def test_a_new_version_under_load_routes_each_message_by_exactly_one_version(
        run_dir: Path, router: RouterProc, publisher: Publisher) -> None:
    io, _ = await node(run_dir, "IO.load")
    a, a_rx = await node(run_dir, "AI.a")
    b, b_rx = await node(run_dir, "AI.b")
    try:
        first = await publisher.apply(by_name("AI.a"))
        start = (await decisions(io, router.uuid))["latest"]
        total = 600

        async def load() -> None:
            for i in range(total):
                await io.send(None, {"i": i}, meta=wire.Meta(type="user", context={"i": i}))  # distinct inputs
                if i % 50 == 0:
                    await asyncio.sleep(0.01)

        sending = asyncio.create_task(load())
        await asyncio.sleep(0.05)
        second = await publisher.apply(by_name("AI.b"))
        await sending
        got_a, got_b = await drain(a_rx, 1.0), await drain(b_rx, 1.0)
        seen = sorted(m.payload["i"] for m in got_a + got_b)
        assert seen == list(range(total)), "nothing lost, nothing twice"
        audit: list[dict[str, Any]] = []
        after, pages = start, 0
        while True:  # paged: a page holds what fits in one frame
            page = await decisions(io, router.uuid, after=after)
            if not page["decisions"]:
                break
            audit += page["decisions"]
            after, pages = page["next_after"], pages + 1
        assert len(audit) == total and pages >= 1
        assert [d["seq"] for d in audit] == list(range(start + 1, start + total + 1))
        versions = [d["policy_version"] for d in audit]
        assert set(versions) <= {first, second} and versions.count(second) >= 1
        switch = versions.index(second)
        assert all(v == first for v in versions[:switch]) and all(v == second for v in versions[switch:]), \
            "one swap: every decision after it is by the new version"
        assert versions.count(first) == len(got_a) and versions.count(second) == len(got_b)
        assert all(d["resolved"] == ("AI.a@t" if d["policy_version"] == first else "AI.b@t") for d in audit)

        # the same with one repeated meta: after its first message the fast lane routes them (audited
        # as aggregates); a swap under load still routes each by exactly one version, in order
        third_a = await publisher.apply(by_name("AI.a"))
        start = (await decisions(io, router.uuid))["latest"]
        lane_before = router.status()["policy"]["cache"]["lane_hits"]

        async def repeated() -> None:
            for i in range(total):
                await io.send(None, {"i": i}, meta=wire.Meta(type="user", context={"same": True}))
                if i % 50 == 0:
                    await asyncio.sleep(0.01)

        sending = asyncio.create_task(repeated())
        await asyncio.sleep(0.05)
        fourth_b = await publisher.apply(by_name("AI.b"))
        await sending
        got_a, got_b = await drain(a_rx, 1.0), await drain(b_rx, 1.0)
        on_a, on_b = [m.payload["i"] for m in got_a], [m.payload["i"] for m in got_b]
        assert sorted(on_a + on_b) == list(range(total)), "nothing lost, nothing twice"
        assert on_b and (not on_a or max(on_a) < min(on_b)), "one swap: everything after it by the new version"
        assert on_a == sorted(on_a) and on_b == sorted(on_b)
        page = await decisions(io, router.uuid, after=start)
        lane = page["decisions"]
        assert sum(d["count"] for d in lane) == total and any(d["count"] > 1 for d in lane)
        by_version = Counter()
        for d in lane:
            by_version[d["policy_version"]] += d["count"]
            assert d["resolved"] == ("AI.a@t" if d["policy_version"] == third_a else "AI.b@t"), d
        assert by_version == {third_a: len(got_a), fourth_b: len(got_b)} if got_a else {fourth_b: len(got_b)}
        seqs = {v: [d["seq"] for d in lane if d["policy_version"] == v] for v in by_version}
        if got_a:
            assert max(seqs[third_a]) < min(seqs[fourth_b]), "audited in the order the versions ran"
        assert router.status()["policy"]["cache"]["lane_hits"] - lane_before == total - 2 + (0 if got_a else 1)

        # the safety net: a version published without OPA_RELOAD is found by the router's poll
        third, _ = publisher.publish(by_name("AI.a"))
        wait_until(lambda: router.status()["policy"]["version"] == third, 15, "the router to poll the region")
        await io.send(None, {"polled": True})
        assert (await a_rx.recv(timeout=5)).payload == {"polled": True}
    finally:
        for s in (io, a, b):
            await s.close()
