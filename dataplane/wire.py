"""The Fluxbee wire protocol: frames, envelopes and system message names.

A frame is a 4-byte big-endian unsigned length (the body size, header
excluded) followed by a UTF-8 JSON body ``{routing, meta, payload}``.  This is
the framing of the original Fluxbee SDKs, so their Go and Rust nodes can join
a Python hive.

Invariants:

* A body is at most :data:`MAX_FRAME` bytes (128 KiB, the original code's
  limit).  A larger length header is a protocol error: the reader raises
  :class:`FrameTooLargeError` *before* buffering the body.
* ``routing.dst`` is tri-state: JSON ``null`` (resolve by identity/policy),
  the literal ``"broadcast"``, or a string (a UUID means L1, anything else an
  L2 name).  Other JSON types are rejected by the decoder.
* The router never decodes ``payload`` and never re-encodes ``meta``: both
  travel as :class:`msgspec.Raw` byte slices, so fields it does not know are
  forwarded unchanged (:class:`RawEnvelope`).

This module does no I/O and imports nothing else of ours but the optional C
extension (:mod:`fluxbee.dataplane._native`), which cuts frames faster.
"""

from __future__ import annotations

import itertools
import os
import struct
import uuid as _uuid
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec

from fluxbee.dataplane import _native
from fluxbee.errors import CodedError

MAX_FRAME: Final = 128 * 1024
PAYLOAD_BUDGET: Final = MAX_FRAME - 4 * 1024
"""The encoded payload size a reply or a write may use and still fit in one frame: 4 KiB are left
for the routing header and a system meta.  Paged replies (router status, ILK listings) fill pages up
to it, and writes that must reach a node as one message (a node's config) are refused beyond it."""
HEADER: Final = struct.Struct(">I")
HEADER_SIZE: Final = HEADER.size

DEFAULT_TTL: Final = 16
BROADCAST: Final = "broadcast"

# meta.type values
TYPE_USER: Final = "user"
TYPE_SYSTEM: Final = "system"
TYPE_ADMIN: Final = "admin"
TYPE_QUERY: Final = "query"
TYPE_QUERY_RESPONSE: Final = "query_response"

# System message names (meta.msg), as in the original.
HELLO: Final = "HELLO"
ANNOUNCE: Final = "ANNOUNCE"
WITHDRAW: Final = "WITHDRAW"
ECHO: Final = "ECHO"
ECHO_REPLY: Final = "ECHO_REPLY"
UNREACHABLE: Final = "UNREACHABLE"
TTL_EXCEEDED: Final = "TTL_EXCEEDED"
CONFIG_CHANGED: Final = "CONFIG_CHANGED"
CONFIG_RESPONSE: Final = "CONFIG_RESPONSE"
CONFIG_GET: Final = "CONFIG_GET"
CONFIG_SET: Final = "CONFIG_SET"
NODE_STATUS_GET: Final = "NODE_STATUS_GET"
NODE_STATUS_GET_RESPONSE: Final = "NODE_STATUS_GET_RESPONSE"
ADMIN_COMMAND: Final = "ADMIN_COMMAND"
ADMIN_COMMAND_RESPONSE: Final = "ADMIN_COMMAND_RESPONSE"
# Ours (not in the original): the router's own status, and the reason a
# connection is about to be closed by the router.
# Ours: link control, to the router (fluxbee.dataplane.link), privileged like CONFIG_CHANGED.
LINK_ADD: Final = "LINK_ADD"
LINK_ADD_RESPONSE: Final = "LINK_ADD_RESPONSE"
LINK_REMOVE: Final = "LINK_REMOVE"
LINK_REMOVE_RESPONSE: Final = "LINK_REMOVE_RESPONSE"
ROUTER_STATUS_GET: Final = "ROUTER_STATUS_GET"
ROUTER_STATUS_GET_RESPONSE: Final = "ROUTER_STATUS_GET_RESPONSE"
PROTOCOL_ERROR: Final = "PROTOCOL_ERROR"
# The policy region's reload signal (as in the original; privileged like CONFIG_CHANGED), and ours:
# the router's answer to it and the audit of its policy decisions (README: Routing policies).
OPA_RELOAD: Final = "OPA_RELOAD"
OPA_RELOAD_RESPONSE: Final = "OPA_RELOAD_RESPONSE"
OPA_DECISIONS_GET: Final = "OPA_DECISIONS_GET"
OPA_DECISIONS_GET_RESPONSE: Final = "OPA_DECISIONS_GET_RESPONSE"

# UNREACHABLE reasons, as in the original.
NODE_NOT_FOUND: Final = "NODE_NOT_FOUND"
VPN_BLOCKED: Final = "VPN_BLOCKED"
PEER_UNAVAILABLE: Final = "PEER_UNAVAILABLE"
GATEWAY_UNAVAILABLE: Final = "GATEWAY_UNAVAILABLE"
WAN_UNAVAILABLE: Final = "WAN_UNAVAILABLE"
OPA_ERROR: Final = "OPA_ERROR"
OPA_NO_TARGET: Final = "OPA_NO_TARGET"
# Ours: the policy's allow rule refused a message carrying meta.action.
POLICY_DENIED: Final = "POLICY_DENIED"
# Ours: the frame's routing.src is not the connection's node (anti-spoofing).
SRC_MISMATCH: Final = "SRC_MISMATCH"
# Ours: the destination's outbound buffer is full (slow consumer).
DST_CONGESTED: Final = "DST_CONGESTED"

