"""SDK helpers for nodes: identity requests over the router, and local lookups in shared memory.

Requests: ``await provision_ilk(sender, ...)``, ``register``, ``add_channel``,
``update_ilk``, ``tnt_create``, ``tnt_approve``, ``identity_metrics`` … each
sends the system message to ``SY.identity`` (default: of the sender's hive),
waits for ``<ACTION>_RESPONSE`` with the same trace id and returns the payload
when ``status == "ok"``; otherwise raises :class:`IdentityCallError` carrying
the original's ``error_code``.  ``NOT_PRIMARY`` or an UNREACHABLE
``NODE_NOT_FOUND`` is retried once on ``fallback`` when one is given; a
``NOT_PRIMARY`` reply names the primary (``primary``), which is used when no
fallback is given.

Lookups: :class:`IdentityLookup` reads the identity region with no round trip.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fluxbee.dataplane import wire
from fluxbee.dataplane.names import IDENTITY_NODE
from fluxbee.dataplane.sdk import NodeSender, UnreachableError, default_run_dir
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.errors import CodedError
from fluxbee.identity import model as m

DEFAULT_TARGET = IDENTITY_NODE


class IdentityCallError(CodedError):
    """An identity request that failed: SY.identity's error reply (``payload``), or the router's
    refusal to deliver it (``payload`` empty)."""

    def __init__(self, action: str, code: str, detail: str, payload: dict[str, Any]) -> None:
        super().__init__(code, detail, text=f"{action}: {code}: {detail}")
        self.action = action
        self.payload = payload


async def identity_call(sender: NodeSender, action: str, payload: dict[str, Any], *, target: str = DEFAULT_TARGET,
                        fallback: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """One identity request; the reply payload when ``status == "ok"``, else :class:`IdentityCallError`."""
    targets: list[str | None] = [target, fallback]
    for attempt in range(2):
        dst = targets[attempt]
        if dst is None:
            break
        try:
            reply = await sender.request(dst, payload, msg_type=wire.TYPE_SYSTEM, msg=action, timeout=timeout)
        except UnreachableError as err:
            if attempt == 0 and fallback is not None and err.code == wire.NODE_NOT_FOUND:
                continue
            raise IdentityCallError(action, err.code, str(err), {}) from err
        body = reply.payload if isinstance(reply.payload, dict) else {}
        if body.get("status") == "ok":
            return body
        code = str(body.get("error_code", "INVALID_RESPONSE"))
        if attempt == 0 and code == m.NOT_PRIMARY:
            targets[1] = fallback or (str(body["primary"]) if body.get("primary") else None)
            if targets[1] is not None:
                continue
        raise IdentityCallError(action, code, str(body.get("message", "")), body)
    raise IdentityCallError(action, m.NOT_PRIMARY, "no primary answered", {})


def ich_for(tenant_id: str, channel_type: str, address: str) -> str:
    """Deterministic ICH id of a channel key (UUIDv5, as the original's IO nodes derive it)."""
    ctype, addr = identity_shm.normalise_channel(channel_type, address)
    return f"ich:{uuid.uuid5(uuid.NAMESPACE_OID, f'{tenant_id.lower()}:{ctype}:{addr}')}"


async def provision_ilk(sender: NodeSender, channel_type: str, address: str, *, tenant_id: str | None = None,
                        ich_id: str | None = None, **kw: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"ich_id": ich_id or ich_for(tenant_id or "default", channel_type, address),
                               "channel_type": channel_type, "address": address}
    if tenant_id is not None:
        payload["tenant_id"] = tenant_id
    return await identity_call(sender, m.ILK_PROVISION, payload, **kw)


async def register(sender: NodeSender, ilk_id: str, ilk_type: str, tenant_id: str, *,
                   identification: dict[str, Any] | None = None, roles: list[str] | None = None,
                   capabilities: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return await identity_call(sender, m.ILK_REGISTER, {
        "ilk_id": ilk_id, "ilk_type": ilk_type, "tenant_id": tenant_id, "identification": identification or {},
        "roles": roles or [], "capabilities": capabilities or []}, **kw)


async def add_channel(sender: NodeSender, ilk_id: str, channel_type: str, address: str, *, ich_id: str,
                      merge_from_ilk_id: str | None = None, change_reason: str | None = None,
                      **kw: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"ilk_id": ilk_id, "channel": {"ich_id": ich_id, "type": channel_type,
                                                             "address": address}}
    if merge_from_ilk_id is not None:
        payload["merge_from_ilk_id"] = merge_from_ilk_id
    if change_reason is not None:
        payload["change_reason"] = change_reason
    return await identity_call(sender, m.ILK_ADD_CHANNEL, payload, **kw)


async def update_ilk(sender: NodeSender, ilk_id: str, *, add_roles: list[str] | None = None,
                     remove_roles: list[str] | None = None, add_capabilities: list[str] | None = None,
                     remove_capabilities: list[str] | None = None, human_subtype: str | None = None,
                     change_reason: str | None = None, **kw: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"ilk_id": ilk_id, "add_roles": add_roles or [], "remove_roles": remove_roles or [],
                               "add_capabilities": add_capabilities or [],
                               "remove_capabilities": remove_capabilities or []}
    if human_subtype is not None:
        payload["human_subtype"] = human_subtype
    if change_reason is not None:
        payload["change_reason"] = change_reason
    return await identity_call(sender, m.ILK_UPDATE, payload, **kw)


async def tnt_create(sender: NodeSender, name: str, *, domain: str | None = None, status: str = "pending",
                     tenant_id: str | None = None, **kw: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": name, "status": status}
    if domain is not None:
        payload["domain"] = domain
    if tenant_id is not None:
        payload["tenant_id"] = tenant_id
    return await identity_call(sender, m.TNT_CREATE, payload, **kw)


async def tnt_approve(sender: NodeSender, tenant_id: str, approved_by: str, **kw: Any) -> dict[str, Any]:
    return await identity_call(sender, m.TNT_APPROVE, {"tenant_id": tenant_id, "approved_by": approved_by}, **kw)


async def identity_metrics(sender: NodeSender, **kw: Any) -> dict[str, Any]:
    return dict((await identity_call(sender, m.IDENTITY_METRICS, {}, **kw))["metrics"])


class IdentityLookup:
    """Local lookups in the hive's identity region; reopens it when SY.identity restarts.

    ``None`` means "not known here" (also while the region does not exist);
    callers then fall back to ILK_PROVISION.
    """

    def __init__(self, hive_id: str, *, run_dir: str | os.PathLike[str] | None = None,
                 recheck_s: float = 1.0) -> None:
        """``run_dir``: the hive's run dir (default: ``$FLUXBEE_RUN_DIR`` or the SDK's default)."""
        self.hive_id = hive_id
        self._handle = identity_shm.RegionHandle(hive_id, run_dir=run_dir or default_run_dir(),
                                                 recheck_s=recheck_s)

    def reader(self) -> identity_shm.IdentityRegionReader | None:
        return self._handle.get()

    def channel(self, channel_type: str, address: str, tenant_id: str) -> identity_shm.ChannelHit | None:
        r = self.reader()
        return r.lookup_channel(channel_type, address, tenant_id) if r is not None else None

    def canonical(self, ilk_id: str) -> str:
        r = self.reader()
        return r.canonical(ilk_id) if r is not None else ilk_id

    def ilk(self, ilk_id: str) -> identity_shm.IlkInfo | None:
        r = self.reader()
        return r.resolve(ilk_id) if r is not None else None

    def close(self) -> None:
        self._handle.close()
