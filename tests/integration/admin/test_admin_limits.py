"""Admin answers and writes that would outgrow a 128 KiB frame, against a real ``fluxbee up`` hive."""

from __future__ import annotations

import asyncio
import json
import resource
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import AdminHive
from hive_harness import RawPeer, wait_until

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, connect


@pytest.fixture(scope="module")
def nofile() -> None:
    """Room for 900 sockets here and 900 in the hive's router, which inherits this limit when it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))


def test_the_node_list_shows_all_900_connected_nodes(nofile: None, hive: AdminHive) -> None:
    """SY.admin asks the router for its status in pages: 900 nodes (~150 KB) no longer drop its connection."""
    socket_path = next((hive.run_dir / "routers").glob("*.sock"))
    names = [f"WF.fleet.worker.with.a.long.name.n{i:04d}" for i in range(900)]
    peers = []
    try:
        for name in names:
            peer = RawPeer(socket_path)
            peers.append(peer)
            peer.hello(name)
        wanted = {f"{n}@local" for n in names}
        seen: list[int] = []

        def listing() -> dict[str, Any] | None:
            # A status request already in flight when the last HELLOs landed (SY.admin shares one among
            # concurrent readers) may answer a moment-old list; the next one must hold every node.
            code, doc = hive.call("GET", "/hives/local/nodes")
            assert code == 200, doc
            listed = {n["name"] for n in doc["payload"]["nodes"]}
            seen.append(len(listed & wanted))
            return doc if wanted <= listed else None

        doc = wait_until(listing, timeout=30, what="all 900 nodes in the node list", step=0.2)
        assert doc["payload"]["inventory_source"] == "router", seen
        code, doc = hive.call("GET", "/hive/status")  # SY.admin's own connection survived and still answers
        assert code == 200 and doc["payload"]["router_connected"] is True and doc["payload"]["node_count"] >= 900
    finally:
        for peer in peers:
            peer.close()


async def _provision(hive: AdminHive, count: int) -> set[str]:
    """``count`` ILKs through SY.identity, as an IO node provisions them (one WhatsApp channel each)."""
    sender, _ = await connect(NodeConfig(name="IO.whatsapp.limits", run_dir=hive.run_dir, reconnect=False))
    made: set[str] = set()
    try:
        async def one(n: int) -> None:
            reply = await sender.request("SY.identity", {"ich_id": f"ich:{uuid.uuid4()}", "channel_type": "whatsapp",
                                                         "address": f"+3460{n:07d}"},
                                         msg_type=wire.TYPE_SYSTEM, msg="ILK_PROVISION", timeout=20)
            assert reply.payload["status"] == "ok", reply.payload
            made.add(reply.payload["ilk_id"])

        for start in range(0, count, 25):
            await asyncio.gather(*(one(n) for n in range(start, min(count, start + 25))))
    finally:
        await sender.close()
    return made


async def test_the_ilk_listing_pages_with_limit_and_cursor_and_a_plain_get_answers_every_ilk(
        nofile: None, hive: AdminHive) -> None:
    made = await _provision(hive, 500)  # ~215 KB of ILK rows: beyond one frame

    def get(path: str) -> tuple[int, dict[str, object], float]:
        started = time.monotonic()
        code, doc = hive.call("GET", path)
        return code, doc, time.monotonic() - started

    code, doc, took = await asyncio.to_thread(get, "/hives/local/identity/ilks?limit=5")
    assert code == 200, doc
    page = doc["payload"]
    assert isinstance(page, dict) and len(page["ilks"]) == 5 and page["count"] == 5
    assert isinstance(page["next_cursor"], str) and took < 3, f"limit=5 took {took:.1f} s"

    listed: list[str] = [r["ilk_id"] for r in page["ilks"]]
    cursor = page["next_cursor"]
    pages = 1
    while cursor is not None:
        code, doc, took = await asyncio.to_thread(get, f"/hives/local/identity/ilks?limit=1000&cursor={cursor}")
        assert code == 200 and took < 3, (code, doc, took)
        page = doc["payload"]
        assert isinstance(page, dict)
        assert len(json.dumps(page["ilks"], separators=(",", ":")).encode()) <= wire.PAYLOAD_BUDGET
        listed += [r["ilk_id"] for r in page["ilks"]]
        cursor = page["next_cursor"]
        pages += 1
    assert pages >= 3, "limit=1000 must still be cut into pages that fit in a frame"
    assert len(listed) == len(set(listed)) and made <= set(listed)

    code, doc, took = await asyncio.to_thread(get, "/hives/local/identity/ilks")
    assert code == 200 and took < 5, (code, took)
    whole = doc["payload"]
    assert isinstance(whole, dict)
    assert [r["ilk_id"] for r in whole["ilks"]] == listed and whole["count"] == len(listed)
    assert whole["next_cursor"] is None

    for bad in ("cursor=not-a-cursor", "limit=0", "limit=1001", "limit=ten"):
        code, doc, _ = await asyncio.to_thread(get, f"/hives/local/identity/ilks?{bad}")
        assert (code, doc["error_code"]) == (400, "INVALID_REQUEST"), (bad, doc)


def test_a_node_config_too_large_for_a_frame_is_refused_and_nothing_is_written(nofile: None, hive: AdminHive) -> None:
    code, doc = hive.call("POST", "/hives/local/nodes", {"node_name": "WF.limits.cfg", "runtime": "fluxbee.echo",
                                                         "config": {"a": 1}})
    assert code == 200, doc
    wait_until(lambda: hive.call("GET", "/hives/local/nodes/WF.limits.cfg/config")[0] == 200, 15, "the config")
    _, before = hive.call("GET", "/hives/local/nodes/WF.limits.cfg/config")
    path = Path(before["payload"]["path"])
    on_disk = path.read_bytes()
    history = hive.call("GET", "/hives/local/deployments?limit=500")[1]["payload"]["entries"]

    code, doc = hive.call("PUT", "/hives/local/nodes/WF.limits.cfg/config", {"blob": "x" * 900_000})
    assert (code, doc["error_code"]) == (413, "PAYLOAD_TOO_LARGE"), doc
    assert "900" in doc["error_detail"] and str(wire.PAYLOAD_BUDGET - 1024) in doc["error_detail"]
    assert "nothing written" in doc["error_detail"]
    _, after = hive.call("GET", "/hives/local/nodes/WF.limits.cfg/config")
    assert after["payload"]["config"] == before["payload"]["config"]
    assert after["payload"]["config_version"] == before["payload"]["config_version"]
    assert path.read_bytes() == on_disk
    assert hive.call("GET", "/hives/local/deployments?limit=500")[1]["payload"]["entries"] == history

    # Just under the limit still goes through: the check is the frame, not an arbitrary smaller cap.
    code, doc = hive.call("PUT", "/hives/local/nodes/WF.limits.cfg/config", {"blob": "y" * 100_000})
    assert code == 200, doc
    assert hive.call("GET", "/hives/local/nodes/WF.limits.cfg/config")[1]["payload"]["config"]["blob"] == "y" * 100_000

    code, doc = hive.call("POST", "/hives/local/nodes", {"node_name": "WF.limits.huge", "runtime": "fluxbee.echo",
                                                         "config": {"blob": "z" * 900_000}})
    assert (code, doc["error_code"]) == (413, "PAYLOAD_TOO_LARGE"), doc
    assert hive.call("GET", "/hives/local/nodes/WF.limits.huge/status")[1]["error_code"] == "NODE_NOT_FOUND"
    assert hive.call("DELETE", "/hives/local/nodes/WF.limits.cfg", {"purge_instance": True})[0] == 200