# PROTOCOL_ERROR reasons (ours).
FRAME_TOO_LARGE: Final = "FRAME_TOO_LARGE"
MALFORMED_FRAME: Final = "MALFORMED_FRAME"
HELLO_REQUIRED: Final = "HELLO_REQUIRED"
INVALID_HELLO: Final = "INVALID_HELLO"
SLOW_CONSUMER: Final = "SLOW_CONSUMER"
REPLACED: Final = "REPLACED"


class ProtocolError(CodedError):
    """Input that breaks the wire contract; ``code`` is a PROTOCOL_ERROR reason."""

    @property
    def reason(self) -> str:
        """``code``, under the name of the PROTOCOL_ERROR field it fills."""
        return self.code


class FrameTooLargeError(ProtocolError):
    def __init__(self, size: int, max_size: int = MAX_FRAME) -> None:
        super().__init__(FRAME_TOO_LARGE, f"frame of {size} bytes exceeds the {max_size}-byte limit")
        self.size = size
        self.max_size = max_size


class Routing(msgspec.Struct, omit_defaults=True):
    """Routing header.  ``dst`` is always encoded (``null`` means resolve)."""

    src: str
    dst: str | None
    ttl: Annotated[int, msgspec.Meta(ge=0, le=255)]
    trace_id: str
    src_l2_name: str | None = None


class Meta(msgspec.Struct, omit_defaults=True):
    """The meta fields a node usually sets; absent optional fields are omitted.

    ``type`` is required on the wire (as in the original): the SDK fills an
    empty ``type`` with the message type it sends, so it is always encoded.

    The router reads meta through :class:`MetaView` and forwards the original
    bytes, so keys not listed here still travel between nodes.
    """

    type: str = ""
    msg: str | None = None
    scope: str | None = None
    target: str | None = None
    action: str | None = None
    priority: str | None = None
    src_ilk: str | None = None
    dst_ilk: str | None = None
    ich: str | None = None
    thread_id: str | None = None
    thread_seq: int | None = None
    context: dict[str, Any] | None = None


class MetaView(msgspec.Struct, frozen=True):
    """The part of meta the router decides on; unknown keys are ignored (frozen: the router memoises them)."""

    type: str = TYPE_USER
    msg: str | None = None
    scope: str | None = None
    target: str | None = None
    src_ilk: str | None = None
    dst_ilk: str | None = None
    action: Any = None  # free-form in meta: only a string is an action (a policy's allow rule guards it)


class Message(msgspec.Struct):
    """A fully decoded message, as nodes see it."""

    routing: Routing
    meta: Meta = msgspec.field(default_factory=lambda: Meta(type=TYPE_USER))
    payload: Any = None


class RawEnvelope(msgspec.Struct):
    """A message whose meta and payload stay undecoded byte slices."""

    routing: Routing
    meta: msgspec.Raw = msgspec.Raw(b"{}")
    payload: msgspec.Raw = msgspec.Raw(b"null")


class HelloPayload(msgspec.Struct):
    uuid: str
    name: str
    version: str = "1"


class HelloProofPayload(HelloPayload, kw_only=True):
    """HELLO with ``credential``: the token that proves a claimed name (ours; the original SDKs send none).

    A subclass rather than an optional field, so a HELLO without proof stays byte for byte the original's.
    """

    credential: str


def hello_payload(uuid: str, name: str, version: str = "1", credential: str | None = None) -> HelloPayload:
    return HelloPayload(uuid, name, version) if credential is None else HelloProofPayload(
        uuid, name, version, credential=credential)


class AnnouncePayload(msgspec.Struct):
    uuid: str
    name: str
    status: str
    vpn_id: int
    router_name: str


class UnreachablePayload(msgspec.Struct, omit_defaults=True):
    original_dst: str
    reason: str
    detail: str | None = None


class TtlExceededPayload(msgspec.Struct):
    original_dst: str
    last_hop: str


class ProtocolErrorPayload(msgspec.Struct):
    reason: str
    detail: str


raw_decoder: Final = msgspec.json.Decoder(RawEnvelope)
"""Decodes a frame body for routing (``decode_raw`` without the error translation, for hot paths)."""
meta_decoder: Final = msgspec.json.Decoder(MetaView)
message_decoder: Final = msgspec.json.Decoder(Message)
"""Decodes a frame body to a :class:`Message` (raises msgspec errors; :func:`decode_message` wraps them)."""
encoder: Final = msgspec.json.Encoder()
"""The JSON encoder every frame goes through (hot paths bind its ``encode``)."""
_pack_header: Final = HEADER.pack


def is_uuid(value: str) -> bool:
    """True for a canonical UUID string (dashed or 32 hex digits)."""
    if len(value) not in (32, 36):
        return False
    try:
        _uuid.UUID(value)
    except ValueError:
        return False
    return True


