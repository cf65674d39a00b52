"""The policy lifecycle as a user drives it: ``fluxbee up`` hives, the admin HTTP API and ``fluxbee policy``.

One hive for the single-hive round trip (stage, apply, rollback, check, bad bodies, a restart);
then a mother and a linked worker for an apply that reaches both, and one made while the worker is
down, which names it as pending, and which the worker takes from its mother once it is back.
Identity is off (``FLUXBEE_UP_IDENTITY=0``): SY.policy does not need it.  The router's answers
(OPA_RELOAD_RESPONSE, its status) are checked, and the policy region is read back to see that what
SY.policy answered was really published.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hive_harness import fluxbee_argv, wait_until
from test_hives_linked import LINK_TIMEOUT, Hive

from fluxbee.admin.client import admin_command
from fluxbee.dataplane.policy import Artefact
from fluxbee.dataplane.sdk import NodeConfig, connect
from fluxbee.dataplane.shm.policy import PolicyRegionReader
from fluxbee.dataplane.wire import Meta

POLICY = 'package router\n\ntarget := "WF.echo@{hive}" if {{\n\tinput.meta.action == "echo"\n}}\n'
BAD = 'package router\n\ntarget := "x" if {\n\tinput.meta.action ==\n}\n'


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbp", dir="/tmp"))
    path.chmod(0o755)
    subprocess.run(fluxbee_argv("wan", "ca", str(path / "ca")), check=True, capture_output=True, text=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _hive(root: Path, name: str, mother: str | None = None) -> Hive:
    (root / name).mkdir(exist_ok=True)
    return Hive(name, root / name, root / "ca", mother=mother, identity=False)


@contextlib.contextmanager
def running(*hives: Hive) -> Iterator[None]:
    started: list[Hive] = []
    try:
        for h in hives:
            h.start()
            started.append(h)
        yield
    finally:
        for h in reversed(started):
            with contextlib.suppress(AssertionError):
                h.stop()


def _policy_ready(h: Hive) -> bool:
    return h.call("GET", "/opa/status")[0] == 200


def _region(h: Hive) -> tuple[int, str, str]:
    """(version, hash, source) of what the hive's policy region holds."""
    reader = PolicyRegionReader.open(h.hive_id, h.run_dir)
    try:
        snap = reader.read()
        assert snap is not None
        return snap.version, f"sha256:{snap.sha256}", Artefact.from_bytes(snap.artefact).source
    finally:
        reader.close()


async def _send_by_policy(h: Hive, count: int = 1) -> None:
    sender, _ = await connect(NodeConfig(name="WF.probe", run_dir=h.run_dir))
    try:
        for i in range(count):
            await sender.send(None, {"hello": i}, meta=Meta(type="user", action="echo"))
        await sender.router_status()  # a round trip: the router has read them all
    finally:
        await sender.close()


