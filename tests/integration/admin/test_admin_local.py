"""Every admin endpoint on the local backend, against a real ``fluxbee up`` hive."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import uuid
from typing import Any

import pytest
from conftest import AdminHive, running_hive
from hive_harness import eventually, wait_until

from fluxbee.admin.client import admin_command
from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, connect

TENANT = "tnt:12345678-1234-1234-1234-123456789abc"


SPAWN_KEYS = {"status", "state", "target", "hive", "node_name", "runtime", "version", "requested_version", "unit",
              "visible_in_router", "config", "identity"}


def _ilk_rows(hive: AdminHive, node_name: str) -> list[dict[str, Any]]:
    code, doc = hive.call("GET", "/hives/local/identity/ilks")
    assert code == 200, doc
    return [r for r in doc["payload"]["ilks"] if r["node_name"] == node_name]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_seed_readme_curl_sequence_spawns_a_node_with_its_ilk_and_reads_status_config_and_state(
        hive: AdminHive) -> None:
    """The seed README's sequence as written (AI.my.node.1, an unknown tenant) on a fresh hive: this is the
    module's first test, so the tenant does not exist yet and is created."""
    script = f"""set -euo pipefail
BASE="{hive.base}"
TARGET_HIVE="local"
RUNTIME_NAME="fluxbee.echo"
TENANT_ID="{TENANT}"
NODE_NAME="AI.my.node.1"
curl -sS -X POST "$BASE/hives/$TARGET_HIVE/nodes" \\
-H "Content-Type: application/json" \\
-d "{{
\\"node_name\\":\\"$NODE_NAME\\",
\\"runtime\\":\\"$RUNTIME_NAME\\",
\\"runtime_version\\":\\"current\\",
\\"tenant_id\\":\\"$TENANT_ID\\",
\\"config\\":{{
\\"model\\":\\"gpt-5\\",
\\"temperature\\":0.7
}}
}}"
echo
sleep 1
curl -sS "$BASE/hives/$TARGET_HIVE/nodes/$NODE_NAME/status"
echo
curl -sS "$BASE/hives/$TARGET_HIVE/nodes/$NODE_NAME/config"
echo
curl -sS "$BASE/hives/$TARGET_HIVE/nodes/$NODE_NAME/state"
"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    spawn, status, config, state = (json.loads(line) for line in out.stdout.strip().splitlines())
    assert spawn["status"] == "ok", spawn
    p = spawn["payload"]
    assert set(p) == SPAWN_KEYS and p["node_name"] == "AI.my.node.1@local"
    config_path = str(hive.run_dir / "nodes" / "AI.my.node.1@local" / "config.json")
    # a summary, as the original: the full config is GET …/config's
    assert p["config"] == {"status": "ok", "path": config_path, "created": True, "config_version": 1}
    ilk = p["identity"]["register"]["ilk_id"]
    assert p["identity"] == {
        "requested_hive": "local", "identity_primary_hive_id": "local", "identity_target": "SY.identity@local",
        "register": {"status": "ok", "ilk_id": ilk, "ilk_type": "agent", "target": "SY.identity@local",
                     "tenant_id": TENANT, "created": True, "tenant_created": True},
        "update": None}
    assert re.fullmatch(r"ilk:[0-9a-f-]{36}", ilk)
    st = status["payload"]["node_status"]
    assert st["runtime"]["name"] == "fluxbee.echo" and st["runtime"]["resolved_version"] == "0.1.0"
    assert st["lifecycle_state"] in ("RUNNING", "STARTING")
    assert st["identity"] == {"ilk_id": ilk, "tenant_id": TENANT}
    cfg = config["payload"]["config"]
    assert config["payload"]["path"] == config_path and config["payload"]["config_version"] == 1
    assert cfg["model"] == "gpt-5" and cfg["temperature"] == 0.7 and cfg["tenant_id"] == TENANT
    assert cfg["_system"]["runtime"] == "fluxbee.echo" and cfg["_system"]["runtime_version"] == "0.1.0"
    assert cfg["_system"]["ilk_id"] == ilk and cfg["_system"]["tenant_id"] == TENANT
    assert state["status"] == "ok" and state["payload"]["state"] is None
    assert state["payload"]["path"] == str(hive.run_dir / "nodes" / "AI.my.node.1@local" / "state.json")
    [row] = _ilk_rows(hive, "AI.my.node.1@local")
    assert (row["ilk_id"], row["ilk_type"], row["registration_status"], row["tenant_id"]) == (
        ilk, "agent", "complete", TENANT)
    # the node runs with its ILK in the config it reads
    wait_until(lambda: hive.call("GET", "/hives/local/nodes/AI.my.node.1/status")[1]["payload"]["node_status"][
        "lifecycle_state"] == "RUNNING", 15, "the node to run")
    code, _ = hive.call("DELETE", "/hives/local/nodes/AI.my.node.1", {"purge_instance": True})
    assert code == 200
    assert [r["ilk_id"] for r in _ilk_rows(hive, "AI.my.node.1@local")] == [ilk], "a kill leaves the ILK (as upstream)"


def test_spawning_a_node_again_links_its_existing_ilk(hive: AdminHive) -> None:
    body = {"node_name": "WF.ilk.again", "runtime": "fluxbee.echo", "tenant_id": TENANT}
    code, doc = hive.call("POST", "/hives/local/nodes", body)
    assert code == 200, doc
    first = doc["payload"]["identity"]["register"]
    assert first["status"] == "ok" and first["created"] is True and first["ilk_type"] == "system"
    assert hive.call("DELETE", "/hives/local/nodes/WF.ilk.again", {"purge_instance": True})[0] == 200
    code, doc = hive.call("POST", "/hives/local/nodes", body)
    assert code == 200, doc
    again = doc["payload"]["identity"]["register"]
    assert again["status"] == "ok" and again["ilk_id"] == first["ilk_id"] and again["created"] is False
    assert again["tenant_created"] is False
    assert [r["ilk_id"] for r in _ilk_rows(hive, "WF.ilk.again@local")] == [first["ilk_id"]]
    code, doc = hive.call("GET", "/hives/local/nodes/WF.ilk.again/status")
    assert doc["payload"]["node_status"]["identity"]["ilk_id"] == first["ilk_id"]
    assert hive.call("DELETE", "/hives/local/nodes/WF.ilk.again", {"purge_instance": True})[0] == 200


def test_a_spawn_identity_refuses_writes_nothing_and_says_why(hive: AdminHive) -> None:
    """The node's ILK is complete in one tenant: spawning it again in another is refused by SY.identity."""
    body = {"node_name": "WF.ilk.moved", "runtime": "fluxbee.echo", "tenant_id": TENANT}
    assert hive.call("POST", "/hives/local/nodes", body)[0] == 200
    assert hive.call("DELETE", "/hives/local/nodes/WF.ilk.moved", {"purge_instance": True})[0] == 200
    other = f"tnt:{uuid.uuid4()}"
    code, doc = hive.call("POST", "/hives/local/nodes", {**body, "tenant_id": other})
    assert (code, doc["error_code"]) == (409, "IDENTITY_REGISTER_FAILED"), doc
    assert "INVALID_TENANT_TRANSITION" in doc["error_detail"]
    register = doc["payload"]["identity"]["register"]
    assert register["status"] == "error" and register["error_code"] == "INVALID_TENANT_TRANSITION"
    code, doc = hive.call("GET", "/hives/local/nodes/WF.ilk.moved/status")
    assert (code, doc["error_code"]) == (404, "NODE_NOT_FOUND")
    assert not (hive.run_dir / "nodes" / "WF.ilk.moved@local").exists()
    # the two tenants of one node are refused before anything is asked
    code, doc = hive.call("POST", "/hives/local/nodes", {**body, "config": {"tenant_id": other}})
    assert (code, doc["error_code"]) == (400, "INVALID_REQUEST") and "differ" in doc["error_detail"]