def canonical_uuid(value: str) -> str:
    """Lowercase dashed form; raises ValueError for anything that is not a UUID."""
    if len(value) not in (32, 36):
        raise ValueError(f"not a UUID: {value!r}")
    return str(_uuid.UUID(value))


# Trace ids: UUID-shaped, a random per-process prefix and a counter.  uuid4() makes a getrandom
# system call per id; this makes none and stays unique: 74 random bits per process
# (drawn again in a forked child) plus a 48-bit counter.  The result parses as a version-4 UUID,
# which broadcasts require (the router de-duplicates on it).  A plain function over module state,
# not an object with __call__: it runs once per message sent.
_trace_prefix = ""
_trace_counter = itertools.count()


def _reseed_trace_ids() -> None:
    global _trace_prefix, _trace_counter
    r = _uuid.uuid4().hex
    variant = "89ab"[int(r[16], 16) & 3]
    _trace_prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{variant}{r[17:20]}-"
    _trace_counter = itertools.count()
    if _native.speedups is not None:
        _native.speedups.trace_seed(_trace_prefix)


_reseed_trace_ids()
os.register_at_fork(after_in_child=_reseed_trace_ids)


def new_trace_id_py() -> str:
    """A fresh trace id (see above)."""
    # %-formatting: faster here than an f-string or format()
    return "%s%012x" % (_trace_prefix, next(_trace_counter) & 0xFFFFFFFFFFFF)  # noqa: UP031


new_trace_id: Final[Callable[[], str]] = _native.choose(__name__, "new_trace_id", "trace_id", new_trace_id_py)
"""A fresh trace id: the C extension writes the same text several times faster.  The two keep
separate counters over the same prefix, so a process uses one of them (this one), never both."""


def decode_raw(body: bytes | memoryview) -> RawEnvelope:
    """Decode a frame body for routing; raises :class:`ProtocolError` on bad input."""
    try:
        return raw_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(MALFORMED_FRAME, str(err)) from err


def decode_meta(raw: msgspec.Raw) -> MetaView:
    try:
        return meta_decoder.decode(raw)
    except msgspec.DecodeError as err:
        raise ProtocolError(MALFORMED_FRAME, f"meta: {err}") from err


def decode_message(body: bytes | memoryview) -> Message:
    try:
        return message_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(MALFORMED_FRAME, str(err)) from err


def encode_frame(obj: msgspec.Struct | dict[str, Any]) -> bytes:
    """Encode a message with its length prefix.

    Raises :class:`FrameTooLargeError` if the body would exceed the limit: the
    sender learns before anything is written.  (Encoding to bytes and
    prepending the header is faster than ``encode_into`` a
    bytearray with room for the header, which needs a final copy anyway.)
    """
    body = encoder.encode(obj)
    size = len(body)
    if size > MAX_FRAME:
        raise FrameTooLargeError(size)
    return _pack_header(size) + body


def encode(obj: Any) -> bytes:
    """JSON-encode a payload value (no frame header)."""
    return encoder.encode(obj)


def system_frame(
    src: str, dst: str | None, msg: str, payload: Any, *, trace_id: str, ttl: int = DEFAULT_TTL,
    src_l2_name: str | None = None,
) -> bytes:
    """A router- or node-originated system message, framed."""
    return encode_frame(
        Message(
            routing=Routing(src=src, dst=dst, ttl=ttl, trace_id=trace_id, src_l2_name=src_l2_name),
            meta=Meta(type=TYPE_SYSTEM, msg=msg),
            payload=payload,
        )
    )


class FrameReader:
    """Incremental frame splitter: feed bytes, get complete frame bodies.

    Pure and synchronous.  The buffer never holds more than one partial frame
    plus what was fed, and a header announcing more than ``max_frame`` bytes
    raises at once, so a peer cannot make us buffer an oversize body.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Append ``data``; return every complete frame body, in order."""
        buf = self._buf
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        else:
            src = data if isinstance(data, bytes) else bytes(data)  # fast path: slice the read directly
        frames: list[bytes]
        if _split is not None:
            frames, pos, oversize = _split(src, self._max)
            if oversize:
                self._buf = bytearray()
                raise FrameTooLargeError(oversize, self._max)
        else:
            frames, pos = self._split_py(src)
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < len(src):
            self._buf = bytearray(src[pos:])
        return frames

    def _split_py(self, src: bytes | bytearray) -> tuple[list[bytes], int]:
        frames: list[bytes] = []
        pos = 0
        end = len(src)
        unpack = HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            (size,) = unpack(src, pos)
            if size > self._max:
                self._buf = bytearray()
                raise FrameTooLargeError(size, self._max)
            stop = pos + HEADER_SIZE + size
            if stop > end:
                break
            body = src[pos + HEADER_SIZE : stop]
            frames.append(body if isinstance(body, bytes) else bytes(body))
            pos = stop
        return frames, pos


_split: Final[Callable[[bytes | bytearray | memoryview, int], tuple[list[bytes], int, int]] | None] = (
    _native.choose(__name__, "_split", "split", None))
