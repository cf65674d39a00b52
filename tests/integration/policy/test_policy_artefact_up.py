"""The mother's compiled artefact reaching a worker hive, as a user runs it: two ``fluxbee up`` hives
linked over loopback mTLS, the admin HTTP API, the policy regions read back.

The mother compiles with the real ``opa`` (``$FLUXBEE_OPA``); the worker has no ``opa`` at all, so it
could only make a regorus artefact itself: its router running the WebAssembly module with the
mother's SHA-256 shows that the bytes crossed.  A WebAssembly artefact is larger than one frame, so
it crossed in chunks (``POLICY_ARTEFACT_GET``).  Then: a staged compile staged on both and applied
without a second fetch, a rollback reaching the worker as the old bytes, the worker down during an
apply catching up by pulling, the chunk requests' refusals over the hive socket, and a write naming
the worker alone, compiled on the mother and taken by the worker.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hive_harness import fluxbee_argv, wait_until
from test_hives_linked import LINK_TIMEOUT, Hive

from fluxbee.dataplane.policy import Artefact
from fluxbee.dataplane.sdk import NodeConfig, connect
from fluxbee.dataplane.shm.policy import PolicyRegionReader
from fluxbee.dataplane.wire import PAYLOAD_BUDGET

POLICY = ('package router\n\ntarget := "WF.echo@{hive}" if {{\n\tinput.meta.action == "echo"\n}}\n\n'
          'allow if {{\n\tinput.meta.action != "{deny}"\n}}\n')


@dataclass
class EnvHive(Hive):
    """A hive started with its own environment changes (None: the variable is removed)."""

    env: dict[str, str | None] = field(default_factory=dict)

    def start(self) -> None:
        saved = {k: os.environ.get(k) for k in self.env}
        try:
            for key, value in self.env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            super().start()
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fba", dir="/tmp"))
    path.chmod(0o755)
    subprocess.run(fluxbee_argv("wan", "ca", str(path / "ca")), check=True, capture_output=True, text=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _region(h: Hive) -> tuple[int, str, Artefact]:
    """(version, sha256 of the artefact bytes, the artefact) the hive's policy region holds."""
    reader = PolicyRegionReader.open(h.hive_id, h.run_dir)
    try:
        snap = reader.read()
        assert snap is not None
        assert hashlib.sha256(snap.artefact).hexdigest() == snap.sha256
        return snap.version, snap.sha256, Artefact.from_bytes(snap.artefact)
    finally:
        reader.close()


def _status(h: Hive) -> dict[str, Any]:
    return h.ok("GET", "/opa/status")


def _ready(h: Hive) -> bool:
    return h.call("GET", "/opa/status")[0] == 200


def _stop_all(*hives: Hive) -> None:
    for h in reversed(hives):
        with contextlib.suppress(AssertionError):
            h.stop()


async def _chunk_requests(h: Hive, version: int, size: int) -> dict[str, str]:
    """POLICY_ARTEFACT_GET over the hive socket from a system node an operator declared; the codes."""
    token = h.root / "probe.token"
    token.write_text(secrets.token_hex(32))
    digest = hashlib.sha256(token.read_text().encode()).hexdigest()
    (h.run_dir / "claims" / "SY.probe").write_text(json.dumps({"credential_sha256": [digest], "grants": []}))
    await asyncio.sleep(1.5)  # the router polls its claims dir every second
    probe, _ = await connect(NodeConfig(name="SY.probe", run_dir=h.run_dir, reconnect=False, credential_file=token))
    codes: dict[str, str] = {}
    try:
        for name, body in {"first": {"version": version, "offset": 0, "length": 1000},
                           "past the end": {"version": version, "offset": size, "length": 10},
                           "negative length": {"version": version, "offset": 0, "length": -1},
                           "huge length": {"version": version, "offset": 0, "length": 1 << 40},
                           "negative offset": {"version": version, "offset": -5, "length": 10},
                           "unknown version": {"version": 999, "offset": 0, "length": 10},
                           "no version": {"offset": 0, "length": 10}}.items():
            reply = await probe.request(f"SY.policy@{h.hive_id}", body, msg_type="system",
                                        msg="POLICY_ARTEFACT_GET", timeout=30)
            assert reply.meta.msg == "POLICY_ARTEFACT_GET_RESPONSE"
            payload = reply.payload
            codes[name] = payload.get("error_code") or f"{payload['status']}:{payload['size']}:{payload['offset']}"
        # only SY.admin (this hive's or the mother's) may make a hive take an artefact
        reply = await probe.request(f"SY.policy@{h.hive_id}", {"version": 99, "sha256": "a" * 64, "size": 10,
                                                                "engine": "wasm", "apply": True},
                                    msg_type="system", msg="POLICY_TAKE", timeout=30)
        codes["take"] = reply.payload.get("error_code")
    finally:
        await probe.close()
    return codes