async def test_the_state_of_a_connected_node_without_state_is_null_and_an_unknown_node_is_not_found(
        hive: AdminHive) -> None:
    sender, _ = await connect(NodeConfig(name="WF.adhoc.state", run_dir=hive.run_dir, reconnect=False))
    try:
        def listed() -> bool:
            _, d = hive.call("GET", "/hives/local/nodes")
            return "WF.adhoc.state@local" in {n["name"] for n in d["payload"]["nodes"]}

        await asyncio.to_thread(wait_until, listed, 10, "the ad-hoc node in the node list")
        code, doc = await asyncio.to_thread(hive.call, "GET", "/hives/local/nodes/WF.adhoc.state/state")
        path = hive.run_dir / "nodes" / "WF.adhoc.state@local" / "state.json"
        assert code == 200, doc
        assert doc["payload"] == {"status": "ok", "target": "local", "hive": "local",
                                  "node_name": "WF.adhoc.state@local", "path": str(path), "state": None}
        path.parent.mkdir(parents=True)
        path.write_text('{"turns": 3}')
        code, doc = await asyncio.to_thread(hive.call, "GET", "/hives/local/nodes/WF.adhoc.state/state")
        assert code == 200 and doc["payload"]["state"] == {"turns": 3}
    finally:
        await sender.close()
    code, doc = await asyncio.to_thread(hive.call, "GET", "/hives/local/nodes/WF.never.seen/state")
    assert (code, doc["error_code"]) == (404, "NODE_NOT_FOUND")


