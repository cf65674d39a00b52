"""A replica SY.identity next to the primary: replication over the router, resync, NOT_PRIMARY.

Two hives cannot talk yet (there is no inter-hive gateway), so the replica runs
on the primary's router under another node name and writes the region of
another hive id (``--region-hive``): the same code path a replica on a worker
hive takes, with the primary reached by name through one router instead of two.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import Db, IdentityProc
from hive_harness import RouterProc, eventually, read_identity_region

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, connect
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.identity import client as idc
from fluxbee.identity.client import IdentityCallError
from fluxbee.identity.model import ProvisionReq
from fluxbee.identity.store import IdentityStore, StoreSettings

pytestmark = pytest.mark.integration

REPLICA = "SY.identity.replica"
T = TypeVar("T")


@pytest.fixture
def primary(run_dir: Path, router: RouterProc, identity_db: Db) -> Iterator[IdentityProc]:
    proc = IdentityProc(run_dir, identity_db, extra=("--sync-heartbeat", "0.2"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def replica(run_dir: Path, primary: IdentityProc) -> Iterator[IdentityProc]:
    region = f"r{uuid.uuid4().hex[:8]}"
    proc = IdentityProc(run_dir, None, primary="SY.identity@t", node_name=REPLICA, region_hive=region,
                        extra=("--sync-timeout", "1.5"))
    yield proc
    assert proc.stop() == 0, proc.log()
    assert not Path("/dev/shm" + identity_shm.region_name(region, run_dir)).exists(), "replica region left behind"


async def node(run_dir: Path, name: str) -> NodeSender:
    sender, _ = await connect(NodeConfig(name=name, run_dir=run_dir, connect_timeout=5))
    return sender


def in_region(replica: IdentityProc, read: Callable[[identity_shm.IdentityRegionReader], T]) -> T:
    """A consistent read of the replica's region (retried while a resync's rebuild holds it)."""
    return read_identity_region(replica.region_hive, replica.run_dir, read)


def replica_hit(replica: IdentityProc, ctype: str, address: str, tenant: str) -> str | None:
    hit = in_region(replica, lambda r: r.lookup_channel(ctype, address, tenant))
    return hit.ilk_id if hit is not None else None


async def default_tenant(db: Db) -> str:
    conn = await db.connect()
    try:
        return f"tnt:{await conn.fetchval('SELECT tenant_id FROM identity_tenants WHERE is_default')}"
    finally:
        await conn.close()


async def until(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float, what: str) -> T:
    """The first value of ``probe`` that is ``done``; AssertionError with the last one after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.05)


async def replica_metrics(sender: NodeSender) -> dict[str, Any]:
    return await idc.identity_metrics(sender, target=f"{REPLICA}@t")


