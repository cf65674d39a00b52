"""Hives and the links between them, as the admin API shows and changes them.

The router keeps the links (mutual TLS between hive gateways) and reports them in the ``wan``
section of its status snapshot: ``{hive_id, listen, links: [{hive_id, router_id, address, direction,
state, since, last_lsa_seq, last_lsa_age_ms, rtt_ms, reason}], routes: [{hive, next_hop, path}]}``
(``routes``: every hive the link-state adverts reach, through transit hives included).  The admin
API reads that section for ``GET /hives`` (each hive's link state, last link-state advert and
round-trip time), for the set of hives it may relay to and take commands from, and changes it with
the router's link control messages: ``POST /hives`` sends ``LINK_ADD {address}`` (the router dials
the worker's gateway and keeps dialling it, across restarts; no SSH, nothing installed remotely: the
worker runs ``fluxbee up`` with its own ``--wan-listen``), ``DELETE /hives/{h}`` sends ``LINK_REMOVE
{hive_id}`` (the router closes the links with that hive and refuses it until a ``LINK_ADD`` reaches
it again)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from fluxbee.admin import remote
from fluxbee.admin.backend import RouterLink
from fluxbee.admin.errors import AdminError

DEFAULT_GATEWAY_PORT: Final = 9000
"""The gateway port of an address given without one (the original's and ``Hive.spec.gatewayPort``'s default)."""
LINK_ADD: Final = "LINK_ADD"
LINK_REMOVE: Final = "LINK_REMOVE"
CONTROL_TIMEOUT: Final = 5.0
LINK_WAIT: Final = 5.0
"""Seconds ``POST /hives`` waits for a new link to come up before it answers (it keeps trying after)."""
UP_STATES: Final = frozenset({"up"})
_CONTROL_CODES: Final = {"NO_WAN": "MISSING_WAN_LISTEN", "INVALID_ADDRESS": "INVALID_ADDRESS",
                          "PERSIST_FAILED": "STATE_WRITE_FAILED", "LINK_NOT_FOUND": "NOT_FOUND",
                          "FORBIDDEN": "FORBIDDEN"}
"""The router's LINK_ADD / LINK_REMOVE error codes, as the admin API's."""
_LABEL = re.compile(r"^[A-Za-z0-9-]{1,63}$")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return len(host) <= 253 and all(
        _LABEL.match(label) and not label.startswith("-") and not label.endswith("-") for label in host.split("."))


def parse_address(address: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); INVALID_ADDRESS otherwise."""
    host, port_text = address, ""
    if address.startswith("["):
        end = address.find("]")
        if end < 0 or (address[end + 1:] and not address[end + 1:].startswith(":")):
            raise AdminError("INVALID_ADDRESS", f"address {address!r}: expected [IPv6]:PORT")
        host, port_text = address[1:end], address[end + 2:]
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    if not host or not _valid_host(host):
        raise AdminError("INVALID_ADDRESS", f"address {address!r}: {host!r} is neither an IP address nor a DNS name")
    if not port_text:
        return host, DEFAULT_GATEWAY_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AdminError("INVALID_ADDRESS", f"address {address!r}: port {port_text!r} is not in 1..65535")
    return host, int(port_text)


def dial_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class LinkRow:
    hive_id: str | None
    address: str | None
    direction: str | None
    state: str
    since: Any
    last_lsa_seq: Any
    last_lsa_age_ms: Any
    rtt_ms: Any

    @property
    def up(self) -> bool:
        return self.state.lower() in UP_STATES

    def to_json(self) -> dict[str, Any]:
        return {"hive_id": self.hive_id, "address": self.address, "direction": self.direction, "state": self.state,
                "since": self.since, "last_lsa_seq": self.last_lsa_seq, "last_lsa_age_ms": self.last_lsa_age_ms,
                "rtt_ms": self.rtt_ms}


@dataclass(frozen=True, slots=True)
class WanView:
    """The router's ``wan`` section; ``enabled`` False when the router runs without a gateway."""

    enabled: bool
    listen: str | None
    links: tuple[LinkRow, ...]
    reachable: frozenset[str]
    """Hives the router can route to: linked directly and up, or learned through a transit hive."""

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> WanView:
        wan = (status or {}).get("wan")
        if not isinstance(wan, dict):
            return cls(False, None, (), frozenset())
        rows = []
        for item in wan.get("links") or ():
            if not isinstance(item, dict):
                continue
            hive = item.get("hive_id")
            rows.append(LinkRow(hive if isinstance(hive, str) and hive else None,
                                str(item["address"]) if item.get("address") is not None else None,
                                item.get("direction"), str(item.get("state") or "unknown"), item.get("since"),
                                item.get("last_lsa_seq"), item.get("last_lsa_age_ms"), item.get("rtt_ms")))
        reachable = {r.hive_id for r in rows if r.up and r.hive_id}
        for route in wan.get("routes") or ():  # every origin the path vector reaches, transit included
            if isinstance(route, dict) and isinstance(route.get("hive"), str) and route["hive"]:
                reachable.add(route["hive"])
        listen = wan.get("listen")
        return cls(True, str(listen) if listen else None, tuple(rows), frozenset(reachable))

    def link_to(self, hive: str) -> LinkRow | None:
        """The link to ``hive``, an up one first."""
        rows = [r for r in self.links if r.hive_id == hive]
        return next((r for r in rows if r.up), rows[0] if rows else None)

    def link_at(self, address: str) -> LinkRow | None:
        return next((r for r in self.links if r.address == address), None)


