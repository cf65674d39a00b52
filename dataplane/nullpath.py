"""The router's fast path for ``dst: null`` frames: check an envelope, then splice the decided ``dst`` in.

A ``dst: null`` frame is decided by the hive's routing policy (:mod:`fluxbee.dataplane.router.policy`);
once that decision is cached, the router's fast lane (:mod:`fluxbee.dataplane.router.nullroute`) needs
only the frame's meta bytes (the cache key) and, once it has picked the node, the frame as the general
path would write it: ``routing.dst`` set to the node's UUID and ``src_l2_name`` stamped in.

* ``scan_null(body, node)`` returns ``(meta, cut)`` for a frame the lane may take, or None: the
  envelope is well-formed, ``routing.src`` is ``node`` (the connection's UUID as bytes), ``dst`` is
  ``null``, ``ttl > 0``; ``meta`` is the bytes of the meta object and ``cut`` where routing ends in
  the body (for the C ``splice_null``; the Python one ignores it).
* ``splice_null(body, node, cut, stamp, dst)`` returns the frame to forward (length header included):
  what re-encoding the envelope with ``dst`` and ``src_l2_name`` writes, or None when the frame would
  pass the size limit or ``dst`` is not plain printable ASCII (the general path answers those).
* ``extend_null(bodies, start, node, stamp, dst, meta, soft, hard)`` is
  :func:`fluxbee.dataplane.fastpath.extend` for these frames: the run at ``bodies[start:]`` that
  ``scan_null`` takes with this same meta, spliced and joined, up to ``soft``/``hard`` bytes.

Two implementations give the same frames: the C extension (``_speedups.c``, canonical compact
envelopes only, like ``fastpath.scan``) and the Python functions below, which take whatever msgspec
decodes. ``tests/unit/test_nullpath.py`` compares both with msgspec on built and mutated frames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from fluxbee.dataplane import _native, wire
from fluxbee.dataplane.fastpath import stamp_name

ScanNull = Callable[[bytes, bytes], "tuple[bytes, int] | None"]
SpliceNull = Callable[[bytes, bytes, int, bytes, str], "bytes | None"]
ExtendNull = Callable[[list[bytes], int, bytes, bytes, str, bytes, int, int], "tuple[bytes, int]"]

_decode_raw = wire.raw_decoder.decode
_encode = wire.encoder.encode
_pack_header = wire.HEADER.pack


def scan_null_py(body: bytes, node: bytes) -> tuple[bytes, int] | None:
    """Pure-Python :func:`scan_null` (``cut`` is 0: :func:`splice_null_py` re-encodes instead)."""
    try:
        env = _decode_raw(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    routing = env.routing
    if routing.dst is not None or routing.ttl == 0 or routing.src_l2_name is not None \
            or routing.src.encode() != node:
        return None
    meta = bytes(env.meta)
    if meta[:1] != b"{":
        return None
    return meta, 0


def plain(text: str) -> bool:
    """Whether ``text`` is printable ASCII without a quote or backslash (JSON-encodes as itself)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def splice_null_py(body: bytes, node: bytes, cut: int, stamp: bytes, dst: str) -> bytes | None:
    """Pure-Python :func:`splice_null`."""
    if scan_null_py(body, node) is None or not plain(dst):
        return None
    env = _decode_raw(body)
    env.routing.dst = dst
    env.routing.src_l2_name = stamp_name(stamp)
    out = _encode(env)
    if len(out) > wire.MAX_FRAME:
        return None
    return _pack_header(len(out)) + out


def extend_null_py(bodies: list[bytes], start: int, node: bytes, stamp: bytes, dst: str, meta: bytes,
                   soft: int, hard: int) -> tuple[bytes, int]:
    """Pure-Python :func:`extend_null`."""
    out: list[bytes] = []
    total = 0
    for index in range(max(start, 0), len(bodies)):
        if total >= soft:
            break
        hit = scan_null_py(bodies[index], node)
        if hit is None or hit[0] != meta:
            break
        frame = splice_null_py(bodies[index], node, hit[1], stamp, dst)
        if frame is None or len(frame) > hard - total:
            break
        out.append(frame)
        total += len(frame)
    return b"".join(out), len(out)


scan_null: Final[ScanNull] = _native.choose(__name__, "scan_null", "scan_null", scan_null_py)
splice_null: Final[SpliceNull] = _native.choose(__name__, "splice_null", "splice_null", splice_null_py)
extend_null: Final[ExtendNull] = _native.choose(__name__, "extend_null", "extend_null", extend_null_py)