def test_with_identity_disabled_a_spawn_works_and_says_why_no_ilk_was_registered() -> None:
    with running_hive(identity=False) as h:
        code, doc = h.call("POST", "/hives/local/nodes", {"node_name": "AI.my.node.1", "runtime": "fluxbee.echo",
                                                          "tenant_id": TENANT})
        assert code == 200, doc
        register = doc["payload"]["identity"]["register"]
        assert register["status"] == "skipped" and register["ilk_id"] is None
        assert register["error_code"] == "NODE_NOT_FOUND" and "not connected" in register["reason"]
        code, doc = h.call("GET", "/hives/local/nodes/AI.my.node.1/status")
        assert doc["payload"]["node_status"]["identity"] == {"ilk_id": None, "tenant_id": TENANT}
        code, doc = h.call("GET", "/hives/local/nodes/AI.my.node.1/config")
        assert "ilk_id" not in doc["payload"]["config"]["_system"]


def test_node_lifecycle_through_the_api(hive: AdminHive) -> None:
    code, doc = hive.call("POST", "/hives/local/nodes", {"node_name": "WF.life.one", "runtime": "fluxbee.echo",
                                                         "config": {"a": 1}})
    assert code == 200, doc
    def running() -> bool:
        c, d = hive.call("GET", "/hives/local/nodes/WF.life.one/status")
        return c == 200 and d["payload"]["node_status"]["lifecycle_state"] == "RUNNING"
    wait_until(running, 15, "the spawned node to run")
    code, doc = hive.call("GET", "/hives/local/nodes/WF.life.one/status")
    st = doc["payload"]["node_status"]
    assert st["health_state"] == "HEALTHY" and st["health_source"] == "NODE_REPORTED" and st["status_version"] >= 1
    code, doc = hive.call("GET", "/hives/local/nodes")
    assert "WF.life.one@local" in {n["name"] for n in doc["payload"]["nodes"]}
    # errors with specific codes
    assert hive.call("POST", "/hives/local/nodes", {"node_name": "WF.life.one", "runtime": "fluxbee.echo"})[0] == 409
    code, doc = hive.call("POST", "/hives/local/nodes", {"node_name": "WF.x.y", "runtime": "no.such"})
    assert (code, doc["error_code"]) == (404, "RUNTIME_NOT_AVAILABLE")
    code, doc = hive.call("POST", "/hives/local/nodes", {"node_name": "WF.x.y", "runtime": "fluxbee.echo",
                                                         "config": {"_system": {}}})
    assert (code, doc["error_code"]) == (422, "INVALID_CONFIG")
    # config, state, messages
    code, doc = hive.call("PUT", "/hives/local/nodes/WF.life.one/config?notify=false", {"b": 2})
    assert code == 200 and doc["payload"]["config_version"] == 2 and doc["payload"]["notify_status"] == "skipped"
    code, doc = hive.call("GET", "/hives/local/nodes/WF.life.one/config")
    assert doc["payload"]["config"]["a"] == 1 and doc["payload"]["config"]["b"] == 2
    assert doc["payload"]["config"]["_system"]["config_version"] == 2
    code, doc = hive.call("GET", "/hives/local/nodes/WF.life.one/state")
    assert code == 200 and doc["payload"]["state"] is None
    code, doc = hive.call("POST", "/hives/local/nodes/WF.echo/messages", {"msg": "LLM", "payload": {"text": "hi"}})
    assert code == 200 and wire.is_uuid(doc["payload"]["trace_id"])
    code, doc = hive.call("PUT", "/hives/local/nodes/WF.echo/config", {"x": 1})
    assert (code, doc["error_code"]) == (409, "NODE_NOT_MANAGED")
    # kill
    code, doc = hive.call("DELETE", "/hives/local/nodes/WF.life.one", {"purge_instance": True})
    assert code == 200 and doc["payload"]["instance_purged"] is True
    wait_until(lambda: hive.call("GET", "/hives/local/nodes/WF.life.one/status")[1]["error_code"] == "NODE_NOT_FOUND",
               10, "the killed node to leave the router")
    code, doc = hive.call("GET", "/hives/local/deployments?limit=20&category=node")
    actions = [e["action"] for e in doc["payload"]["entries"]]
    assert "run_node" in actions and "kill_node" in actions


