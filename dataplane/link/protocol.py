"""The link protocol's messages and pure checks: HELLO, WAN_ACCEPT / WAN_REJECT, LSA, LINK_PING/PONG.

No I/O here (the session in :mod:`~fluxbee.dataplane.link.session` does that): functions take
bytes or structs and return structs, frames, or a :class:`Reject`.  The package docstring describes
the protocol; the names below are its vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from fluxbee.dataplane import wire
from fluxbee.dataplane.link.certs import HIVE_ID_RE

PROTOCOL: Final = "fluxbee-link/1"
CAPABILITIES: Final = ("lsa", "forwarding", "transit")

WAN_ACCEPT: Final = "WAN_ACCEPT"
WAN_REJECT: Final = "WAN_REJECT"
LSA: Final = "LSA"
LINK_PING: Final = "LINK_PING"
LINK_PONG: Final = "LINK_PONG"
CONTROL: Final = frozenset({wire.HELLO, WAN_ACCEPT, WAN_REJECT, LSA, LINK_PING, LINK_PONG})

# Router control messages (to the router, privileged).
LINK_ADD: Final = wire.LINK_ADD
LINK_ADD_RESPONSE: Final = wire.LINK_ADD_RESPONSE
LINK_REMOVE: Final = wire.LINK_REMOVE
LINK_REMOVE_RESPONSE: Final = wire.LINK_REMOVE_RESPONSE

# WAN_REJECT reasons.
CERT_HIVE_MISMATCH: Final = "CERT_HIVE_MISMATCH"
HIVE_NOT_AUTHORIZED: Final = "HIVE_NOT_AUTHORIZED"
MESH_HIVE_MISMATCH: Final = "MESH_HIVE_MISMATCH"
SAME_HIVE: Final = "SAME_HIVE"
ROLE_MISMATCH: Final = "ROLE_MISMATCH"
PROTOCOL_UNSUPPORTED: Final = "PROTOCOL_UNSUPPORTED"
SELF_LINK: Final = "SELF_LINK"
INVALID_HELLO: Final = wire.INVALID_HELLO
DUPLICATE_LINK: Final = "DUPLICATE_LINK"

# Why a session closed or a frame from a link was dropped (counters, status `reason`).
DEAD_INTERVAL: Final = "DEAD_INTERVAL"
HANDSHAKE_TIMEOUT: Final = "HANDSHAKE_TIMEOUT"
STALE_SEQ: Final = "STALE_SEQ"
BAD_LSA: Final = "BAD_LSA"
LINK_SRC_NOT_ADVERTISED: Final = "LINK_SRC_NOT_ADVERTISED"
UNEXPECTED_FRAME: Final = "UNEXPECTED_FRAME"

Role = Literal["wan", "mesh"]

MAX_PARTS: Final = 1024
"""Frames one origin's advert may span (about 400,000 nodes)."""
MAX_PATH: Final = 64
"""Hives in one advert's path."""
LSA_NODE_BUDGET: Final = wire.PAYLOAD_BUDGET - 2048
"""Encoded bytes of node entries one LSA frame may carry (the rest of the payload is small)."""


class Timers(msgspec.Struct, forbid_unknown_fields=False):
    hello_interval_ms: int
    dead_interval_ms: int


class LinkHello(msgspec.Struct, forbid_unknown_fields=False):
    protocol: str
    router_id: str
    router_name: str
    hive_id: str
    timers: Timers
    role: str = "wan"  # the original's gateways send no role: they are WAN peers
    capabilities: list[str] = msgspec.field(default_factory=list)


class Negotiated(msgspec.Struct):
    protocol: str
    hello_interval_ms: int
    dead_interval_ms: int


class WanAccept(msgspec.Struct):
    peer_router_id: str
    negotiated: Negotiated


class WanReject(msgspec.Struct):
    reason: str
    message: str


class NodeAd(msgspec.Struct, frozen=True):
    """One node as an advert carries it."""

    uuid: str
    name: str
    vpn_id: int = 0


class LsaPayload(msgspec.Struct, forbid_unknown_fields=False):
    hive: str
    router_id: str
    router_name: str
    seq: int
    timestamp: int
    origin: str
    path: list[str]
    version: int
    part: int
    parts: int
    nodes: list[NodeAd]


class Ping(msgspec.Struct):
    sent_ms: float


_hello_decoder: Final = msgspec.json.Decoder(LinkHello)
_accept_decoder: Final = msgspec.json.Decoder(WanAccept)
_reject_decoder: Final = msgspec.json.Decoder(WanReject)
_lsa_decoder: Final = msgspec.json.Decoder(LsaPayload)
_ping_decoder: Final = msgspec.json.Decoder(Ping)


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the peer: the WAN_REJECT reason and message."""

    reason: str
    message: str


def control_frame(src: str, msg: str, payload: Any) -> bytes:
    """A link control frame: system type, ``dst`` null, ttl 1, a fresh trace id."""
    return wire.system_frame(src, None, msg, payload, trace_id=wire.new_trace_id(), ttl=1)


def hello(router_id: str, router_name: str, hive_id: str, role: Role, hello_ms: int, dead_ms: int) -> LinkHello:
    return LinkHello(protocol=PROTOCOL, router_id=router_id, router_name=router_name, hive_id=hive_id,
                     timers=Timers(hello_ms, dead_ms), role=role, capabilities=list(CAPABILITIES))


def parse_hello(raw: bytes | msgspec.Raw) -> LinkHello | Reject:
    try:
        h = _hello_decoder.decode(raw)
    except msgspec.DecodeError as err:
        return Reject(INVALID_HELLO, f"HELLO payload: {err}")
    if not wire.is_uuid(h.router_id):
        return Reject(INVALID_HELLO, f"router_id {h.router_id!r} is not a UUID")
    if not HIVE_ID_RE.match(h.hive_id):
        return Reject(INVALID_HELLO, f"hive_id {h.hive_id!r} breaks the hive id grammar")
    if h.timers.hello_interval_ms <= 0 or h.timers.dead_interval_ms <= h.timers.hello_interval_ms:
        return Reject(INVALID_HELLO, "timers: need 0 < hello_interval_ms < dead_interval_ms")
    return h


@dataclass(frozen=True, slots=True)
class Expect:
    """What this side accepts in a peer's HELLO."""

    own_hive: str
    own_router_id: str
    role: Role
    authorized: frozenset[str] = frozenset()
    """WAN: hives allowed (empty: any hive the CA vouches for)."""
    refused: frozenset[str] = frozenset()
    """WAN: hives unlinked by LINK_REMOVE, refused whatever ``authorized`` says."""


