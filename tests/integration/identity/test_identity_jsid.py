"""SY.identity publishes ``/jsr-identity-<hive>`` in the original layout, read by an independent reader
(``tests/jsid_reader.py``, written from the documented layout) as a node built with the original SDKs would."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jsid_reader
import pytest
from conftest import Db, IdentityProc
from hive_harness import RouterProc, wait_until
from test_identity_service import default_tenant, node

from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.identity import client as idc

pytestmark = pytest.mark.integration


async def test_original_sdk_readers_resolve_channels_committed_by_a_real_sy_identity(
        run_dir: Path, router: RouterProc, identity_db: Db) -> None:
    hive = f"jsid-{uuid.uuid4().hex[:8]}"  # a hive of its own: the original's name is not scoped by run dir
    name = f"/jsr-identity-{hive}"
    path = Path("/dev/shm" + name)
    proc = IdentityProc(run_dir, identity_db, region_hive=hive)
    try:
        first = jsid_reader.read(name).header
        assert (first["magic"], first["version"], first["hive_id"], first["owner_pid"]) == (
            0x4A534944, 3, hive, proc.pid)
        io = await node(run_dir, "IO.whatsapp")
        try:
            tenant = await default_tenant(identity_db)
            made = await idc.provision_ilk(io, "WhatsApp", "+34600111222")
            ours = identity_shm.IdentityRegionReader(hive, run_dir=run_dir)
            try:
                hit = ours.lookup_channel("whatsapp", "+34600111222", tenant)
                assert hit is not None and hit.ilk_id == made["ilk_id"]
                snap = jsid_reader.read(name)
                assert snap.lookup(tenant, "WHATSAPP", " +34600111222") == (hit.ilk_id, hit.ich_id), \
                    "the original-layout region shows the same committed change as ours"
                assert snap.header["ilk_count"] >= 1 and snap.header["ich_count"] >= 1
                assert any(t["tenant_id"] == tenant for t in snap.tenants)
                assert ours.header().data_version >= 2
            finally:
                ours.close()
            metrics = await idc.identity_metrics(io)
            assert metrics["jsr_region"]["published"] is True and metrics["jsr_region"]["name"] == name
            assert metrics["jsr_region"]["dropped"] == {}
        finally:
            await io.close()

        beat = jsid_reader.read(name).header["heartbeat"]
        deadline = time.monotonic() + 10
        while jsid_reader.read(name).header["heartbeat"] == beat:
            assert time.monotonic() < deadline, "the heartbeat of the original-layout region never moved"
            time.sleep(0.2)

        assert proc.stop() == 0, proc.log()
        assert not path.exists(), "the original-layout region is removed when SY.identity stops"

        proc.start()  # a restart rebuilds both regions from PostgreSQL
        wait_until(lambda: path.exists() and jsid_reader.read(name).header["owner_pid"] == proc.pid, 20,
                   "the restarted SY.identity to publish the original-layout region")
        hit2 = jsid_reader.read(name).lookup(tenant, "whatsapp", "+34600111222")
        assert hit2 is not None and hit2[0] == made["ilk_id"]
    finally:
        proc.stop()
    assert not path.exists(), f"{path} left behind"