def test_routes_and_vpns_reach_the_router(hive: AdminHive) -> None:
    code, doc = hive.call("POST", "/routes", {"prefix": "AI.sales.", "action": "DROP"})
    assert code == 200, doc
    assert hive.call("POST", "/hives/local/routes", {"prefix": "AI.sales.", "action": "DROP"})[0] == 409
    code, doc = hive.call("GET", "/hives/local/routes")
    assert [r["prefix"] for r in doc["payload"]["routes"]] == ["AI.sales."]
    assert hive.call("DELETE", "/routes?prefix=AI.sales.")[0] == 200
    assert hive.call("DELETE", "/hives/local/routes/AI.sales.")[0] == 404
    assert hive.call("POST", "/hives/local/vpns", {"pattern": "WF.q", "vpn_id": 3})[0] == 200
    assert hive.call("DELETE", "/hives/local/vpns/WF.q")[0] == 200
    code, doc = hive.call("PUT", "/config/vpns", {"vpns": [{"pattern": "WF.echo", "match_kind": "PREFIX",
                                                            "vpn_id": 20}]})
    assert code == 200, doc
    code, doc = hive.call("GET", "/vpns")
    assert doc["payload"]["vpns"][0]["vpn_id"] == 20
    code, doc = hive.call("PUT", "/config/routes", {"routes": [], "vpns": [], "version": 1000})
    assert code == 200, doc
    code, doc = hive.call("PUT", "/config/routes", {"routes": [], "version": 5})
    assert (code, doc["error_code"]) == (409, "VERSION_MISMATCH")


