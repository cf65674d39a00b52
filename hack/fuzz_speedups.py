"""Mutation fuzzing of the C fast path against msgspec (run by hack/check-speedups.sh under ASan/UBSan).

Valid frames are mutated (bytes replaced, dropped, inserted, cut); every frame ``scan`` accepts
must decode the same way in msgspec and be stamped exactly as the router's general path would.
``extend`` must take exactly the frames ``scan`` takes with the same destination and meta, ``hop``
(the link side) only such frames with ``ttl >= 2``, re-written exactly as msgspec would with ``ttl - 1``,
and ``split`` must never claim more bytes than it was given.  The ``dst: null`` splicer gets the same
treatment on mutated ``dst: null`` frames: what ``scan_null`` accepts ``splice_null`` writes as
msgspec would, for any ``cut`` it stays inside the body, and ``extend_null`` takes the frames
``scan_null`` takes with the same meta.  Deterministic for a given seed.
"""

from __future__ import annotations

import ctypes
import random
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

import test_fastpath as cases  # noqa: E402
import test_nullpath as nulls  # noqa: E402

from fluxbee.dataplane import _native, wire  # noqa: E402

ALPHABET = b'{}[]",:\\0123456789.eE+-tfnul \t\x00\x1f\x7f\x80\xbf\xc3\xed\xf0\xf4\xff'


def _run(scan: Any, bodies: list[bytes], first: tuple[str, bytes, bytes], soft: int, hard: int) -> tuple[bytes, int]:
    """What ``extend`` must return, frame by frame through ``scan``."""
    out = b""
    count = 0
    for body in bodies:
        hit = scan(body, cases.NODE_B, cases.STAMP)
        if len(out) >= soft or hit is None or hit[:2] != first[:2] or len(out) + len(hit[2]) > hard:
            break
        out += hit[2]
        count += 1
    return out, count


def _hopped(body: bytes, first: tuple[str, bytes, bytes]) -> bytes | None:
    """What ``hop`` must make of ``body`` (None: it must not take it)."""
    hit = cases.expected(body)
    if hit is None or hit[:2] != first[:2]:
        return None
    env = wire.decode_raw(body)
    if env.routing.ttl < 2:
        return None
    env.routing.ttl -= 1
    return wire.encode_frame(env)


def main(seed: int, count: int) -> int:
    speedups = _native.speedups
    if speedups is None:
        print(f"fuzz_speedups: the C extension is not loaded ({_native.IMPLEMENTATION})", file=sys.stderr)
        return 1
    rng = random.Random(seed)
    seeds = [
        cases.frame_body(),
        cases.frame_body(payload={"a": [1, -2.5e10, None, True, "ü🐝\\n\"q\""], "b": {"c": {}}}),
        cases.frame_body(str(uuid.uuid4()), meta={"type": "user", "thread_id": "t", "context": {"k": [1, {"z": 0}]}}),
        cases.frame_body(payload=[[[[[[[[1]]]]]]]]),
        cases.frame_body(payload="x").replace(b'"payload":"x"}', b'"payload":"\\u00e9\\ud83d\\ude00\\/"}'),
    ]
    accepted = 0
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            if not data:
                break
            at = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[at] = rng.randrange(256)
            elif op < 0.6:
                del data[at]
            elif op < 0.8:
                data.insert(at, rng.choice(ALPHABET))
            else:
                del data[at:]
        body = bytes(data)
        got = speedups.scan(body, cases.NODE_B, cases.STAMP)
        if got is not None:
            accepted += 1
            if got != cases.expected(body):
                print(f"fuzz_speedups: scan and msgspec disagree on {body!r}", file=sys.stderr)
                return 1
        # The same bytes in a buffer allocated to their exact size (bytes objects end in a NUL that
        # would stop a runaway read): under ASan a read past the end aborts; otherwise it may show
        # as a different answer.
        exact = (ctypes.c_char * len(body)).from_buffer_copy(body) if body else b""
        if speedups.scan(exact, cases.NODE_B, cases.STAMP) != got:
            print(f"fuzz_speedups: scan read past the end of {body!r}", file=sys.stderr)
            return 1
        first = speedups.scan(seeds[0], cases.NODE_B, cases.STAMP)
        assert first is not None
        run = [seeds[0], body, seeds[0]]
        soft, hard = rng.choice([10**6, rng.randrange(1, 2000)]), rng.choice([10**6, rng.randrange(0, 2000)])
        if speedups.extend(run, 0, cases.NODE_B, cases.STAMP, first[0], first[1], soft, hard) != _run(
                speedups.scan, run, first, soft, hard):
            print(f"fuzz_speedups: extend and scan disagree on {body!r}", file=sys.stderr)
            return 1
        data_out, taken = speedups.hop([body], 0, cases.NODE_B, first[0], first[1], 10**6, 1)
        if taken and data_out != _hopped(body, first):
            print(f"fuzz_speedups: hop and msgspec disagree on {body!r}", file=sys.stderr)
            return 1
        stream = len(body).to_bytes(4, "big") + body + body[: rng.randrange(len(body) + 1)]
        _, used, _ = speedups.split(stream, rng.randrange(0, 2 * len(body) + 1))
        if not 0 <= used <= len(stream):
            print(f"fuzz_speedups: split claimed {used} of {len(stream)} bytes", file=sys.stderr)
            return 1
    print(f"fuzz_speedups: {count} mutated frames (seed {seed}), {accepted} accepted, all as msgspec reads them")
    return fuzz_null(speedups, rng, count // 2)


def fuzz_null(speedups: Any, rng: random.Random, count: int) -> int:
    """The dst:null splicer on mutated dst:null frames (see the module docstring)."""
    accepted = 0
    seeds = nulls.BODIES
    meta = speedups.scan_null(seeds[0], cases.NODE_B)[0]
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            if not data:
                break
            at = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[at] = rng.randrange(256)
            elif op < 0.6:
                del data[at]
            elif op < 0.8:
                data.insert(at, rng.choice(ALPHABET))
            else:
                del data[at:]
        body = bytes(data)
        exact = (ctypes.c_char * len(body)).from_buffer_copy(body) if body else b""
        hit = speedups.scan_null(exact, cases.NODE_B)
        if hit is not None:
            accepted += 1
            got = (hit[0], speedups.splice_null(exact, cases.NODE_B, hit[1], cases.STAMP, nulls.DST))
            if got != nulls.expected(body):
                print(f"fuzz_speedups: scan_null/splice_null and msgspec disagree on {body!r}", file=sys.stderr)
                return 1
        for cut in (rng.randrange(-2, len(body) + 3), len(body) - 1):
            speedups.splice_null(exact, cases.NODE_B, cut, cases.STAMP, nulls.DST)  # never outside the body
        run = [seeds[0], body, seeds[0]]
        soft, hard = rng.choice([10**6, rng.randrange(1, 2000)]), rng.choice([10**6, rng.randrange(0, 2000)])
        want = nulls.runs(speedups.scan_null, speedups.splice_null, run, 0, meta, soft, hard)
        if speedups.extend_null(run, 0, cases.NODE_B, cases.STAMP, nulls.DST, meta, soft, hard) != want:
            print(f"fuzz_speedups: extend_null and scan_null disagree on {body!r}", file=sys.stderr)
            return 1
    print(f"fuzz_speedups: {count} mutated dst:null frames, {accepted} accepted, all as msgspec reads them")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 200_000))
