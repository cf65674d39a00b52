"""SY.identity against real PostgreSQL (embedded) and a real router process."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import Db, IdentityProc
from hive_harness import fluxbee_argv

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, connect
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.identity import client as idc
from fluxbee.identity.client import IdentityCallError

pytestmark = pytest.mark.integration


async def node(run_dir: Path, name: str) -> NodeSender:
    sender, _ = await connect(NodeConfig(name=name, run_dir=run_dir, connect_timeout=5))
    return sender


def lookup_in_other_process(run_dir: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(fluxbee_argv("identity", "lookup", "--hive-id", "t", "--run-dir", str(run_dir), *args),
                         capture_output=True, text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout))


async def default_tenant(db: Db) -> str:
    conn = await db.connect()
    try:
        return f"tnt:{await conn.fetchval('SELECT tenant_id FROM identity_tenants WHERE is_default')}"
    finally:
        await conn.close()


async def db_state(db: Db) -> list[Any]:
    conn = await db.connect()
    try:
        out = []
        for table, key in (("identity_ilks", "ilk_id"), ("identity_ichs", "ich_id"),
                           ("identity_ilk_aliases", "old_ilk_id"), ("identity_tenants", "tenant_id")):
            out.append([dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY {key}")])
        return out
    finally:
        await conn.close()


async def test_provision_register_merge_and_lookup_from_shared_memory_in_another_process(
        run_dir: Path, identity: IdentityProc, identity_db: Db) -> None:
    io = await node(run_dir, "IO.whatsapp")
    desk = await node(run_dir, "SY.frontdesk.gov")
    try:
        tenant = await default_tenant(identity_db)
        first = await idc.provision_ilk(io, "WhatsApp", "+34600111222")
        assert first["registration_status"] == "temporary"
        again = await idc.provision_ilk(io, "whatsapp", " +34600111222 ")
        assert again["ilk_id"] == first["ilk_id"], "ILK_PROVISION is idempotent on the channel key"
        other = await idc.provision_ilk(io, "email", "Ana@Example.com")

        hit = lookup_in_other_process(run_dir, "--channel", "whatsapp:+34600111222", "--tenant", tenant)
        assert hit["channel"]["ilk_id"] == first["ilk_id"]

        # The front desk registers the person under the email ILK, then merges the WhatsApp temp ILK into it.
        reg = await idc.register(desk, other["ilk_id"], "human", tenant,
                                 identification={"display_name": "Ana", "email": "ana@example.com"},
                                 roles=["Customer"])
        assert reg["ilk_id"] == other["ilk_id"]
        ich = idc.ich_for(tenant, "sms", "+34600111222")
        merged = await idc.add_channel(desk, other["ilk_id"], "sms", "+34600111222", ich_id=ich,
                                       merge_from_ilk_id=first["ilk_id"], change_reason="same person")
        assert merged == {"status": "ok", "ilk_id": other["ilk_id"], "change_reason": "same person"}

        seen = lookup_in_other_process(run_dir, "--channel", "whatsapp:+34600111222", "--tenant", tenant,
                                       "--ilk", first["ilk_id"])
        assert seen["channel"]["ilk_id"] == other["ilk_id"], "the merged channel now resolves to the canonical ILK"
        assert seen["canonical"] == other["ilk_id"], "the old ILK is an alias of the canonical one"
        assert seen["ilk"]["registration_status"] == "complete"
        sms = lookup_in_other_process(run_dir, "--channel", "SMS:+34600111222", "--tenant", tenant)
        assert sms["channel"] == {"ilk_id": other["ilk_id"], "ich_id": ich}

        metrics = await idc.identity_metrics(io)
        assert metrics["ilk_count"] == 1 and metrics["deleted_ilk_count"] == 1 and metrics["alias_count"] == 1
        assert metrics["ich_count"] == 3 and metrics["tenant_count"] == 1
    finally:
        await io.close()
        await desk.close()


async def test_senders_not_allowed_are_rejected_with_unauthorized_registrar(run_dir: Path,
                                                                            identity: IdentityProc) -> None:
    wf = await node(run_dir, "WF.sneaky")
    admin = await node(run_dir, "SY.admin")
    try:
        with pytest.raises(IdentityCallError) as err:
            await idc.provision_ilk(wf, "whatsapp", "+1")
        assert err.value.code == "UNAUTHORIZED_REGISTRAR"
        assert err.value.payload["src_l2_name"] == "WF.sneaky@t", "authorisation uses the router-stamped name"
        with pytest.raises(IdentityCallError) as err:
            await idc.register(wf, f"ilk:{uuid.uuid4()}", "human", f"tnt:{uuid.uuid4()}")
        assert err.value.code == "UNAUTHORIZED_REGISTRAR"
        with pytest.raises(IdentityCallError) as err:  # SY.admin registers node ILKs at spawn: it gets past the check
            await idc.register(admin, f"ilk:{uuid.uuid4()}", "system", f"tnt:{uuid.uuid4()}")
        assert err.value.code == "INVALID_TENANT"
        with pytest.raises(IdentityCallError) as err:
            await idc.tnt_create(wf, "Acme")
        assert err.value.code == "UNAUTHORIZED_REGISTRAR"
    finally:
        await wf.close()
        await admin.close()


async def test_tnt_create_with_a_tenant_id_creates_that_tenant_once_and_never_matches_by_name(
        run_dir: Path, identity: IdentityProc) -> None:
    admin = await node(run_dir, "SY.admin")
    try:
        named = await idc.tnt_create(admin, "Acme", status="active")
        wanted = f"tnt:{uuid.uuid4()}"
        first = await idc.tnt_create(admin, "Acme", status="active", tenant_id=wanted)
        assert first == {"status": "ok", "tenant_id": wanted, "created": True, "matched_by": None}
        again = await idc.tnt_create(admin, "Other name", tenant_id=wanted)
        assert again == {"status": "ok", "tenant_id": wanted, "created": False, "matched_by": "tenant_id"}
        assert named["tenant_id"] != wanted
        ilk = await idc.register(admin, f"ilk:{uuid.uuid4()}", "system", wanted)
        assert ilk["status"] == "ok"
        with pytest.raises(IdentityCallError) as err:
            await idc.tnt_create(admin, "Bad", tenant_id="tnt:not-a-uuid")
        assert err.value.code == "INVALID_REQUEST"
    finally:
        await admin.close()


async def test_bad_payloads_get_the_original_error_codes(run_dir: Path, identity: IdentityProc,
                                                         identity_db: Db) -> None:
    io = await node(run_dir, "IO.web")
    desk = await node(run_dir, "SY.frontdesk.gov")
    try:
        tenant = await default_tenant(identity_db)
        cases: list[tuple[NodeSender, str, dict[str, Any], str]] = [
            (io, "ILK_PROVISION", {"ich_id": "nope", "channel_type": "web", "address": "x"}, "INVALID_REQUEST"),
            (io, "ILK_PROVISION", {"ich_id": f"ich:{uuid.uuid4()}", "channel_type": "web", "address": "x",
                                   "colour": "red"}, "INVALID_REQUEST"),
            (io, "ILK_PROVISION", {"ich_id": f"ich:{uuid.uuid4()}", "channel_type": "web", "address": "x",
                                   "tenant_id": f"tnt:{uuid.uuid4()}"}, "INVALID_TENANT"),
            (desk, "ILK_REGISTER", {"ilk_id": f"ilk:{uuid.uuid4()}", "ilk_type": "human", "tenant_id": tenant,
                                    "roles": ["Not A Tag!"]}, "VOCABULARY_INVALID"),
            (desk, "ILK_REGISTER", {"ilk_id": f"ilk:{uuid.uuid4()}", "ilk_type": "robot", "tenant_id": tenant},
             "INVALID_REQUEST"),
            (desk, "ILK_ADD_CHANNEL", {"ilk_id": f"ilk:{uuid.uuid4()}", "channel": {
                "ich_id": f"ich:{uuid.uuid4()}", "type": "web", "address": "y"}}, "ILK_NOT_FOUND"),
            (io, "NO_SUCH_ACTION", {}, "INVALID_REQUEST"),
        ]
        for sender, action, payload, code in cases:
            reply = await sender.request("SY.identity@t", payload, msg_type=wire.TYPE_SYSTEM, msg=action)
            assert reply.payload["status"] == "error", (action, payload)
            assert reply.payload["error_code"] == code, (action, payload, reply.payload)
            assert reply.meta.msg == ("SYSTEM_ERROR" if action == "NO_SUCH_ACTION" else f"{action}_RESPONSE")
        # A pending tenant blocks registration.
        pending = await idc.tnt_create(desk, "Acme", domain="acme.example")
        assert pending["created"] is True
        assert (await idc.tnt_create(desk, "ACME Inc", domain="ACME.example"))["matched_by"] == "domain"
        with pytest.raises(IdentityCallError) as err:
            await idc.register(desk, f"ilk:{uuid.uuid4()}", "human", pending["tenant_id"])
        assert err.value.code == "TENANT_PENDING"
    finally:
        await io.close()
        await desk.close()


async def test_a_failed_merge_leaves_database_and_shared_memory_unchanged(run_dir: Path, identity: IdentityProc,
                                                                         identity_db: Db) -> None:
    io = await node(run_dir, "IO.whatsapp")
    desk = await node(run_dir, "SY.frontdesk.gov")
    try:
        tenant = await default_tenant(identity_db)
        temp = await idc.provision_ilk(io, "whatsapp", "+1000")
        taken = await idc.provision_ilk(io, "whatsapp", "+2000")
        person = f"ilk:{uuid.uuid4()}"
        await idc.register(desk, person, "human", tenant, identification={"display_name": "P"})
        before_db = await db_state(identity_db)
        with identity_shm.IdentityRegionReader("t", run_dir=run_dir) as r:
            before_version = r.version()
        # 1. an invalid source (a complete ILK) is refused before anything is written
        with pytest.raises(IdentityCallError) as err:
            await idc.add_channel(desk, person, "web", "p-1", ich_id=f"ich:{uuid.uuid4()}",
                                  merge_from_ilk_id=person)
        assert err.value.code == "INVALID_MERGE_SOURCE"
        # 2. a merge whose later step fails (the new channel belongs to someone else) is rolled back whole
        with pytest.raises(IdentityCallError) as err:
            await idc.add_channel(desk, person, "whatsapp", "+2000",
                                  ich_id=idc.ich_for(tenant, "whatsapp", "+2000"), merge_from_ilk_id=temp["ilk_id"])
        assert err.value.code == "DUPLICATE_ICH"
        assert await db_state(identity_db) == before_db
        with identity_shm.IdentityRegionReader("t", run_dir=run_dir) as r:
            assert r.version() == before_version
            assert r.canonical(temp["ilk_id"]) == temp["ilk_id"]
            assert r.lookup_channel("whatsapp", "+1000", tenant).ilk_id == temp["ilk_id"]  # type: ignore[union-attr]
            assert r.lookup_channel("whatsapp", "+2000", tenant).ilk_id == taken["ilk_id"]  # type: ignore[union-attr]
    finally:
        await io.close()
        await desk.close()


async def test_restart_rebuilds_the_region_from_the_database(run_dir: Path, identity: IdentityProc,
                                                             identity_db: Db) -> None:
    io = await node(run_dir, "IO.whatsapp")
    try:
        tenant = await default_tenant(identity_db)
        made = [await idc.provision_ilk(io, "whatsapp", f"+55{i}") for i in range(5)]
    finally:
        await io.close()
    gen = identity.generation()
    assert identity.proc is not None
    identity.proc.kill()  # a crash: the region stays behind, owned by a dead pid
    identity.proc.wait()
    identity.start()
    assert identity.generation() == gen + 1, "the dead owner's region was replaced, not reused"
    with identity_shm.IdentityRegionReader("t", run_dir=run_dir) as r:
        for i, m in enumerate(made):
            assert r.lookup_channel("whatsapp", f"+55{i}", tenant).ilk_id == m["ilk_id"]  # type: ignore[union-attr]
        assert r.header().ilk_count == 5


async def test_router_routes_dst_null_by_identity(run_dir: Path, identity: IdentityProc, identity_db: Db) -> None:
    io = await node(run_dir, "IO.whatsapp")
    desk_sender, desk_rx = await connect(NodeConfig(name="SY.frontdesk.gov", run_dir=run_dir))
    orch = await node(run_dir, "SY.orchestrator")
    agent_sender, agent_rx = await connect(NodeConfig(name="AI.support", run_dir=run_dir))
    try:
        tenant = await default_tenant(identity_db)
        temp = await idc.provision_ilk(io, "whatsapp", "+777")
        agent = await idc.register(orch, f"ilk:{uuid.uuid4()}", "agent", tenant,
                                   identification={"node_name": "AI.support@t", "display_name": "support"})
        # a temporary ILK with dst null goes to the front desk, whatever dst_ilk says
        await io.send(None, {"type": "text", "content": "hola"},
                      meta=wire.Meta(type="user", src_ilk=temp["ilk_id"], dst_ilk=agent["ilk_id"]))
        got = await desk_rx.recv(timeout=5)
        assert got.payload["content"] == "hola" and got.meta.src_ilk == temp["ilk_id"]
        # once registered, dst_ilk is delivered to the agent node handling that ILK
        await idc.register(desk_sender, temp["ilk_id"], "human", tenant, identification={"display_name": "X"})
        await io.send(None, {"type": "text", "content": "again"},
                      meta=wire.Meta(type="user", src_ilk=temp["ilk_id"], dst_ilk=agent["ilk_id"]))
        got = await agent_rx.recv(timeout=5)
        assert got.payload["content"] == "again"
        # an alias is canonicalised in the forwarded meta
        other = await idc.provision_ilk(io, "telegram", "@x")
        await idc.add_channel(desk_sender, temp["ilk_id"], "web", "x-web", ich_id=f"ich:{uuid.uuid4()}",
                              merge_from_ilk_id=other["ilk_id"])
        await io.send(None, {"type": "text", "content": "alias"},
                      meta=wire.Meta(type="user", src_ilk=other["ilk_id"], dst_ilk=agent["ilk_id"]))
        got = await agent_rx.recv(timeout=5)
        assert got.payload["content"] == "alias" and got.meta.src_ilk == temp["ilk_id"]
        # nothing to resolve: the policy seam still answers
        reply = await io.request(None, {"x": 1}, raise_unreachable=False, timeout=5)
        assert reply.meta.msg == wire.UNREACHABLE and reply.payload["reason"] == wire.OPA_ERROR
    finally:
        for s in (io, desk_sender, orch, agent_sender):
            await s.close()


async def test_router_flag_names_the_front_desk_and_l3_outcomes_show_in_status_and_metrics(
        run_dir: Path, router_factory: Any, identity_db: Db) -> None:
    router = router_factory(extra=("--identity-frontdesk", "SY.desk"))
    proc = IdentityProc(run_dir, identity_db, extra=("--frontdesk", "SY.desk"))
    io = await node(run_dir, "IO.web")
    desk_sender, desk_rx = await connect(NodeConfig(name="SY.desk", run_dir=run_dir))
    try:
        temp = await idc.provision_ilk(io, "web", "visitor-1")
        await io.send(None, {"type": "text", "content": "hi"}, meta=wire.Meta(type="user", src_ilk=temp["ilk_id"]))
        got = await desk_rx.recv(timeout=5)
        assert got.payload["content"] == "hi" and got.routing.src_l2_name == "IO.web@t"
        # the configured desk is also the one SY.identity lets register
        await idc.register(desk_sender, temp["ilk_id"], "human", await default_tenant(identity_db))
        reply = await io.request(None, {"x": 1}, meta=wire.Meta(type="user", src_ilk=temp["ilk_id"]),
                                 raise_unreachable=False, timeout=5)
        assert reply.payload["reason"] == wire.OPA_ERROR, "a complete ILK without dst_ilk: no L3 decision"
        l3 = router.status()["l3"]
        assert l3["frontdesk"] == "SY.desk@t" and l3["region_open"] is True
        assert l3["outcomes"]["frontdesk"] == 1 and l3["outcomes"]["no_decision"] == 1
        text = router.metrics()
        assert 'fluxbee_router_l3_total{outcome="frontdesk"} 1' in text
        assert 'fluxbee_router_l3_total{outcome="no_decision"} 1' in text
        assert "fluxbee_router_l3_region_open 1" in text
    finally:
        await io.close()
        await desk_sender.close()
        assert proc.stop() == 0, proc.log()
