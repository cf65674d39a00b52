"""The router's fast path: check an envelope and stamp ``src_l2_name``, for one frame or a run of them.

``scan(body, node, stamp)`` returns ``(dst, meta, frame)`` for a frame the
router may forward without decoding it into Python objects, or ``None`` when
the frame must take the router's general path (msgspec decoding and every
error reply):

* ``dst`` — ``routing.dst`` (a string; ``null`` destinations return None);
* ``meta`` — the bytes of the ``meta`` object, for the router's memo of decoded metas;
* ``frame`` — length header plus the body with ``stamp`` (``,"src_l2_name":"…"``)
  added at the end of ``routing``: what re-encoding the envelope would write.

``node`` is the connection's UUID as bytes: a frame whose ``routing.src``
differs returns None (the general path answers SRC_MISMATCH), as does
``ttl == 0`` (TTL_EXCEEDED).

``extend(bodies, start, node, stamp, dst, meta, soft, hard)`` returns
``(data, count)``: the frames at ``bodies[start:]`` that :func:`scan` takes
with this same ``dst`` and ``meta``, stamped and joined, so the router handles
a burst to one destination as one run instead of frame by frame.  The run
ends at the first frame that differs, before a frame once ``soft`` bytes are
reached, and before a frame that would take it past ``hard`` bytes (the
router's high-water and buffer limits; it then decides that frame on its own).

``hop(bodies, start, node, dst, meta, hard, limit)`` returns ``(data, count)``
for a link: up to ``limit`` frames at ``bodies[start:]`` that :func:`scan` takes
from ``node`` with this ``dst`` and ``meta`` and whose ``ttl`` is at least 2,
each re-written with ``ttl - 1`` and without a ``src_l2_name`` stamp (the router
at the far end of the link stamps the name its peer advertised), joined; the
run ends at the first frame that differs and before one that would take it
past ``hard`` bytes.

Two implementations give the same answers: the C extension
``fluxbee.dataplane._speedups`` (built when the package is installed, if a C
compiler is present) and :func:`scan_py` below.  The C one accepts only the
canonical compact envelope and returns None for anything else, so it can
never pass on what msgspec would refuse; ``tests/unit/test_fastpath.py``
compares both with msgspec on generated and mutated frames.  Set
``FLUXBEE_PURE_PYTHON=1`` to run without the extension (:mod:`._native`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from fluxbee.dataplane import _native, wire

Scan = Callable[[bytes, bytes, bytes], "tuple[str, bytes, bytes] | None"]
Extend = Callable[[list[bytes], int, bytes, bytes, str, bytes, int, int], "tuple[bytes, int]"]
Hop = Callable[[list[bytes], int, bytes, str, bytes, int, int], "tuple[bytes, int]"]

_decode_raw = wire.raw_decoder.decode
_encode = wire.encoder.encode
_pack_header = wire.HEADER.pack


def scan_py(body: bytes, node: bytes, stamp: bytes) -> tuple[str, bytes, bytes] | None:
    """Pure-Python :func:`scan` (``stamp`` is only used for its name, re-encoded by msgspec)."""
    try:
        env = _decode_raw(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    routing = env.routing
    dst = routing.dst
    if dst is None or routing.ttl == 0 or routing.src_l2_name is not None or routing.src.encode() != node:
        return None
    routing.src_l2_name = stamp_name(stamp)
    out = _encode(env)
    if len(out) > wire.MAX_FRAME:
        return None
    meta = bytes(env.meta)
    if meta[:1] != b"{":
        return None
    return dst, meta, _pack_header(len(out)) + out


_stamp_names: dict[bytes, str] = {}


def stamp_name(stamp: bytes) -> str:
    name = _stamp_names.get(stamp)
    if name is None:
        name = msgspec.json.decode(b"{" + stamp[1:] + b"}", type=dict[str, str])["src_l2_name"]
        if len(_stamp_names) > 4096:
            _stamp_names.clear()
        _stamp_names[stamp] = name
    return name


def make_stamp(name: str) -> bytes:
    """The bytes :func:`scan` inserts for a connection whose node is ``name``."""
    return b',"src_l2_name":' + _encode(name)


def extend_py(bodies: list[bytes], start: int, node: bytes, stamp: bytes, dst: str, meta: bytes,
              soft: int, hard: int) -> tuple[bytes, int]:
    """Pure-Python :func:`extend`."""
    out: list[bytes] = []
    total = 0
    for index in range(start, len(bodies)):
        if total >= soft:
            break
        hit = scan_py(bodies[index], node, stamp)
        if hit is None or hit[0] != dst or hit[1] != meta or len(hit[2]) > hard - total:
            break
        out.append(hit[2])
        total += len(hit[2])
    return b"".join(out), len(out)


def hop_py(bodies: list[bytes], start: int, node: bytes, dst: str, meta: bytes, hard: int,
           limit: int) -> tuple[bytes, int]:
    """Pure-Python :func:`hop`: the same frames, decoded and re-encoded by msgspec with ``ttl - 1``."""
    out: list[bytes] = []
    total = 0
    for index in range(start, min(len(bodies), start + max(0, limit))):
        try:
            env = _decode_raw(bodies[index])
        except (msgspec.DecodeError, UnicodeDecodeError):
            break
        routing = env.routing
        if (routing.dst != dst or routing.ttl < 2 or routing.src_l2_name is not None or routing.src.encode() != node
                or bytes(env.meta) != meta):
            break
        routing.ttl -= 1
        encoded = _encode(env)
        if len(encoded) + 4 > hard - total:
            break
        out.append(_pack_header(len(encoded)) + encoded)
        total += len(encoded) + 4
    return b"".join(out), len(out)


scan: Final[Scan] = _native.choose(__name__, "scan", "scan", scan_py)
extend: Final[Extend] = _native.choose(__name__, "extend", "extend", extend_py)
hop: Final[Hop] = _native.choose(__name__, "hop", "hop", hop_py)
IMPLEMENTATION: Final = _native.IMPLEMENTATION
"""Which implementation :data:`scan` is: ``"c"`` or why it is the Python one."""
