"""One base for the errors that carry a code and a detail: one spelling, caught alike, texts unchanged."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fluxbee.admin.client import AdminCommandError
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane import sdk, wire
from fluxbee.dataplane.router.control import ConfigRefused
from fluxbee.errors import CodedError
from fluxbee.identity import degrees, sync
from fluxbee.identity.agent import AgentRefused
from fluxbee.identity.client import IdentityCallError
from fluxbee.identity.model import IdentityError
from fluxbee.operator.conditions import InvalidSpec
from fluxbee.supervisor.store import StoreError

# (error, code, detail, str()) -- the texts are the ones each class printed before the base existed.
FAMILY: list[tuple[CodedError, str, str, str]] = [
    (wire.ProtocolError("MALFORMED_FRAME", "bad length"), "MALFORMED_FRAME", "bad length",
     "MALFORMED_FRAME: bad length"),
    (wire.FrameTooLargeError(10, 4), wire.FRAME_TOO_LARGE, "frame of 10 bytes exceeds the 4-byte limit",
     f"{wire.FRAME_TOO_LARGE}: frame of 10 bytes exceeds the 4-byte limit"),
    (sdk.HandshakeError("INVALID_HELLO", "no name"), "INVALID_HELLO", "no name", "INVALID_HELLO: no name"),
    (sdk.UnreachableError("NODE_NOT_FOUND", "WF.x@h", "no such node"), "NODE_NOT_FOUND", "no such node",
     "NODE_NOT_FOUND for WF.x@h: no such node"),
    (sdk.UnreachableError("TTL_EXCEEDED", "WF.x@h", None), "TTL_EXCEEDED", "", "TTL_EXCEEDED for WF.x@h"),
    (ConfigRefused("STALE_VERSION", "version 3 is older than 4"), "STALE_VERSION", "version 3 is older than 4",
     "version 3 is older than 4"),
    (IdentityError("ILK_NOT_FOUND", "ILK ilk:1 does not exist"), "ILK_NOT_FOUND", "ILK ilk:1 does not exist",
     "ILK_NOT_FOUND: ILK ilk:1 does not exist"),
    (sync.ResyncNeededError(sync.GAP, "delta 7 after 5"), sync.GAP, "delta 7 after 5", "gap: delta 7 after 5"),
    (IdentityCallError("ILK_GET", "NOT_FOUND", "gone", {}), "NOT_FOUND", "gone", "ILK_GET: NOT_FOUND: gone"),
    (AgentRefused("PublicKeyUnavailable", "no key"), "PublicKeyUnavailable", "no key",
     "PublicKeyUnavailable: no key"),
    (degrees.DegreeVerificationError("DigestMismatch", "module a@1"), "DigestMismatch", "module a@1",
     "DigestMismatch: module a@1"),
    (AdminError("NODE_NOT_FOUND", "node WF.x@h"), "NODE_NOT_FOUND", "node WF.x@h", "NODE_NOT_FOUND: node WF.x@h"),
    (AdminCommandError(404, "NOT_FOUND", "no hive"), "NOT_FOUND", "no hive", "NOT_FOUND: no hive (HTTP 404)"),
    (AdminCommandError(0, "BUSY", "try again"), "BUSY", "try again", "BUSY: try again"),
    (StoreError("RUNTIME_NOT_FOUND", "no runtime ai.x"), "RUNTIME_NOT_FOUND", "no runtime ai.x",
     "RUNTIME_NOT_FOUND: no runtime ai.x"),
    (InvalidSpec("HiveInvalid", "no such hive"), "HiveInvalid", "no such hive", "HiveInvalid: no such hive"),
]


def test_a_coded_error_says_its_code_and_detail() -> None:
    err = CodedError("SOME_CODE", "what happened")
    assert (err.code, err.detail, str(err)) == ("SOME_CODE", "what happened", "SOME_CODE: what happened")
    assert str(CodedError("X", "y", text="a text of its own")) == "a text of its own"
    assert CodedError("X", "y", text="own").detail == "y"


@pytest.mark.parametrize(("err", "code", "detail", "text"), FAMILY, ids=lambda v: type(v).__name__)
def test_every_error_of_the_family_has_one_spelling_and_keeps_its_text(err: CodedError, code: str, detail: str,
                                                                      text: str) -> None:
    assert isinstance(err, CodedError)
    assert (err.code, err.detail, str(err)) == (code, detail, text)


def test_the_family_is_caught_as_one() -> None:
    caught = []
    for err, _, _, _ in FAMILY:
        try:
            raise err
        except CodedError as got:
            caught.append(got.code)
    assert caught == [code for _, code, _, _ in FAMILY]


def test_the_sdk_errors_are_still_caught_by_their_own_bases() -> None:
    with pytest.raises(sdk.SdkError):
        raise sdk.UnreachableError("VPN_BLOCKED", "WF.x", None)
    with pytest.raises(sdk.SdkError):
        raise sdk.HandshakeError("INVALID_HELLO", "no name")
    too_large = sdk.FrameTooLargeError(200_000)
    for base in (sdk.SdkError, wire.FrameTooLargeError, wire.ProtocolError, CodedError):
        assert isinstance(too_large, base)
    assert too_large.code == wire.FRAME_TOO_LARGE and too_large.size == 200_000
    assert str(too_large).endswith("nothing was sent")  # its own text, set after the base's
    assert not isinstance(sdk.RequestTimeoutError("t1", 1.0), CodedError)  # no code to give


def test_errors_that_mirror_a_wire_field_keep_its_name_as_an_alias() -> None:
    for err in (wire.ProtocolError("MALFORMED_FRAME", "x"), sdk.HandshakeError("INVALID_HELLO", "x"),
                sdk.UnreachableError("NODE_NOT_FOUND", "WF.x", "x")):
        assert err.reason == err.code
    with pytest.raises(AttributeError):
        wire.ProtocolError("MALFORMED_FRAME", "x").reason = "OTHER"  # type: ignore[misc]


def test_an_identity_error_reply_keeps_the_original_field_names() -> None:
    err = IdentityError("NOT_PRIMARY", "send it to the primary", primary="SY.identity@mb")
    assert err.payload() == {"status": "error", "error_code": "NOT_PRIMARY", "message": "send it to the primary",
                             "primary": "SY.identity@mb"}


def test_the_admin_error_keeps_its_payload_and_status() -> None:
    err = AdminError("NODE_NOT_FOUND", "x", payload={"k": 1})
    assert err.payload == {"k": 1} and err.http_status == 404


def test_the_base_is_a_leaf_the_sdk_loads_with_nothing_else() -> None:
    code = ("import sys; before = set(sys.modules); import fluxbee.errors; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["fluxbee", "fluxbee.errors"]
