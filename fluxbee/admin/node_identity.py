"""The identity step of a spawn: register (or link) the node's ILK with SY.identity, as SY.admin.

The original's orchestrator registers every node it spawns (``ILK_REGISTER``, type ``agent`` for
``AI.*`` and ``system`` otherwise, in the tenant the request names) and spawns only when that
succeeds.  Here SY.admin is the orchestrator, and the step differs where the original leaves a
user stuck:

* **An unknown tenant is created, active, under the id the caller gave** (``TNT_CREATE`` with
  ``tenant_id``).  The admin API's caller is the hive's operator, the same authority that approves
  tenants; a pending tenant would only block the registration the spawn asks for.  The answer says
  ``tenant_created: true``, so a mistyped id is seen at once.  A tenant that exists but is pending
  or suspended refuses the spawn.
* **SY.identity out of reach does not stop a spawn** (disabled with ``FLUXBEE_UP_IDENTITY=0``, still
  starting, down, its database not ready, no router in reach): the node is spawned without an ILK
  and ``register`` says ``skipped`` and why.  A refusal (bad tenant, a node name owned by another
  ILK, …) fails the spawn before anything of the node is written.

The step runs after the backend has validated the spawn (name free, runtime and version resolved,
plan accepted) and before it writes anything, so a refused or invalid spawn registers nothing.  It
is idempotent by node name: SY.identity links the live ILK whose ``identification.node_name`` is the
node's, so spawning a node again after a kill gets the same ILK (ILKs outlive their nodes, as in the
original, whose kill leaves identity alone); ``register.created`` tells a new ILK from a linked one.
If the write after a successful registration fails, the ILK stays and the next spawn links it; a
tenant created on first use stays too when the registration that follows is refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fluxbee.admin.backend import RouterLink
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane.names import IDENTITY_NODE
from fluxbee.errors import CodedError
from fluxbee.models.resources import ILK_RE

IDENTITY_TIMEOUT = 5.0
_TRANSPORT_DOWN = frozenset({"NODE_NOT_FOUND", "UNREACHABLE", "ROUTER_UNREACHABLE", "ROUTER_UNAVAILABLE", "TIMEOUT",
                             "TRANSPORT_ERROR"})
"""Link errors that mean SY.identity cannot be asked (as opposed to SY.identity refusing)."""


class _Unreachable(CodedError):
    """SY.identity could not be asked (``code`` from the link); the spawn goes on without an ILK."""


def ilk_type_of(node_name: str) -> str:
    """``agent`` for AI nodes, ``system`` for the rest (the original's rule)."""
    return "agent" if node_name.startswith("AI.") else "system"


@dataclass(slots=True)
class SpawnIdentity:
    """One spawn's identity step; ``report`` is the spawn answer's ``identity`` object.

    ``register`` is what a backend calls (as its ``RegisterIlk``) once the spawn is known to be
    valid; it returns the ILK to record in the node's ``_system.ilk_id``, or None when skipped.
    """

    link: RouterLink
    hive_id: str
    requested_hive: str
    node_name: str
    tenant_id: str | None
    report: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.report = {"requested_hive": self.requested_hive, "identity_primary_hive_id": self.hive_id,
                       "identity_target": self.target,
                       "register": {"status": "pending", "ilk_id": None, "ilk_type": ilk_type_of(self.node_name),
                                    "target": self.target, "tenant_id": self.tenant_id},
                       "update": None}

    @property
    def target(self) -> str:
        return f"{IDENTITY_NODE}@{self.hive_id}"

    async def _ask(self, dst: str, msg: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            _, reply = await self.link.request(dst, payload, msg_type="system", msg=msg, meta={}, ttl=16,
                                               timeout=IDENTITY_TIMEOUT)
        except AdminError as err:
            if err.code == "NODE_NOT_FOUND":
                raise _Unreachable(err.code, f"{dst} is not connected to the router (identity is disabled on "
                                             "this hive, not started yet, or down)") from err
            if err.code in _TRANSPORT_DOWN:
                raise _Unreachable(err.code, f"{dst} could not be asked: {err.detail}") from err
            raise
        if not isinstance(reply, dict):
            raise AdminError("SERVICE_FAILED", f"{msg}_RESPONSE from {dst} is not an object")
        if reply.get("error_code") == "DB_NOT_READY":
            raise _Unreachable("DB_NOT_READY", f"{dst} has no database yet: {reply.get('message')}")
        return reply

    async def _call(self, msg: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One request; a replica's NOT_PRIMARY is followed once to the primary it names (as the SDK does)."""
        reply = await self._ask(self.target, msg, payload)
        primary = reply.get("primary")
        if reply.get("error_code") == "NOT_PRIMARY" and isinstance(primary, str) and primary:
            # this hive holds a replica: the primary it names answers, and the report says where it is
            self.report["identity_primary_hive_id"] = primary.rpartition("@")[2] or self.hive_id
            reply = await self._ask(primary, msg, payload)
        return reply

    async def register(self, runtime: str, runtime_version: str) -> str | None:
        reg: dict[str, Any] = self.report["register"]
        if self.tenant_id is None:
            reg.update(status="skipped", reason="no tenant: give tenant_id (in the body or in config) to register "
                                                "the node's ILK")
            return None
        requested = f"ilk:{uuid.uuid4()}"
        body = {"ilk_id": requested, "ilk_type": reg["ilk_type"], "tenant_id": self.tenant_id,
                "identification": {"display_name": self.node_name, "node_name": self.node_name,
                                   "runtime": runtime, "runtime_version": runtime_version}}
        tenant_created = False
        try:
            reply = await self._call("ILK_REGISTER", body)
            if reply.get("error_code") == "INVALID_TENANT":  # first use of this tenant: create it, then again
                made = await self._call("TNT_CREATE", {"name": self.tenant_id, "status": "active",
                                                       "tenant_id": self.tenant_id})
                if made.get("status") != "ok":
                    self._refused("TNT_CREATE", made)
                tenant_created = bool(made.get("created"))
                reply = await self._call("ILK_REGISTER", body)
        except _Unreachable as err:
            reg.update(status="skipped", error_code=err.code, reason=err.detail)
            return None
        if reply.get("status") != "ok":
            self._refused("ILK_REGISTER", reply)
        ilk = reply.get("ilk_id")
        if not isinstance(ilk, str) or not ILK_RE.match(ilk):
            raise AdminError("SERVICE_FAILED", f"ILK_REGISTER_RESPONSE from {self.target} has no valid ilk_id: {ilk!r}")
        reg.update(status="ok", ilk_id=ilk, created=ilk == requested, tenant_created=tenant_created)
        return ilk

    def _refused(self, msg: str, reply: dict[str, Any]) -> NoReturn:
        code = str(reply.get("error_code") or "SERVICE_FAILED")
        detail = str(reply.get("message") or reply.get("error_detail") or code)
        self.report["register"].update(status="error", error_code=code, reason=detail)
        raise AdminError("IDENTITY_REGISTER_FAILED",
                         f"{self.target} refused {msg} for {self.node_name}: {code}: {detail}; nothing was spawned",
                         payload={"node_name": self.node_name, "identity": self.report})