def check_hello(h: LinkHello, cert_hive: str | None, expect: Expect) -> Reject | None:
    """Whether to accept a parsed HELLO; ``cert_hive`` is the hive of the peer's verified certificate
    (None only on a ``--link-insecure-dev`` link, where the claim is believed)."""
    if h.protocol != PROTOCOL and not h.protocol.startswith(PROTOCOL + "."):
        return Reject(PROTOCOL_UNSUPPORTED, f"protocol {h.protocol!r} is not {PROTOCOL}")
    if h.role != expect.role:
        return Reject(ROLE_MISMATCH, f"a {h.role} HELLO on a {expect.role} link")
    if cert_hive is not None and h.hive_id != cert_hive:
        return Reject(CERT_HIVE_MISMATCH, f"HELLO claims hive {h.hive_id!r} but the certificate is for {cert_hive!r}")
    if h.router_id == expect.own_router_id:
        return Reject(SELF_LINK, "this is a link to ourselves")
    if expect.role == "mesh":
        if h.hive_id != expect.own_hive:
            return Reject(MESH_HIVE_MISMATCH, f"a mesh peer of hive {h.hive_id!r}; this is hive {expect.own_hive!r}")
        return None
    if h.hive_id == expect.own_hive:
        return Reject(SAME_HIVE, f"hive {h.hive_id!r} is this hive: routers of one hive link over the mesh")
    if h.hive_id in expect.refused:
        return Reject(HIVE_NOT_AUTHORIZED, f"hive {h.hive_id!r} was unlinked")
    if expect.authorized and h.hive_id not in expect.authorized:
        return Reject(HIVE_NOT_AUTHORIZED, f"hive {h.hive_id!r} is not in the authorised hives")
    return None


def negotiate(own: Timers, peer: Timers) -> Negotiated:
    """The shorter hello and the longer dead interval of the two sides."""
    return Negotiated(protocol=PROTOCOL, hello_interval_ms=min(own.hello_interval_ms, peer.hello_interval_ms),
                      dead_interval_ms=max(own.dead_interval_ms, peer.dead_interval_ms))


def parse_accept(raw: bytes | msgspec.Raw) -> WanAccept | None:
    try:
        return _accept_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def parse_reject(raw: bytes | msgspec.Raw) -> WanReject:
    try:
        return _reject_decoder.decode(raw)
    except msgspec.DecodeError:
        return WanReject(reason="UNKNOWN", message=bytes(raw).decode("utf-8", "replace")[:200])


def parse_ping(raw: bytes | msgspec.Raw) -> Ping | None:
    try:
        return _ping_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def parse_lsa(raw: bytes | msgspec.Raw) -> LsaPayload | Reject:
    try:
        lsa = _lsa_decoder.decode(raw)
    except msgspec.DecodeError as err:
        return Reject(BAD_LSA, f"LSA payload: {err}")
    if not 0 <= lsa.part < lsa.parts or lsa.parts > MAX_PARTS:
        return Reject(BAD_LSA, f"part {lsa.part} of {lsa.parts}")
    for hive in (lsa.hive, lsa.origin, *lsa.path):
        if not HIVE_ID_RE.match(hive):
            return Reject(BAD_LSA, f"{hive!r} is not a hive id")
    if len(lsa.path) > MAX_PATH:
        return Reject(BAD_LSA, f"a path of {len(lsa.path)} hives (at most {MAX_PATH})")
    for node in lsa.nodes:
        if not wire.is_uuid(node.uuid) or "@" not in node.name or len(node.name) > 256:
            return Reject(BAD_LSA, f"node entry {node.uuid!r} {node.name!r}")
    return lsa


def lsa_payloads(*, hive: str, router_id: str, router_name: str, origin: str, path: Sequence[str], version: int,
                 nodes: Sequence[NodeAd], seqs: Iterator[int], now_ms: int) -> list[LsaPayload]:
    """One origin's advert cut into LSA payloads that each fit in a frame (at least one, even empty)."""
    chunks: list[list[NodeAd]] = [[]]
    used = 0
    for node in nodes:
        size = len(node.uuid) + len(node.name.encode()) + 40
        if chunks[-1] and used + size > LSA_NODE_BUDGET:
            chunks.append([])
            used = 0
        chunks[-1].append(node)
        used += size
    return [LsaPayload(hive=hive, router_id=router_id, router_name=router_name, seq=next(seqs), timestamp=now_ms,
                       origin=origin, path=list(path), version=version, part=i, parts=len(chunks), nodes=chunk)
            for i, chunk in enumerate(chunks)]