async def wan_view(link: RouterLink) -> WanView:
    """The router's links, or a view without any when the router is out of reach."""
    try:
        return WanView.from_status(await link.router_status())
    except AdminError:
        return WanView(False, None, (), frozenset())


def hive_rows(local: dict[str, Any], registered: dict[str, dict[str, Any]], wan: WanView) -> list[dict[str, Any]]:
    """``GET /hives``: the local hive, every registered hive, and every hive the links reach, each with
    its link (state, last advert, RTT) when there is one."""
    rows = [{**local, "wan_listen": wan.listen, "wan_enabled": wan.enabled}]
    ids = set(registered) | {r.hive_id for r in wan.links if r.hive_id} | set(wan.reachable)
    ids.discard(str(local.get("hive_id")))
    for hive in sorted(ids):
        record = dict(registered.get(hive) or {"hive_id": hive, "registered": False, "is_local": False})
        row = wan.link_to(hive)
        if row is None and record.get("address"):
            row = wan.link_at(str(record["address"]))
        record["link"] = row.to_json() if row is not None else None
        record["wan_connected"] = bool(row is not None and row.up) or hive in wan.reachable
        record["status"] = "connected" if record["wan_connected"] else (
            row.state if row is not None else record.get("status", "registered"))
        if hive in wan.reachable and (row is None or not row.up):
            record["via"] = "transit"
        rows.append(record)
    return sorted(rows, key=lambda r: str(r["hive_id"]))


async def _control(link: RouterLink, msg: str, payload: dict[str, Any]) -> dict[str, Any]:
    reply_msg, reply = await link.router_request(msg, payload, timeout=CONTROL_TIMEOUT)
    if not isinstance(reply, dict):
        raise AdminError("TRANSPORT_ERROR", f"the router answered {msg} with {reply_msg} and no object")
    if str(reply.get("status", "")).lower() not in ("ok", ""):
        code = str(reply.get("error_code") or "SERVICE_FAILED")
        detail = str(reply.get("error_detail") or reply.get("message") or code)
        raise AdminError(_CONTROL_CODES.get(code, "SERVICE_FAILED"), f"the router refused {msg}: {code}: {detail}")
    return reply


async def link_add(link: RouterLink, hive_id: str, address: str, wait: float = LINK_WAIT) -> dict[str, Any]:
    """Ask the router to dial ``address`` and wait up to ``wait`` s for a link to ``hive_id``.

    A link that comes up to another hive than the one named is removed again and refused
    (``WAN_NOT_AUTHORIZED``): the peer's certificate names its hive, and it is not the one asked for."""
    host, port = parse_address(address)
    target = dial_address(host, port)
    await _control(link, LINK_ADD, {"address": target})
    deadline = time.monotonic() + wait
    row: LinkRow | None = None
    while True:
        view = await wan_view(link)
        row = view.link_at(target)
        if row is not None and row.up and row.hive_id not in (None, hive_id):
            await _control(link, LINK_REMOVE, {"hive_id": row.hive_id})
            raise AdminError("WAN_NOT_AUTHORIZED", f"the gateway at {target} is hive {row.hive_id!r}, not "
                                                   f"{hive_id!r}; the link was removed")
        if (row is not None and row.up) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    return {"address": target, "wan_connected": bool(row is not None and row.up),
            "link": row.to_json() if row is not None else None}


async def link_remove(link: RouterLink, hive_id: str) -> str:
    """Ask the router to drop its links to ``hive_id``: ``unlinked``, or ``no_link`` when it had none."""
    try:
        await _control(link, LINK_REMOVE, {"hive_id": hive_id})
    except AdminError as err:
        if err.code == "NOT_FOUND":
            return "no_link"
        raise
    return "unlinked"


async def known_hives(link: RouterLink, registered: Iterable[str]) -> set[str]:
    """Every other hive this one can address: registered ones and those the links reach."""
    return set(registered) | set((await wan_view(link)).reachable)


async def remote_versions(link: RouterLink, hives: Iterable[str]) -> list[dict[str, Any]]:
    """``GET /versions`` rows of other hives, each asked over the links at once; a hive that cannot
    be asked gets a row with its error."""

    async def one(hive: str) -> dict[str, Any]:
        try:
            payload = await remote.relay(link, hive, "get_versions", {})
        except AdminError as err:
            return {"hive_id": hive, "status": "error", "error_code": err.code, "message": err.detail}
        row = payload.get("hive")
        return row if isinstance(row, dict) else {"hive_id": hive, "status": "error", "error_code": "SERVICE_FAILED",
                                                  "message": "get_versions answered without a hive object"}

    return list(await asyncio.gather(*(one(h) for h in sorted(set(hives)))))
