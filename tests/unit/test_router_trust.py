"""The trust model's pure parts: claims files, the claim check, privileged messages, local credentials."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import msgspec
import pytest

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import trust
from fluxbee.supervisor import credentials

TOKEN = "ab" * 32


def claims_of(tmp_path: Path, files: dict[str, object]) -> trust.Claims:
    for name, doc in files.items():
        (tmp_path / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return trust.Claims(trust.load_claims_dir(tmp_path))


def test_a_claimed_name_is_proven_by_credential_uid_or_gid_and_nothing_else(tmp_path: Path) -> None:
    claims = claims_of(tmp_path, {"WF.echo": {"credential_sha256": [trust.token_sha256(TOKEN)]},
                                  "WF.ops": {"uids": [1001], "gids": [2002], "grants": ["CONFIG_CHANGED"]}})
    stranger = trust.PeerCred(pid=9, uid=0, gid=0)  # root proves nothing by itself
    assert trust.Claims.check(claims, "WF.free", stranger, None) == trust.Verdict(ok=True, claimed=False)
    assert claims.check("WF.echo", stranger, trust.token_sha256(TOKEN)).ok
    refused = claims.check("WF.echo", stranger, trust.token_sha256("wrong"))
    assert not refused.ok and refused.detail.startswith("NAME_CLAIMED")
    assert not claims.check("WF.echo", stranger, None).ok
    assert claims.check("WF.ops", trust.PeerCred(1, 1001, 5), None).grants == frozenset({"CONFIG_CHANGED"})
    assert claims.check("WF.ops", trust.PeerCred(1, 5, 2002), None).ok
    assert not claims.check("SY.anything", stranger, trust.token_sha256(TOKEN)).ok  # SY.* without a file
    assert claims.is_claimed("RT.gateway") and claims.is_claimed("SY.x") and not claims.is_claimed("WF.free")


def test_privileged_messages_need_a_proven_system_name_or_a_grant() -> None:
    assert trust.may_send(wire.CONFIG_CHANGED, "SY.admin", True, frozenset())
    assert not trust.may_send(wire.CONFIG_CHANGED, "SY.admin", False, frozenset())
    assert not trust.may_send(wire.ADMIN_COMMAND, "WF.app", True, frozenset({"CONFIG_CHANGED"}))
    assert trust.may_send(wire.ADMIN_COMMAND, "WF.app", True, frozenset({"ADMIN_COMMAND"}))
    assert trust.may_send("ILK_GET", "WF.app", False, frozenset())


@pytest.mark.parametrize(("doc", "error"), [
    ("{not json", "not JSON"),
    ([], "expected a JSON object"),
    ({"credential_sha256": ["ABC"]}, "64 lowercase hex"),
    ({"uids": ["0"]}, "uids must be a list of whole numbers"),
    ({"uids": [True]}, "uids must be a list of whole numbers"),
    ({"gids": [-1]}, "between 0 and 2^32-1"),
    ({"grants": ["kill_node"]}, "grants may only name"),
    ({"credentials": []}, "unknown field"),
])
def test_a_bad_claims_file_is_refused_naming_the_file(tmp_path: Path, doc: object, error: str) -> None:
    (tmp_path / "WF.ok").write_text("{}")
    (tmp_path / "WF.bad").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(trust.ClaimsError, match=re.escape(error)) as err:
        trust.load_claims_dir(tmp_path)
    assert "WF.bad" in str(err.value)


def test_a_configmap_volume_is_read_through_its_symlinks_and_dot_names_are_skipped(tmp_path: Path) -> None:
    data = tmp_path / "..2026_01_01"
    data.mkdir()
    (data / "WF.echo").write_text(json.dumps({"uids": [7]}))
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "WF.echo").symlink_to("..data/WF.echo")
    (tmp_path / ".hidden").write_text("not json")
    assert set(trust.load_claims_dir(tmp_path)) == {"WF.echo"}
    with pytest.raises(trust.ClaimsError, match="cannot list"):
        trust.load_claims_dir(tmp_path / "missing")


def test_a_hello_without_a_credential_is_the_original_s_and_one_with_it_carries_it() -> None:
    node = "00000000-0000-4000-8000-000000000001"
    plain = msgspec.json.decode(wire.encode(wire.hello_payload(node, "WF.a")))
    assert plain == {"uuid": node, "name": "WF.a", "version": "1"}
    proof = msgspec.json.decode(wire.encode(wire.hello_payload(node, "WF.a", credential=TOKEN)))
    assert proof == {"uuid": node, "name": "WF.a", "version": "1", "credential": TOKEN}


def test_fluxbee_up_claims_are_written_once_per_name_and_follow_the_declared_set(tmp_path: Path) -> None:
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "WF.tool").write_text('{"uids": [1000], "grants": ["ADMIN_COMMAND"]}')  # an operator's
    credentials.write_claims(tmp_path, credentials.claimed_names(["WF.echo@local", "SY.identity@local"]))
    token = (tmp_path / "credentials" / "WF.echo").read_text().strip()
    assert len(token) == 64
    assert stat.S_IMODE(os.stat(tmp_path / "credentials").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "credentials" / "WF.echo").st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "claims").iterdir()) == [
        ".fluxbee-up", "SY.admin", "SY.identity", "WF.echo", "WF.tool"]
    claims = trust.load_claims_dir(tmp_path / "claims")
    assert claims["WF.echo"].credential_sha256 == frozenset({trust.token_sha256(token)})
    before = (tmp_path / "claims" / "WF.echo").stat().st_mtime_ns
    credentials.write_claims(tmp_path, credentials.claimed_names(["WF.echo@local"]))
    assert (tmp_path / "claims" / "WF.echo").stat().st_mtime_ns == before  # unchanged: not rewritten
    assert (tmp_path / "credentials" / "WF.echo").read_text().strip() == token  # kept across restarts
    assert not (tmp_path / "claims" / "SY.identity").exists()  # no longer declared: open again
    assert (tmp_path / "claims" / "WF.tool").exists()  # not fluxbee up's to remove
