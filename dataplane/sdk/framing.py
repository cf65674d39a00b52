"""Frame building: a node's messages encoded and framed, the usual one spliced from encoded parts.

A mixin of the SDK's connection (:class:`fluxbee.dataplane.sdk.client._Client`): its methods read
the node's ``uuid`` and the encoded head of its routing.  The C extension's ``frame`` (chosen in
:mod:`fluxbee.dataplane._native`) splices in one allocation; the Python join writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxbee.dataplane import _native, wire
from fluxbee.dataplane.sdk.errors import FrameTooLargeError
from fluxbee.dataplane.wire import Message, Meta, Routing

_PLAIN_META: dict[str, Meta] = {t: Meta(type=t) for t in (wire.TYPE_USER, wire.TYPE_SYSTEM, wire.TYPE_ADMIN)}
# The same metas as the encoded bytes between routing and payload, for _Client.build's splice,
# which writes exactly what encoding the Message would (tests/unit/test_sdk_build.py).
_PLAIN_META_BYTES: dict[str, bytes] = {
    t: b'},"meta":' + wire.encode(m) + b',"payload":' for t, m in _PLAIN_META.items()
}
_USER_META_BYTES = _PLAIN_META_BYTES[wire.TYPE_USER]
_TTL_TRACE = b',"ttl":' + str(wire.DEFAULT_TTL).encode() + b',"trace_id":'
_frame: Callable[[bytes, str | None, bytes, str, bytes, bytes], bytes | None] | None = (
    _native.choose(__name__, "_frame", "frame", None)  # splice() in one allocation
)
_MAX_WIRE = wire.MAX_FRAME + wire.HEADER_SIZE
_encode = wire.encoder.encode
_pack_header = wire.HEADER.pack
_DEFAULT_TTL = wire.DEFAULT_TTL


def encode_frame(message: Message) -> bytes:
    """:func:`wire.encode_frame`, refusing an oversize message with the SDK's :class:`FrameTooLargeError`."""
    try:
        return wire.encode_frame(message)
    except wire.FrameTooLargeError as err:
        raise FrameTooLargeError(err.size, err.max_size) from None


class _Framing:
    """Builds this node's frames (mixed into the connection)."""

    uuid: str
    _head: bytes
    """``{"routing":{"src":<uuid>,"dst":`` encoded once."""

    def build(self, dst: str | None, payload: Any, *, msg_type: str = wire.TYPE_USER, msg: str | None = None,
              trace_id: str | None = None, ttl: int = wire.DEFAULT_TTL, meta: Meta | None = None) -> bytes:
        """One framed message from this node (a fresh trace id unless one is given)."""
        return self.frame(dst, payload, trace_id or wire.new_trace_id(), msg_type, msg, meta, ttl)

    def frame(self, dst: str | None, payload: Any, trace: str, msg_type: str, msg: str | None, meta: Meta | None,
              ttl: int) -> bytes:
        """:meth:`build` with positional arguments (the per-message paths call this)."""
        if meta is None and msg is None and ttl == _DEFAULT_TTL:
            middle = _PLAIN_META_BYTES.get(msg_type)
            if middle is not None:  # the usual message: encoded parts spliced, no Structs built
                return self.splice(dst, payload, trace, middle)
        if meta is None:
            m = _PLAIN_META.get(msg_type) if msg is None else None
            if m is None:
                m = Meta(type=msg_type)
        else:
            m = meta
            if msg_type != wire.TYPE_USER or not m.type:
                m.type = msg_type
        if msg is not None:
            m.msg = msg
        return encode_frame(Message(routing=Routing(src=self.uuid, dst=dst, ttl=ttl, trace_id=trace), meta=m,
                                     payload=payload))

    def splice(self, dst: str | None, payload: Any, trace: str, middle: bytes = _USER_META_BYTES) -> bytes:
        """The frame of a plain message (default meta and TTL) from encoded parts, no Structs built."""
        if _frame is not None:
            out = _frame(self._head, dst, _TTL_TRACE, trace, middle, _encode(payload))
            if out is not None:  # None: dst or trace needs escaping
                if len(out) > _MAX_WIRE:
                    raise FrameTooLargeError(len(out) - wire.HEADER_SIZE)
                return out
        body = b"".join((self._head, _encode(dst), _TTL_TRACE, _encode(trace), middle, _encode(payload), b"}"))
        size = len(body)
        if size > wire.MAX_FRAME:
            raise FrameTooLargeError(size)
        return _pack_header(size) + body