async def test_writes_on_the_primary_appear_in_the_replica_region_and_writes_to_the_replica_get_not_primary(
        run_dir: Path, primary: IdentityProc, replica: IdentityProc, identity_db: Db) -> None:
    io = await node(run_dir, "IO.whatsapp")
    desk = await node(run_dir, "SY.frontdesk.gov")
    try:
        tenant = await default_tenant(identity_db)
        made = await idc.provision_ilk(io, "whatsapp", "+3411")
        await eventually(lambda: replica_hit(replica, "whatsapp", "+3411", tenant) == made["ilk_id"], 5,
                         "the provisioned channel in the replica's region")
        assert not in_region(replica, lambda r: r.header().is_primary), "the replica's region is a replica copy"
        info = in_region(replica, lambda r: r.resolve(made["ilk_id"]))
        assert info is not None and info.registration_status == "temporary"

        # a merge travels as one delta: alias, moved channel and deleted source together
        person = f"ilk:{uuid.uuid4()}"
        await idc.register(desk, person, "human", tenant, identification={"display_name": "P"})
        await idc.add_channel(desk, person, "web", "p-web", ich_id=f"ich:{uuid.uuid4()}",
                              merge_from_ilk_id=made["ilk_id"])

        def merged() -> bool:
            return (in_region(replica, lambda r: r.canonical(made["ilk_id"])) == person
                    and replica_hit(replica, "whatsapp", "+3411", tenant) == person
                    and replica_hit(replica, "web", "p-web", tenant) == person)
        await eventually(merged, 5, "the merge in the replica's region")

        # what routing policies read travels too: subtype, capabilities and roles of ILK_UPDATE
        orch = await node(run_dir, "SY.orchestrator")
        try:
            await idc.update_ilk(orch, person, human_subtype="internal", add_roles=["ops"],
                                 add_capabilities=["status_reader"])
        finally:
            await orch.close()

        def updated() -> bool:
            info = in_region(replica, lambda r: r.get_ilk(person))
            return info is not None and (info.human_subtype, info.roles, info.capabilities) == (
                "internal", ("ops",), ("status_reader",))
        await eventually(updated, 5, "the ILK_UPDATE in the replica's region")

        # writes sent to the replica: NOT_PRIMARY with the original's fields, plus where the primary is
        reply = await io.request(f"{REPLICA}@t", {"ich_id": f"ich:{uuid.uuid4()}", "channel_type": "sms",
                                                  "address": "+1"}, msg_type=wire.TYPE_SYSTEM, msg="ILK_PROVISION")
        assert reply.meta.msg == "ILK_PROVISION_RESPONSE"
        body = reply.payload
        assert body["status"] == "error" and body["error_code"] == "NOT_PRIMARY"
        assert body["action"] == "ILK_PROVISION" and body["replica_hive_id"] == "t"
        assert body["primary"] == "SY.identity@t" and body["primary_hive_id"] == "t" and body["message"]
        # authorisation still comes first on a replica
        with pytest.raises(IdentityCallError) as err:
            await idc.tnt_create(io, "Acme", target=f"{REPLICA}@t", fallback=None)
        assert err.value.code == "UNAUTHORIZED_REGISTRAR"
        # the SDK follows the named primary once
        again = await idc.provision_ilk(io, "sms", "+1", target=f"{REPLICA}@t")
        assert again["registration_status"] == "temporary"
        await eventually(lambda: replica_hit(replica, "sms", "+1", tenant) == again["ilk_id"], 5, "sms in replica")

        metrics = await replica_metrics(io)
        assert metrics["role"] == "replica" and metrics["sync"]["synced"] is True
        assert metrics["ilk_count"] == 2 and metrics["alias_count"] == 1 and metrics["tenant_count"] == 1
        assert metrics["sync"]["full_syncs"] == 1 and metrics["sync"]["resyncs"] == {}
        primary_metrics = await idc.identity_metrics(io)
        assert primary_metrics["subscribers"] == 1
        assert primary_metrics["published_version"] == metrics["sync"]["version"]
    finally:
        await io.close()
        await desk.close()


async def test_a_gap_in_the_delta_sequence_makes_the_replica_resync(
        run_dir: Path, primary: IdentityProc, replica: IdentityProc, identity_db: Db) -> None:
    io = await node(run_dir, "IO.web")
    try:
        tenant = await default_tenant(identity_db)
        # A write the primary never publishes (straight into the database): the sequence has a hole.
        store = await IdentityStore.open(StoreSettings(dsn=identity_db.dsn, database=identity_db.database))
        try:
            hidden, _ = await store.provision(ProvisionReq(ich_id=f"ich:{uuid.uuid4()}", channel_type="web",
                                                           address="hidden"))
        finally:
            await store.close()
        assert replica_hit(replica, "web", "hidden", tenant) is None
        seen = await idc.provision_ilk(io, "web", "seen")
        # The next delta skips a version: the replica resyncs and then shows both.
        await eventually(lambda: replica_hit(replica, "web", "hidden", tenant) == hidden["ilk_id"]
                         and replica_hit(replica, "web", "seen", tenant) == seen["ilk_id"], 5,
                         "the replica to resync after the gap")
        metrics = await replica_metrics(io)
        assert metrics["sync"]["resyncs"].get("gap", 0) >= 1, metrics
        assert metrics["sync"]["full_syncs"] >= 2
    finally:
        await io.close()


async def test_a_write_stuck_in_the_database_does_not_pass_for_a_silent_primary(
        run_dir: Path, primary: IdentityProc, replica: IdentityProc, identity_db: Db) -> None:
    """The primary keeps beating while a write waits on a row lock for longer than the replica's
    silence timeout (1.5 s here): the replica stays synced and takes the delta when the write lands."""
    io = await node(run_dir, "IO.web")
    blocker = await identity_db.connect()
    write: asyncio.Task[dict[str, Any]] | None = None
    try:
        tenant = await default_tenant(identity_db)
        start = (await replica_metrics(io))["sync"]
        assert start["synced"] is True
        # every write bumps identity_version: holding its row stalls the primary's next write mid-transaction
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT version FROM identity_version WHERE id = 1 FOR UPDATE")
        write = asyncio.create_task(idc.provision_ilk(io, "web", "stuck", timeout=60))
        try:
            await until(lambda: blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                identity_db.database), lambda n: n >= 1, 10, "the primary's write waiting on the lock")
            # beats spanning three silence timeouts (0.2 s apart), all while the write is stuck
            heard = (await until(lambda: replica_metrics(io), lambda m: not m["sync"]["synced"]
                                 or m["sync"]["heartbeats"] >= start["heartbeats"] + 23,
                                 30, "23 more heartbeats, or the replica giving up on its primary"))["sync"]
            assert not write.done()
            assert heard["synced"] is True and heard["resyncs"] == {}, heard
        finally:
            await lock.rollback()
        made = await write
        await eventually(lambda: replica_hit(replica, "web", "stuck", tenant) == made["ilk_id"], 10,
                         "the write's delta in the replica's region")
        after = (await replica_metrics(io))["sync"]
        assert after["full_syncs"] == start["full_syncs"] and after["resyncs"] == {}, after
    finally:
        if write is not None and not write.done():
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write
        await blocker.close()
        await io.close()