def test_a_worker_without_opa_runs_the_mothers_wasm_artefact(root: Path, opa: str) -> None:
    m = EnvHive("M", root / "M", root / "ca", identity=False, env={"FLUXBEE_OPA": opa})
    w = EnvHive("W", root / "W", root / "ca", mother="M", identity=False,
                env={"FLUXBEE_OPA": None, "PATH": "/usr/bin:/bin"})
    for h in (m, w):
        h.root.mkdir(exist_ok=True)
    assert shutil.which("opa", path="/usr/bin:/bin") is None
    started: list[Hive] = []
    try:
        for h in (m, w):
            h.start()
            started.append(h)
        m.ok("POST", "/hives", {"hive_id": "W", "address": w.wan})
        wait_until(lambda: m.connected("W"), LINK_TIMEOUT, "M linked to W")
        wait_until(lambda: _ready(m) and _ready(w), 30, "SY.policy on both hives")
        # the worker alone would only make a regorus artefact
        own = w.ok("POST", "/opa/policy/check", {"rego": POLICY.format(hive="W", deny="x")})
        assert own["engine"] == "regorus", own

        done = m.ok("POST", "/opa/policy", {"rego": POLICY.format(hive="M", deny="stop")})
        assert done["pending_hives"] == [] and done["failed_hives"] == [], done
        by_hive = {r["hive"]: r for r in done["responses"]}
        assert by_hive["M"]["engine"] == "wasm" and by_hive["W"]["engine"] == "wasm", done
        assert by_hive["W"]["fetched"] is True and by_hive["W"]["router"]["status"] == "applied", by_hive["W"]
        v1, sha1, art1 = _region(m)
        assert (v1, sha1, art1.engine) == (1, by_hive["M"]["hash"].removeprefix("sha256:"), "wasm")
        wv, wsha, wart = _region(w)
        assert (wv, wsha) == (1, sha1) and wart == art1 and wart.wasm is not None
        size = len(art1.to_bytes())
        assert size > PAYLOAD_BUDGET, f"the artefact ({size} bytes) should need several frames"
        assert (_status(w)["router"] or {}).get("version") == 1

        # staged on the mother, staged on the worker (same bytes); the apply needs no second fetch
        staged = m.ok("POST", "/opa/policy/compile", {"rego": POLICY.format(hive="M2", deny="halt")})
        on_w = next(r for r in staged["responses"] if r["hive"] == "W")
        assert (on_w["status"], on_w["version"], on_w["staged"]) == ("ok", 2, True), staged
        assert _status(w)["staged"]["sha256"] == _status(m)["staged"]["sha256"]
        assert _region(w)[0] == 1  # staging publishes nothing
        applied = m.ok("POST", "/opa/policy/apply", {"version": 2})
        on_w = next(r for r in applied["responses"] if r["hive"] == "W")
        assert (on_w["version"], on_w["fetched"], on_w["applied"]) == (2, False, True), applied
        assert _region(w)[:2] == _region(m)[:2] and _region(w)[0] == 2

        # a rollback on the mother: version 3 with version 1's bytes, on the worker too
        back = m.ok("POST", "/opa/policy/rollback", {})
        assert (back["version"], back["pending_hives"]) == (3, []), back
        wv, _, wart = _region(w)
        assert wv == 3 and wart == art1 and _status(w)["current"]["origin"] == "rollback:1"

        # the worker down during an apply: pending, then it pulls the artefact once it is back
        w.stop()
        code, doc = m.call("POST", "/opa/policy", {"rego": POLICY.format(hive="M4", deny="quit")})
        assert code == 202 and doc["payload"]["pending_hives"] == ["W"], doc
        w.start()
        wait_until(lambda: _ready(w) and (_status(w)["current"] or {}).get("version") == 4, LINK_TIMEOUT,
                   "W catching up with its mother's version 4")
        wv, wsha, wart = _region(w)
        assert (wv, wsha, wart.engine) == (4, _region(m)[1], "wasm")
        wait_until(lambda: (_status(w)["router"] or {}).get("version") == 4, 30, "W's router running version 4")

        codes = asyncio.run(_chunk_requests(m, 4, len(_region(m)[2].to_bytes())))
        assert codes == {"first": f"ok:{len(_region(m)[2].to_bytes())}:0", "past the end": "BAD_OFFSET",
                         "negative length": "INVALID_REQUEST", "huge length": "INVALID_REQUEST",
                         "negative offset": "INVALID_REQUEST", "unknown version": "VERSION_NOT_FOUND",
                         "no version": "INVALID_REQUEST", "take": "FORBIDDEN"}, codes
        assert _status(m)["last_version"] == 4

        # a write naming the worker alone: compiled on the mother (nothing written there), taken by the
        # worker under its own next version
        only_w = m.ok("POST", "/hives/W/opa/policy", {"rego": POLICY.format(hive="W5", deny="no")})
        assert only_w["expected_hives"] == ["W"] and only_w["version"] == 5, only_w
        (on_w,) = only_w["responses"]
        assert (on_w["engine"], on_w["fetched"], on_w["router"]["status"]) == ("wasm", True, "applied"), on_w
        wv, wsha, wart = _region(w)
        assert (wv, wsha, wart.engine) == (5, on_w["sha256"], "wasm")
        assert wart.source == POLICY.format(hive="W5", deny="no")
        assert _status(m)["last_version"] == 4 and _region(m)[0] == 4
    finally:
        _stop_all(*started)