def test_hives_versions_runtimes_and_catalogue(hive: AdminHive) -> None:
    assert hive.call("GET", "/health") == (200, {"status": "ok"})
    code, doc = hive.call("GET", "/hive/status")
    assert code == 200 and doc["payload"]["hive_id"] == "local" and doc["payload"]["router_connected"]
    # A hive started without --wan-listen has no gateway: it cannot link a worker, and registers nothing.
    code, doc = hive.call("POST", "/hives", {"hive_id": "worker-220", "address": "192.168.8.220"})
    assert (code, doc["error_code"]) == (503, "MISSING_WAN_LISTEN"), doc
    assert hive.call("POST", "/hives", {"hive_id": "bad id", "address": "x"})[1]["error_code"] == "INVALID_HIVE_ID"
    assert hive.call("POST", "/hives", {"hive_id": "w", "address": "x:99999"})[1]["error_code"] == "INVALID_ADDRESS"
    code, doc = hive.call("GET", "/hives")
    assert {h["hive_id"] for h in doc["payload"]["hives"]} == {"local"}
    assert hive.call("GET", "/hives/worker-220")[0] == 404
    code, doc = hive.call("GET", "/hives/worker-220/nodes")  # neither registered nor reached by a link
    assert (code, doc["error_code"]) == (404, "NOT_FOUND"), doc
    assert hive.call("DELETE", "/hives/local")[0] == 400
    assert hive.call("DELETE", "/hives/worker-220")[0] == 404
    code, doc = hive.call("GET", "/hives/local/versions")
    rt = doc["payload"]["hive"]["runtimes"]["runtimes"]["fluxbee.echo"]
    assert rt["current"] == "0.1.0" and rt["readiness"]["0.1.0"]["start_sh_executable"] is True
    assert (hive.run_dir / "dist/runtimes/fluxbee.echo/0.1.0/bin/start.sh").exists()
    code, doc = hive.call("GET", "/versions")
    assert doc["payload"]["hives"][0]["hive_id"] == "local"
    code, doc = hive.call("GET", "/hives/local/runtimes/fluxbee.echo")
    assert code == 200 and doc["payload"]["usage"]["in_use"] is True
    code, doc = hive.call("GET", "/admin/actions")
    assert "run_node" in {a["action"] for a in doc["payload"]["actions"]}
    assert hive.call("GET", "/admin/actions/nope")[0] == 404


def test_bad_input_gets_a_4xx_envelope_with_a_reason(hive: AdminHive) -> None:
    cases = [
        ("POST", "/hives/local/nodes", b"{not json", 400, "INVALID_JSON"),
        ("POST", "/hives/local/nodes", b"[1]", 400, "INVALID_REQUEST"),
        ("POST", "/hives/local/nodes", b'{"node_name": 5, "runtime": "fluxbee.echo"}', 400, "INVALID_REQUEST"),
        ("POST", "/hives/local/nodes", b'{"node_name": "WF.a.b", "runtime": "x", "bogus": 1}', 400,
         "INVALID_REQUEST"),
        ("POST", "/hives/local/nodes", b"{" + b'"a":"' + b"x" * (2 << 20) + b'"}', 413, "PAYLOAD_TOO_LARGE"),
        ("GET", "/hives/local/deployments?limit=abc", None, 400, "INVALID_REQUEST"),
        ("GET", "/no/such/path", None, 404, "NOT_FOUND"),
        ("PATCH", "/hives", None, 405, "METHOD_NOT_ALLOWED"),
    ]
    for method, path, raw, status, code in cases:
        got, doc = hive.call(method, path, raw=raw)
        assert (got, doc["status"], doc["error_code"]) == (status, "error", code), (path, doc)
        assert doc["error_detail"]


async def test_admin_command_runs_the_same_handlers_over_the_router(hive: AdminHive) -> None:
    stranger, _ = await connect(NodeConfig(name="WF.admin.stranger", run_dir=hive.run_dir, reconnect=False,
                                           credential_file=None))
    try:  # ADMIN_COMMAND is privileged (README: Trust model): refused without a grant, by the router
        out = await admin_command(stranger, "list_admin_actions", request_id="r0")
        assert (out["status"], out["error_code"], out["request_id"]) == ("error", "FORBIDDEN", "r0")
    finally:
        await stranger.close()
    # An operator grants a tool ADMIN_COMMAND with a claims file of its own in the hive's claims dir.
    token = hive.run_dir / "admin-client.token"
    token.write_text(secrets.token_hex(32))
    digest = hashlib.sha256(token.read_text().encode()).hexdigest()
    (hive.run_dir / "claims" / "WF.admin.client").write_text(
        json.dumps({"credential_sha256": [digest], "grants": ["ADMIN_COMMAND"]}))
    await asyncio.sleep(1.5)  # the router polls its claims dir every second
    sender, _ = await connect(NodeConfig(name="WF.admin.client", run_dir=hive.run_dir, reconnect=False,
                                         credential_file=token))
    try:
        out = await admin_command(sender, "list_admin_actions", request_id="r1")
        assert out["status"] == "ok" and out["request_id"] == "r1"
        assert len(out["payload"]["actions"]) == len(hive.call("GET", "/admin/actions")[1]["payload"]["actions"])
        out = await admin_command(sender, "get_node_status", target="local", params={"node_name": "WF.echo"})
        assert out["payload"]["node_status"]["lifecycle_state"] == "RUNNING"
        out = await admin_command(sender, "list_nodes")
        assert (out["status"], out["error_code"]) == ("error", "INVALID_REQUEST")
        out = await admin_command(sender, "nope")
        assert out["error_code"] == "UNKNOWN_ACTION"
        out = await admin_command(sender, "run_node", target="local", params={"node_name": "WF.x", "runtime": 1})
        assert out["error_code"] == "INVALID_REQUEST"
    finally:
        await sender.close()


