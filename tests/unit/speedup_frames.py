"""Frames for the fast-path tests and fuzzers: one builder, one set of mutations.

Shared by ``test_fastpath``, ``test_nullpath``, ``test_link_hop``, ``test_speedups_baseline`` and
``hack/fuzz_speedups.py`` / ``hack/diff_speedups.py`` (which put this folder on ``sys.path``).
"""

from __future__ import annotations

import random
import uuid

import msgspec
from hypothesis import strategies as st

from fluxbee.dataplane import fastpath

NODE = "0b6c7a52-3a41-4f4e-9b7e-6f8f0d1c2a3b"
NODE_B = NODE.encode()
STAMP = fastpath.make_stamp("WF.client@prod")

ALPHABET = b'{}[]",:\\0123456789.eE+-tfnul \t\x00\x1f\x7f\x80\xbf\xc3\xed\xf0\xf4\xff'
"""Bytes an inserted mutation draws from: JSON's punctuation and the bytes a string scan looks at twice."""


def frame_body(dst: str | None = "WF.echo", payload: object = "x" * 200, *, ttl: int = 16,
               meta: object = None, src: str = NODE) -> bytes:
    """A body as the SDK writes it (canonical and compact); ``meta`` given as bytes goes in as they are."""
    if meta is None:
        meta = {"type": "user"}
    elif isinstance(meta, bytes):
        meta = msgspec.Raw(meta)
    return msgspec.json.encode({
        "routing": {"src": src, "dst": dst, "ttl": ttl, "trace_id": str(uuid.uuid4())},
        "meta": meta,
        "payload": payload,
    })


# --- mutations ------------------------------------------------------------------
EDITS = st.lists(st.tuples(st.sampled_from(["flip", "drop", "insert", "cut"]), st.integers(0, 10_000),
                           st.integers(0, 255)), min_size=1, max_size=4)
"""Hypothesis edits for :func:`apply_edits`: (operation, position, byte)."""


def apply_edits(body: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """``body`` with each edit applied in turn: a byte replaced, dropped or inserted, or the rest cut off."""
    data = bytearray(body)
    for op, at, byte in edits:
        if not data:
            break
        i = at % len(data)
        if op == "flip":
            data[i] = byte
        elif op == "drop":
            del data[i]
        elif op == "insert":
            data.insert(i, byte)
        else:
            del data[i:]
    return bytes(data)


def random_edits(rng: random.Random, max_edits: int = 6) -> list[tuple[str, int, int]]:
    """1 to ``max_edits`` edits drawn by ``rng``: replace 40%, drop 20%, insert from :data:`ALPHABET` 20%,
    cut 20%."""
    edits: list[tuple[str, int, int]] = []
    for _ in range(rng.randint(1, max_edits)):
        op = rng.random()
        at = rng.randrange(1 << 20)
        if op < 0.4:
            edits.append(("flip", at, rng.randrange(256)))
        elif op < 0.6:
            edits.append(("drop", at, 0))
        elif op < 0.8:
            edits.append(("insert", at, rng.choice(ALPHABET)))
        else:
            edits.append(("cut", at, 0))
    return edits


def mutate(rng: random.Random, body: bytes, max_edits: int = 6) -> bytes:
    """``body`` after :func:`random_edits`."""
    return apply_edits(body, random_edits(rng, max_edits))
