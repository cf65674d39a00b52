"""Admin over the links: hive-scoped actions for another hive, and who may send them here.

**Relay.**  A hive-scoped action (one whose registry entry ``requires_target``) aimed at a hive
other than this one is validated here first (a bad body is a 400 without a round trip), then sent
as ``ADMIN_COMMAND {action, target, params}`` to ``SY.admin@<hive>`` over the links.  The remote
answer is an envelope; its ``payload`` is returned as is, and its ``error_code``/``error_detail``
become this answer's, so a caller sees the same envelope (and HTTP status) it would get from the
remote hive's own API.  Transport failures get codes of their own:

* the router answers UNREACHABLE for the hive (no link, link down, unknown hive) ->
  ``HIVE_NOT_CONNECTED`` (503) with the router's reason;
* the hive is reached but has no ``SY.admin`` -> ``REMOTE_ADMIN_UNAVAILABLE`` (503);
* no answer within the action's time -> ``WAN_TIMEOUT`` (504).

**Authorisation of remote commands** (:func:`authorise`).  The router stamps
``routing.src_l2_name`` from the authenticated session: locally from the node's proven claim, for
a frame from another hive from the origin router's binding (a hive cannot forge a sender of
another hive).  A command whose sender is in another hive is accepted only when

1. the sender is exactly ``SY.admin@<X>`` (no other node of a remote hive administers this one);
2. ``X`` is a hive this hive's router has a link-state entry for (directly linked, or reached
   through a transit hive): a name the links never admitted is refused;
3. ``X`` administers this hive: it is the hive file's ``spec.motherHive``.  A hive without a mother
   (the mother itself) takes no remote commands;
4. the command targets this hive (no target or this hive's id): a remote command is never relayed
   further, so no hive can use another as a stepping stone and no relay loops.

The exception is :data:`FROM_ANY_LINKED_HIVE`: the read of the global config, which a worker asks
its mother for to catch up; any linked ``SY.admin@X`` may read it (rules 1, 2 and 4 still hold).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fluxbee.admin.backend import RouterLink
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane import wire
from fluxbee.dataplane.names import ADMIN_NODE

RELAY_TIMEOUT: Final = 30.0
"""Seconds a relayed action may take (the original's default for orchestrator actions)."""
SLOW_RELAY_TIMEOUT: Final = {"run_node": 60.0, "start_node": 60.0, "restart_node": 60.0}
"""Actions that do more than one round trip on the far side (a spawn registers an ILK with the
identity primary, possibly over another link; start and restart wait for the node to connect)."""
FROM_ANY_LINKED_HIVE: Final = frozenset({"get_global_config"})
"""Remote actions any linked hive's SY.admin may send (reads of what every hive receives anyway)."""

_UNREACHABLE_CODES: Final = frozenset({"UNREACHABLE", "NODE_NOT_FOUND"})


def admin_of(hive: str) -> str:
    return f"{ADMIN_NODE}@{hive}"


def command(action: str, target: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ADMIN_COMMAND`` payload that runs ``action`` on ``target``."""
    return {"action": action, "target": target, "params": dict(params)}


def unwrap(hive: str, action: str, reply: Any) -> dict[str, Any]:
    """The payload of a remote envelope, or the remote error raised as this call's own.

    A reply that is not an envelope (another node answering as SY.admin would not pass the router,
    but a remote hive running an incompatible version could) is a ``SERVICE_FAILED``."""
    if not isinstance(reply, dict) or "status" not in reply or "payload" not in reply:
        raise AdminError("SERVICE_FAILED", f"{admin_of(hive)} answered {action} with something that is not an "
                                           "admin envelope")
    if reply.get("status") == "error":
        code = reply.get("error_code")
        detail = reply.get("error_detail")
        if not isinstance(code, str) or not code:
            code = "SERVICE_FAILED"
        payload = reply.get("payload")
        raise AdminError(code, detail if isinstance(detail, str) else f"{admin_of(hive)}: {code}",
                         payload=payload if isinstance(payload, dict) else None)
    payload = reply.get("payload")
    if not isinstance(payload, dict):
        raise AdminError("SERVICE_FAILED", f"{admin_of(hive)} answered {action} without a payload object")
    return payload


def transport_error(hive: str, action: str, timeout: float, err: AdminError) -> AdminError:
    """What a failed relay says, by what the router or the clock told us."""
    reason = (err.payload or {}).get("reason") if err.payload else None
    if err.code == "TIMEOUT":
        return AdminError("WAN_TIMEOUT", f"{admin_of(hive)} did not answer {action} within {timeout:g} s")
    if err.code in _UNREACHABLE_CODES:
        if reason == wire.NODE_NOT_FOUND or (reason is None and err.code == "NODE_NOT_FOUND"):
            return AdminError("REMOTE_ADMIN_UNAVAILABLE", f"hive {hive!r} is reached but has no {ADMIN_NODE} "
                                                          f"connected ({err.detail})")
        return AdminError("HIVE_NOT_CONNECTED", f"hive {hive!r} cannot be reached over the links: "
                                                f"{reason or err.detail}",
                          payload={"hive": hive, "reason": reason} if reason else {"hive": hive})
    return err


async def relay(link: RouterLink, hive: str, action: str, params: Mapping[str, Any], *,
                timeout: float | None = None) -> dict[str, Any]:
    """Run ``action`` on ``hive``'s admin API over the links; its payload (or its error, raised)."""
    if timeout is None:
        timeout = SLOW_RELAY_TIMEOUT.get(action, RELAY_TIMEOUT)
    try:
        _, reply = await link.request(admin_of(hive), command(action, hive, params), msg_type=wire.TYPE_ADMIN,
                                      msg=wire.ADMIN_COMMAND, meta={}, ttl=wire.DEFAULT_TTL, timeout=timeout)
    except AdminError as err:
        raise transport_error(hive, action, timeout, err) from err
    return unwrap(hive, action, reply)


@dataclass(frozen=True, slots=True)
class Sender:
    """A router-stamped ``NAME@HIVE``."""

    name: str
    hive: str

    @classmethod
    def parse(cls, stamped: str) -> Sender:
        name, sep, hive = stamped.rpartition("@")
        if not sep or not name or not hive:
            raise AdminError("FORBIDDEN", f"sender {stamped!r} has no hive")
        return cls(name, hive)


def is_remote(stamped: str | None, local_hive: str) -> bool:
    """The sender belongs to another hive (a stamped name always carries ``@hive``)."""
    return bool(stamped) and "@" in str(stamped) and str(stamped).rpartition("@")[2] != local_hive


def authorise(stamped: str, *, action: str, target: str | None, local_hive: str, mother_hive: str | None,
              known_hives: Iterable[str]) -> None:
    """Raise FORBIDDEN unless a remote sender may run ``action`` here (rules in the module docstring)."""
    sender = Sender.parse(stamped)
    if sender.name != ADMIN_NODE:
        raise AdminError("FORBIDDEN", f"{stamped} may not send ADMIN_COMMAND here: only {ADMIN_NODE} of another "
                                      "hive may")
    if sender.hive not in set(known_hives):
        raise AdminError("FORBIDDEN", f"{stamped}: hive {sender.hive!r} is not linked to hive {local_hive!r}")
    if target is not None and target != local_hive:
        raise AdminError("FORBIDDEN", f"{stamped} asked hive {local_hive!r} to act on {target!r}: commands from "
                                      "another hive are not relayed further")
    if action in FROM_ANY_LINKED_HIVE:
        return
    if mother_hive is None:
        raise AdminError("FORBIDDEN", f"{stamped} may not run {action} on hive {local_hive!r}: it has no "
                                      "mother hive, so no other hive administers it")
    if sender.hive != mother_hive:
        raise AdminError("FORBIDDEN", f"{stamped} may not run {action} on hive {local_hive!r}: only its mother "
                                      f"hive {mother_hive!r} administers it")