async def test_control_config_get_and_set_reach_the_node_and_return_its_answer(hive: AdminHive) -> None:
    def answer(msg: wire.Message) -> None:
        if msg.meta.msg in (wire.CONFIG_GET, wire.CONFIG_SET):
            holder[0].reply_nowait(msg, {"status": "ok", "seen": msg.meta.msg, "body": msg.payload},
                                   msg=wire.CONFIG_RESPONSE)

    holder = []
    sender, _ = await connect(NodeConfig(name="WF.cfg.probe", run_dir=hive.run_dir, reconnect=False,
                                         on_message=answer, handle_config=False))
    holder.append(sender)
    try:
        code, doc = await asyncio.to_thread(hive.call, "POST", "/hives/local/nodes/WF.cfg.probe/control/config-set",
                                            {"key": "v"})
        assert code == 200, doc
        p = doc["payload"]
        assert p["node_ok"] is True and p["response_msg"] == "CONFIG_RESPONSE" and p["response"]["body"]["key"] == "v"
        code, doc = await asyncio.to_thread(hive.call, "POST", "/hives/local/nodes/WF.cfg.probe/control/config-get")
        assert doc["payload"]["response"]["seen"] == "CONFIG_GET"
        code, doc = await asyncio.to_thread(hive.call, "POST", "/hives/local/nodes/WF.none.here/control/config-get")
        assert (code, doc["error_code"]) == (404, "NODE_NOT_FOUND")
    finally:
        await sender.close()


async def test_a_killed_node_process_is_recorded_as_drift(hive: AdminHive) -> None:
    code, doc = await asyncio.to_thread(hive.call, "POST", "/hives/local/nodes",
                                        {"node_name": "WF.drift.one", "runtime": "fluxbee.echo"})
    assert code == 200, doc

    def pid() -> int | None:
        c, d = hive.call("GET", "/hives/local/nodes/WF.drift.one/status")
        st = d["payload"]["node_status"]
        return st["process"].get("pid") if st["lifecycle_state"] == "RUNNING" else None

    first = await eventually(pid, 15, "the node to run")
    await asyncio.sleep(1.5)  # let the monitor see it once
    os.kill(first, signal.SIGKILL)

    def alert() -> bool:
        c, d = hive.call("GET", "/hives/local/drift-alerts?kind=node_restarted")
        return any(e["detail"]["node_name"] == "WF.drift.one@local" for e in d["payload"]["entries"])

    await eventually(alert, 15, "a node_restarted drift alert")
    await asyncio.to_thread(hive.call, "DELETE", "/hives/local/nodes/WF.drift.one", {"purge_instance": True})


