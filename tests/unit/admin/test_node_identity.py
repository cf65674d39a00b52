"""The spawn's identity step against a scripted SY.identity: what is skipped, followed, created or refused."""

from __future__ import annotations

from typing import Any

import pytest

from fluxbee.admin.errors import AdminError
from fluxbee.admin.node_identity import SpawnIdentity

TENANT = "tnt:12345678-1234-1234-1234-123456789abc"
ILK = "ilk:00000000-0000-4000-8000-000000000001"


class ScriptedLink:
    """Answers each request with the next scripted reply (a dict) or raises it (an AdminError)."""

    def __init__(self, *replies: dict[str, Any] | AdminError) -> None:
        self.replies = list(replies)
        self.asked: list[tuple[str, str, Any]] = []

    async def request(self, dst: str, payload: Any, *, msg_type: str, msg: str, meta: dict[str, Any], ttl: int,
                      timeout: float) -> tuple[str | None, Any]:
        self.asked.append((dst, msg, payload))
        reply = self.replies.pop(0)
        if isinstance(reply, AdminError):
            raise reply
        return f"{msg}_RESPONSE", reply

    async def router_status(self) -> dict[str, Any]:
        raise NotImplementedError

    async def node_status(self, name: str, timeout: float) -> dict[str, Any] | None:
        raise NotImplementedError

    async def config_changed(self, subsystem: str, config: dict[str, Any], version: int) -> dict[str, Any]:
        raise NotImplementedError

    async def router_request(self, msg: str, payload: dict[str, Any], *, timeout: float) -> tuple[str | None, Any]:
        raise NotImplementedError

    async def send(self, dst: str, payload: Any, *, msg_type: str, msg: str | None, meta: dict[str, Any],
                   ttl: int) -> str:
        raise NotImplementedError


def step(link: ScriptedLink, tenant: str | None = TENANT, name: str = "WF.a.b@h") -> SpawnIdentity:
    return SpawnIdentity(link, "h", "h", name, tenant)


async def test_without_a_tenant_nothing_is_asked_and_the_reason_is_given() -> None:
    link = ScriptedLink()
    s = step(link, tenant=None)
    assert await s.register("rt", "1.0") is None
    assert link.asked == [] and s.report["register"]["status"] == "skipped"
    assert "tenant_id" in s.report["register"]["reason"]


@pytest.mark.parametrize("down", [AdminError("NODE_NOT_FOUND", "no route"), AdminError("TIMEOUT", "5 s"),
                                  AdminError("ROUTER_UNREACHABLE", "no router"),
                                  {"status": "error", "error_code": "DB_NOT_READY", "message": "starting"}])
async def test_identity_out_of_reach_skips_the_step_with_its_code(down: dict[str, Any] | AdminError) -> None:
    s = step(ScriptedLink(down))
    assert await s.register("rt", "1.0") is None
    reg = s.report["register"]
    code = down.code if isinstance(down, AdminError) else "DB_NOT_READY"
    assert (reg["status"], reg["error_code"], reg["ilk_id"]) == ("skipped", code, None) and reg["reason"]


async def test_a_replica_is_followed_to_the_primary_it_names() -> None:
    link = ScriptedLink({"status": "error", "error_code": "NOT_PRIMARY", "primary": "SY.identity@mother"},
                        {"status": "ok", "ilk_id": ILK})
    s = step(link, name="AI.x.y@h")
    assert await s.register("rt", "1.0") == ILK
    assert [(d, m) for d, m, _ in link.asked] == [("SY.identity@h", "ILK_REGISTER"),
                                                  ("SY.identity@mother", "ILK_REGISTER")]
    reg = s.report["register"]
    assert reg["ilk_type"] == "agent" and reg["created"] is False  # SY.identity answered another ILK: linked


async def test_an_unknown_tenant_is_created_active_under_its_id_then_the_ilk_registered() -> None:
    link = ScriptedLink({"status": "error", "error_code": "INVALID_TENANT", "message": "no such tenant"},
                        {"status": "ok", "tenant_id": TENANT, "created": True, "matched_by": None},
                        {"status": "ok", "ilk_id": ILK})
    s = step(link)
    assert await s.register("rt", "1.0") == ILK
    assert link.asked[1] == ("SY.identity@h", "TNT_CREATE", {"name": TENANT, "status": "active", "tenant_id": TENANT})
    assert link.asked[0][2] == link.asked[2][2]  # the same registration, with the same requested ILK
    assert s.report["register"]["tenant_created"] is True and s.report["register"]["ilk_type"] == "system"


async def test_a_refusal_raises_with_the_identity_report_and_a_malformed_answer_is_a_service_failure() -> None:
    s = step(ScriptedLink({"status": "error", "error_code": "TENANT_PENDING", "message": "pending approval"}))
    with pytest.raises(AdminError) as err:
        await s.register("rt", "1.0")
    assert err.value.code == "IDENTITY_REGISTER_FAILED" and "TENANT_PENDING" in err.value.detail
    assert err.value.payload is not None and err.value.payload["identity"] is s.report
    assert s.report["register"]["status"] == "error"
    with pytest.raises(AdminError) as err:
        await step(ScriptedLink({"status": "ok", "ilk_id": "not-an-ilk"})).register("rt", "1.0")
    assert err.value.code == "SERVICE_FAILED"