def _cli(h: Hive, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": "/nonexistent"}
    return subprocess.run(fluxbee_argv("policy", "--url", f"http://127.0.0.1:{h.admin_port}", *args),
                          capture_output=True, text=True, timeout=120, env=env)


def test_one_hive_round_trip_with_the_api_and_the_cli(root: Path) -> None:
    a = _hive(root, "P")
    rego = root / "p.rego"
    rego.write_text(POLICY.format(hive="P"))
    with running(a):
        wait_until(lambda: _policy_ready(a), 30, "SY.policy answering")
        # stage with the CLI: version 1, nothing current yet
        staged = _cli(a, "--json", "compile", str(rego))
        assert staged.returncode == 0, staged.stderr
        out = json.loads(staged.stdout)
        assert out["version"] == 1 and out["responses"][0]["staged"] is True and out["pending_hives"] == []
        status = a.ok("GET", "/opa/status")
        assert status["current"] is None and status["staged"]["version"] == 1

        # bad Rego: COMPILE_ERROR with line and column, and no version taken
        code, doc = a.call("POST", "/opa/policy/compile", {"rego": BAD})
        assert (code, doc["error_code"]) == (422, "COMPILE_ERROR"), doc
        assert doc["payload"]["line"] == 5 and isinstance(doc["payload"]["column"], int), doc
        bad_file = root / "bad.rego"
        bad_file.write_text(BAD)
        failed = _cli(a, "compile", str(bad_file))
        assert failed.returncode == 1 and "COMPILE_ERROR" in failed.stderr and "line 5" in failed.stderr
        assert a.ok("GET", "/opa/status")["last_version"] == 1
        missing = _cli(a, "compile", str(root / "nope.rego"))
        assert missing.returncode == 2 and "cannot read the policy file" in missing.stderr, missing.stderr
        not_json = _cli(a, "check", "--input", str(bad_file))
        assert not_json.returncode == 2 and "is not JSON" in not_json.stderr, not_json.stderr
        down = subprocess.run(fluxbee_argv("policy", "--url", "http://127.0.0.1:9", "status"), capture_output=True,
                              text=True, timeout=60)
        assert down.returncode == 2 and "cannot reach" in down.stderr, down.stderr

        # bad bodies: refused before anything is compiled or written
        for body, code_wanted, error in (({}, 400, "COMPILE_ERROR"), ({"rego": 5}, 400, "INVALID_REQUEST"),
                                         ({"rego": "x", "bogus": 1}, 400, "INVALID_REQUEST"),
                                         ({"rego": "x" * 200_000}, 413, "PAYLOAD_TOO_LARGE")):
            code, doc = a.call("POST", "/opa/policy", body)
            assert (code, doc["error_code"]) == (code_wanted, error), (body if len(str(body)) < 80 else "big", doc)
        code, doc = a.call("POST", "/opa/policy/apply", {"version": "1"})
        assert (code, doc["error_code"]) == (400, "INVALID_REQUEST"), doc
        code, doc = a.call("POST", "/opa/policy/apply", {"version": 9})
        assert (code, doc["error_code"]) == (409, "VERSION_MISMATCH"), doc
        assert a.ok("GET", "/opa/status")["last_version"] == 1
        code, doc = a.call("POST", "/opa/policy/rollback", {})
        assert (code, doc["error_code"]) == (409, "NO_BACKUP"), doc

        # apply the staged version: current, and in the region under the hash SY.policy reports
        applied = a.ok("POST", "/opa/policy/apply", {})
        mine = applied["responses"][0]
        assert applied["version"] == 1 and mine["applied"] is True
        assert _region(a)[:2] == (1, mine["hash"])
        assert mine["router"]["status"] == "applied", mine["router"]  # the router's OPA_RELOAD_RESPONSE
        router = a.ok("GET", "/opa/status")["router"]
        assert (router["version"], router["hash"], router["status"]) == (1, mine["hash"], "loaded"), router
        assert a.ok("GET", "/opa/decisions")["decisions"] == []  # nothing decided yet

        # check: evaluates against the current policy or given Rego, takes no version
        checked = a.ok("POST", "/opa/policy/check", {"against": "current", "input": {"meta": {"action": "echo"}}})
        assert checked["decision"]["target"] == "WF.echo@P" and checked["check_only"] is True
        other = a.ok("POST", "/opa/policy/check", {"rego": POLICY.format(hive="Q"), "input": {"meta": {"action":
                                                                                                    "echo"}}})
        assert other["decision"]["target"] == "WF.echo@Q"
        code, doc = a.call("POST", "/opa/policy/check", {"rego": BAD})
        assert (code, doc["error_code"], doc["payload"]["line"]) == (422, "COMPILE_ERROR", 5), doc

        # compile + apply a second version, then roll back: the first artefact as version 3
        rego.write_text(POLICY.format(hive="Z"))
        second = _cli(a, "compile", "--apply", str(rego))
        assert second.returncode == 0 and "version 2" in second.stdout, second.stdout + second.stderr
        assert _region(a)[0] == 2
        back = a.ok("POST", "/opa/policy/rollback", {})
        assert (back["version"], back["responses"][0]["restored_version"]) == (3, 1)
        assert _region(a)[0] == 3 and _region(a)[2] == POLICY.format(hive="P")
        got = a.ok("GET", "/opa/policy")
        assert got["rego"] == POLICY.format(hive="P") and got["current"]["origin"] == "rollback:1"
        assert got["applied_versions"] == [1, 2, 3]
        shown = _cli(a, "status")
        assert shown.returncode == 0 and "current: 3" in shown.stdout, shown.stdout

    # a restart: the versions continue and the current artefact is in the region again
    with running(a):
        wait_until(lambda: _policy_ready(a), 30, "SY.policy answering after the restart")
        wait_until(lambda: _region(a)[0] == 3, 30, "the current policy published again")
        wait_until(lambda: (a.ok("GET", "/opa/status")["router"] or {}).get("version") == 3, 30,
                   "the restarted router running version 3")
        assert a.ok("GET", "/opa/status")["last_version"] == 3
        assert a.ok("POST", "/opa/policy/compile", {"rego": POLICY.format(hive="P")})["version"] == 4


async def _over_the_socket(h: Hive) -> None:
    # a tool an operator granted ADMIN_COMMAND runs the same opa_* actions over the router
    token = h.root / "tool.token"
    token.write_text(secrets.token_hex(32))
    digest = hashlib.sha256(token.read_text().encode()).hexdigest()
    (h.run_dir / "claims" / "WF.policy.tool").write_text(
        json.dumps({"credential_sha256": [digest], "grants": ["ADMIN_COMMAND"]}))
    await asyncio.sleep(1.5)  # the router polls its claims dir every second
    tool, _ = await connect(NodeConfig(name="WF.policy.tool", run_dir=h.run_dir, reconnect=False,
                                       credential_file=token))
    try:
        out = await admin_command(tool, "opa_compile", params={"rego": POLICY.format(hive="S")}, timeout=60)
        assert out["status"] == "ok" and out["payload"]["version"] == 1, out
        out = await admin_command(tool, "opa_compile", params={"rego": BAD}, timeout=60)
        assert out["error_code"] == "COMPILE_ERROR" and out["payload"]["line"] == 5, out
        out = await admin_command(tool, "opa_get_status", target=h.hive_id)
        assert out["payload"]["staged"]["version"] == 1 and out["payload"]["last_version"] == 1, out
        # SY.policy itself believes no name: only SY.admin may change the policy, whoever asks
        reply = await tool.request(f"SY.policy@{h.hive_id}", {"rego": POLICY.format(hive="S"), "apply": True},
                                   msg_type="system", msg="POLICY_COMPILE", timeout=30)
        assert (reply.meta.msg, reply.payload["error_code"]) == ("POLICY_COMPILE_RESPONSE", "FORBIDDEN"), reply
    finally:
        await tool.close()
    assert h.ok("GET", "/opa/status")["last_version"] == 1


def test_admin_command_and_the_service_s_own_check_of_the_sender(root: Path) -> None:
    a = _hive(root, "S")
    with running(a):
        wait_until(lambda: _policy_ready(a), 30, "SY.policy answering")
        asyncio.run(_over_the_socket(a))


def test_a_dst_null_message_is_decided_by_the_applied_policy_and_audited(root: Path) -> None:
    a = _hive(root, "D")
    with running(a):
        wait_until(lambda: _policy_ready(a), 30, "SY.policy answering")
        assert a.ok("POST", "/opa/policy", {"rego": POLICY.format(hive="D")})["responses"][0]["router"]["status"] \
            == "applied"
        asyncio.run(_send_by_policy(a, 30))
        decisions = wait_until(lambda: a.ok("GET", "/opa/decisions")["decisions"], 15, "a decision")
        assert decisions[-1]["policy_version"] == 1 and decisions[-1]["resolved"] == "WF.echo@D", decisions
        # repeats of one message: the first evaluated, the rest routed by the fast lane and audited as
        # aggregates that say how many; every one of the 30 is counted
        assert sum(d["count"] for d in decisions) == 30 and any(d["count"] > 1 for d in decisions), decisions
        assert {(d["result"], d["resolved"]) for d in decisions} == {("routed", "WF.echo@D")}


def test_an_apply_on_the_mother_reaches_the_worker_or_names_it_pending(root: Path) -> None:
    m = _hive(root, "M")
    w = _hive(root, "W", mother="M")
    with running(m, w):
        m.ok("POST", "/hives", {"hive_id": "W", "address": w.wan})
        wait_until(lambda: m.connected("W"), LINK_TIMEOUT, "M linked to W")
        wait_until(lambda: _policy_ready(m) and _policy_ready(w), 30, "SY.policy on both hives")
        done = m.ok("POST", "/opa/policy", {"rego": POLICY.format(hive="M")})
        assert done["expected_hives"] == ["M", "W"] and done["pending_hives"] == [], done
        assert {r["hive"]: (r["status"], r["version"]) for r in done["responses"]} == {"M": ("ok", 1),
                                                                                     "W": ("ok", 1)}
        on_w = next(r for r in done["responses"] if r["hive"] == "W")
        assert _region(w)[:2] == (1, on_w["hash"]) and on_w["router"]["status"] == "applied", on_w
        assert m.ok("GET", "/hives/W/opa/status")["current"]["version"] == 1  # read over the links
        # SY.policy takes changes from its own hive's SY.admin and its mother's only: W's admin
        # may not change the mother's policy, and M's SY.policy says so (nothing staged there)
        code, doc = w.call("POST", "/hives/M/opa/policy", {"rego": POLICY.format(hive="W")})
        assert (code, doc["error_code"]) == (403, "FORBIDDEN"), doc
        assert m.ok("GET", "/opa/status")["last_version"] == 1

        w.stop()
        code, doc = m.call("POST", "/opa/policy", {"rego": POLICY.format(hive="N")})
        assert code == 202 and doc["status"] == "sync_pending", doc
        payload: dict[str, Any] = doc["payload"]
        assert payload["version"] == 2 and payload["pending_hives"] == ["W"], payload
        assert _region(m)[0] == 2
        assert next(r for r in payload["responses"] if r["hive"] == "W")["status"] == "pending"

        # back up, W's SY.policy asks its mother for the current policy and takes version 2
        w.start()
        wait_until(lambda: _policy_ready(w) and (w.ok("GET", "/opa/status")["current"] or {}).get("version") == 2,
                   LINK_TIMEOUT, "W catching up with its mother's version 2")
        assert _region(w)[0] == 2 and _region(w)[2] == POLICY.format(hive="N")
        assert w.ok("GET", "/opa/status")["router"]["version"] == 2

        # on a worker, a write without a hive is for the worker alone
        own = w.ok("POST", "/opa/policy", {"rego": POLICY.format(hive="W")})
        assert (own["expected_hives"], own["version"]) == (["W"], 3), own
        assert m.ok("GET", "/opa/status")["last_version"] == 2