async def test_a_primary_restart_makes_the_replica_resync_including_what_changed_while_it_was_down(
        run_dir: Path, primary: IdentityProc, replica: IdentityProc, identity_db: Db) -> None:
    io = await node(run_dir, "IO.web")
    try:
        tenant = await default_tenant(identity_db)
        before = await idc.provision_ilk(io, "web", "before")
        await eventually(lambda: replica_hit(replica, "web", "before", tenant) == before["ilk_id"], 5, "before")
        assert primary.proc is not None
        primary.proc.send_signal(signal.SIGKILL)  # a crash: no goodbye, deltas in flight lost
        primary.proc.wait()
        # while the primary is down the replica keeps serving lookups from its region
        assert replica_hit(replica, "web", "before", tenant) == before["ilk_id"]
        reply = await io.request(f"{REPLICA}@t", {"ich_id": f"ich:{uuid.uuid4()}", "channel_type": "web",
                                                  "address": "down"}, msg_type=wire.TYPE_SYSTEM,
                                 msg="ILK_PROVISION")
        assert reply.payload["error_code"] == "NOT_PRIMARY"
        # the replica notices the silence (no heartbeat for --sync-timeout) and stops trusting its stream position
        deadline = time.monotonic() + 5
        while (await replica_metrics(io))["sync"]["synced"]:
            assert time.monotonic() < deadline, "the replica did not notice the primary's silence"
            await asyncio.sleep(0.05)
        # something changes while the primary is away (another writer on the database)
        store = await IdentityStore.open(StoreSettings(dsn=identity_db.dsn, database=identity_db.database))
        try:
            during, _ = await store.provision(ProvisionReq(ich_id=f"ich:{uuid.uuid4()}", channel_type="web",
                                                           address="during"))
        finally:
            await store.close()
        primary.start()
        await eventually(lambda: replica_hit(replica, "web", "during", tenant) == during["ilk_id"], 10,
                         "the replica to resync from the restarted primary")
        after = await idc.provision_ilk(io, "web", "after")
        await eventually(lambda: replica_hit(replica, "web", "after", tenant) == after["ilk_id"], 5,
                         "deltas from the new primary")
        metrics = await replica_metrics(io)
        resyncs = metrics["sync"]["resyncs"]
        assert resyncs.get("silence", 0) >= 1 and resyncs.get("epoch", 0) >= 1, metrics
        assert metrics["sync"]["full_syncs"] >= 2 and metrics["ilk_count"] == 3
    finally:
        await io.close()


async def test_after_a_router_restart_primary_and_replica_reconnect_and_the_replica_keeps_up(
        run_dir: Path, router: RouterProc, primary: IdentityProc, replica: IdentityProc, identity_db: Db) -> None:
    tenant = await default_tenant(identity_db)
    assert router.stop() == 0
    router.start()  # both SY.identity processes reconnect with their persistent UUIDs
    await eventually(lambda: {"SY.identity@t", f"{REPLICA}@t"} <= {n["name"] for n in router.status()["nodes"]}, 10,
                     "both SY.identity processes to reconnect")
    io = await node(run_dir, "IO.web")
    try:
        made = await idc.provision_ilk(io, "web", "after-router-restart", timeout=10)
        await eventually(lambda: replica_hit(replica, "web", "after-router-restart", tenant) == made["ilk_id"], 10,
                         "the write after the router restart in the replica's region")
        metrics = await replica_metrics(io)
        assert metrics["sync"]["synced"] is True
        # gap-free deltas on the same subscription, or a full resync: either way the versions agree
        assert metrics["sync"]["version"] == (await idc.identity_metrics(io))["published_version"]
    finally:
        await io.close()