async def test_identity_and_module_endpoints_go_through_sy_identity(hive: AdminHive) -> None:
    """ILK rows and details, and prompt modules, as SY.identity stores them (asked as SY.admin)."""
    sender, _ = await connect(NodeConfig(name="IO.whatsapp.test", run_dir=hive.run_dir, reconnect=False))
    try:
        reply = await sender.request("SY.identity", {"ich_id": f"ich:{uuid.uuid4()}", "channel_type": "whatsapp",
                                                     "address": "+34600000001"},
                                     msg_type=wire.TYPE_SYSTEM, msg="ILK_PROVISION", timeout=10)
    finally:
        await sender.close()
    assert reply.payload["status"] == "ok", reply.payload
    ilk_id = reply.payload["ilk_id"]
    code, doc = await asyncio.to_thread(hive.call, "GET", "/hives/local/identity/ilks")
    assert code == 200 and doc["action"] == "list_ilks", doc
    row = next(r for r in doc["payload"]["ilks"] if r["ilk_id"] == ilk_id)
    assert {"ilk_id", "ilk_type", "registration_status", "tenant_id", "tenant_name", "display_name", "node_name",
            "channel_count", "channels", "deleted_at_ms"} <= set(row)
    assert row["registration_status"] == "temporary" and row["channel_count"] == 1
    assert row["channels"][0]["address"] == "+34600000001" and row["deleted_at_ms"] is None
    code, doc = await asyncio.to_thread(hive.call, "GET", f"/hives/local/identity/ilks/{ilk_id}")
    assert code == 200 and doc["payload"]["ilk_id"] == ilk_id and doc["payload"]["alias_resolved"] is False
    assert doc["payload"]["tenant"]["tenant_id"] == row["tenant_id"]
    code, doc = await asyncio.to_thread(hive.call, "GET", f"/hives/local/identity/ilks/ilk:{uuid.uuid4()}")
    assert (code, doc["error_code"]) == (404, "NOT_FOUND")
    code, doc = await asyncio.to_thread(hive.call, "GET", "/hives/local/identity/ilks/not-an-ilk")
    assert (code, doc["error_code"]) == (400, "INVALID_REQUEST")
    assert (await asyncio.to_thread(hive.call, "GET", "/hives/worker-9/identity/ilks"))[1]["error_code"] == "NOT_FOUND"

    name = f"tone-{uuid.uuid4().hex[:6]}"
    body = {"prompt_text": "You speak Spanish.", "description": "language", "category": "lang"}
    code, doc = await asyncio.to_thread(hive.call, "POST", f"/modules/{name}/1.0.0", body)
    assert code == 200 and doc["payload"]["created"] is True, doc
    digest = doc["payload"]["sha256"]
    assert len(digest) == 64 and digest != hashlib.sha256(b"other").hexdigest()
    code, doc = await asyncio.to_thread(hive.call, "POST", f"/modules/{name}/1.0.0", body)
    assert code == 200 and doc["payload"]["created"] is False  # same text again: a no-op
    code, doc = await asyncio.to_thread(hive.call, "POST", f"/modules/{name}/1.0.0", {"prompt_text": "other"})
    assert (code, doc["error_code"]) == (409, "MODULE_EXISTS")
    assert (await asyncio.to_thread(hive.call, "POST", f"/modules/{name}/2.0.0", {"prompt_text": "v2"}))[0] == 200
    code, doc = await asyncio.to_thread(hive.call, "GET", "/modules")
    assert code == 200 and name in doc["payload"]["modules"]
    code, doc = await asyncio.to_thread(hive.call, "GET", f"/modules/{name}")
    assert code == 200 and doc["payload"]["versions"] == ["1.0.0", "2.0.0"]
    code, doc = await asyncio.to_thread(hive.call, "GET", f"/modules/{name}/1.0.0")
    module = doc["payload"]["module"]
    assert code == 200 and module["prompt_text"] == "You speak Spanish." and module["sha256"] == digest
    assert (await asyncio.to_thread(hive.call, "GET", f"/modules/{name}/9.9"))[1]["error_code"] == "NOT_FOUND"
    assert (await asyncio.to_thread(hive.call, "GET", "/modules/nope-x"))[0] == 404
    code, doc = await asyncio.to_thread(hive.call, "POST", f"/modules/{name}/3.0.0", {"text": "wrong field"})
    assert (code, doc["error_code"]) == (400, "INVALID_REQUEST")
    code, doc = await asyncio.to_thread(hive.call, "GET", "/deployments?category=modules")
    published = [(e["detail"]["version"], e["result"]) for e in doc["payload"]["entries"]
                 if e["action"] == "publish_module" and e["detail"]["name"] == name]
    assert ("2.0.0", "ok") in published and ("1.0.0", "error") in published
