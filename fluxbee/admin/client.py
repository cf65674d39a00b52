"""Calling the admin API: ``admin_command`` over the router (for SDK nodes) and a small HTTP client.

``admin_command(sender, "list_admin_actions")`` sends ``ADMIN_COMMAND`` to ``SY.admin@<hive>`` and
returns the response envelope ``{status, action, payload, error_code, error_detail, request_id?}``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, cast

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeSender
from fluxbee.errors import CodedError


async def admin_command(sender: NodeSender, action: str, *, target: str | None = None,
                        params: dict[str, Any] | None = None, request_id: str | None = None,
                        admin_target: str = "SY.admin", timeout: float = 10.0) -> dict[str, Any]:
    """Run one admin action through the router; raises the SDK's errors on transport failure."""
    body: dict[str, Any] = {"action": action, "params": params or {}}
    if target is not None:
        body["target"] = target
    if request_id is not None:
        body["request_id"] = request_id
    reply = await sender.request(admin_target, body, msg_type=wire.TYPE_ADMIN, msg=wire.ADMIN_COMMAND,
                                 timeout=timeout)
    if not isinstance(reply.payload, dict):
        raise ValueError(f"ADMIN_COMMAND_RESPONSE payload is not an object: {reply.payload!r}")
    return cast(dict[str, Any], reply.payload)


async def admin_command_ok(sender: NodeSender, action: str, **kwargs: Any) -> Any:
    """Like :func:`admin_command`, but returns the payload and raises :class:`AdminCommandError` on error."""
    out = await admin_command(sender, action, **kwargs)
    if out.get("status") == "error":
        raise AdminCommandError(0, str(out.get("error_code")), str(out.get("error_detail")))
    return out.get("payload")


class AdminCommandError(CodedError):
    """An admin call answered with an error envelope (``http_status`` 0 over ``ADMIN_COMMAND``)."""

    def __init__(self, http_status: int, code: str, detail: str) -> None:
        super().__init__(code, detail, text=f"{code}: {detail}" + (f" (HTTP {http_status})" if http_status else ""))
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class HttpAdminClient:
    """Blocking HTTP client for ``fluxbee ctl`` and scripts."""

    base: str = "http://127.0.0.1:8080"
    token: str | None = None
    timeout: float = 30.0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base.rstrip("/") + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, cast(dict[str, Any], json.loads(resp.read()))
        except urllib.error.HTTPError as err:
            try:
                doc = json.loads(err.read())
            except ValueError:
                doc = {"status": "error", "error_code": "HTTP_ERROR", "error_detail": str(err)}
            return err.code, cast(dict[str, Any], doc)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.call(method, path, body)
        if status >= 400 or doc.get("status") == "error":
            raise AdminCommandError(status, str(doc.get("error_code")), str(doc.get("error_detail")))
        return doc.get("payload", doc)
