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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

import test_fastpath as cases  # noqa: E402
import test_nullpath as nulls  # noqa: E402
from speedup_frames import NODE_B, STAMP, frame_body, mutate  # noqa: E402

from fluxbee.dataplane import _native, wire  # noqa: E402

Check = Callable[[bytes, Any], "tuple[bool, str | None]"]
"""One mutated body (and the same bytes in an exact-size buffer): (accepted?, what went wrong or None)."""


def _run(scan: Any, bodies: list[bytes], first: tuple[str, bytes, bytes], soft: int, hard: int) -> tuple[bytes, int]:
    """What ``extend`` must return, frame by frame through ``scan``."""
    out = b""
    count = 0
    for body in bodies:
        hit = scan(body, NODE_B, STAMP)
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


def _limits(rng: random.Random) -> tuple[int, int]:
    """``soft`` and ``hard`` for a run: unbounded or small."""
    return rng.choice([10**6, rng.randrange(1, 2000)]), rng.choice([10**6, rng.randrange(0, 2000)])


def fuzz(what: str, seeds: list[bytes], check: Check, rng: random.Random, count: int) -> bool:
    """``count`` mutations of ``seeds`` through ``check``; prints the tally or the first failure."""
    accepted = 0
    for _ in range(count):
        body = mutate(rng, rng.choice(seeds))
        # The same bytes in a buffer allocated to their exact size (bytes objects end in a NUL that
        # would stop a runaway read): under ASan a read past the end aborts; otherwise it may show
        # as a different answer.
        exact = (ctypes.c_char * len(body)).from_buffer_copy(body) if body else b""
        took, problem = check(body, exact)
        if problem is not None:
            print(f"fuzz_speedups: {problem} on {body!r}", file=sys.stderr)
            return False
        accepted += took
    print(f"fuzz_speedups: {count} {what}, {accepted} accepted, all as msgspec reads them")
    return True


def plain_checks(speedups: Any, rng: random.Random, seeds: list[bytes]) -> Check:
    """scan, extend, hop and split on a mutated plain frame."""
    first = speedups.scan(seeds[0], NODE_B, STAMP)
    assert first is not None

    def check(body: bytes, exact: Any) -> tuple[bool, str | None]:
        got = speedups.scan(body, NODE_B, STAMP)
        if got is not None and got != cases.expected(body):
            return True, "scan and msgspec disagree"
        if speedups.scan(exact, NODE_B, STAMP) != got:
            return got is not None, "scan read past the end"
        run = [seeds[0], body, seeds[0]]
        soft, hard = _limits(rng)
        if speedups.extend(run, 0, NODE_B, STAMP, first[0], first[1], soft, hard) != _run(
                speedups.scan, run, first, soft, hard):
            return got is not None, "extend and scan disagree"
        data_out, taken = speedups.hop([body], 0, NODE_B, first[0], first[1], 10**6, 1)
        if taken and data_out != _hopped(body, first):
            return got is not None, "hop and msgspec disagree"
        stream = len(body).to_bytes(4, "big") + body + body[: rng.randrange(len(body) + 1)]
        _, used, _ = speedups.split(stream, rng.randrange(0, 2 * len(body) + 1))
        if not 0 <= used <= len(stream):
            return got is not None, f"split claimed {used} of {len(stream)} bytes"
        return got is not None, None

    return check


def null_checks(speedups: Any, rng: random.Random, seeds: list[bytes]) -> Check:
    """scan_null, splice_null (right and wrong cuts) and extend_null on a mutated dst:null frame."""
    meta = speedups.scan_null(seeds[0], NODE_B)[0]

    def check(body: bytes, exact: Any) -> tuple[bool, str | None]:
        hit = speedups.scan_null(exact, NODE_B)
        if hit is not None:
            got = (hit[0], speedups.splice_null(exact, NODE_B, hit[1], STAMP, nulls.DST))
            if got != nulls.expected(body):
                return True, "scan_null/splice_null and msgspec disagree"
        for cut in (rng.randrange(-2, len(body) + 3), len(body) - 1):
            speedups.splice_null(exact, NODE_B, cut, STAMP, nulls.DST)  # never outside the body
        run = [seeds[0], body, seeds[0]]
        soft, hard = _limits(rng)
        want = nulls.runs(speedups.scan_null, speedups.splice_null, run, 0, meta, soft, hard)
        if speedups.extend_null(run, 0, NODE_B, STAMP, nulls.DST, meta, soft, hard) != want:
            return hit is not None, "extend_null and scan_null disagree"
        return hit is not None, None

    return check


def main(seed: int, count: int) -> int:
    speedups = _native.speedups
    if speedups is None:
        print(f"fuzz_speedups: the C extension is not loaded ({_native.IMPLEMENTATION})", file=sys.stderr)
        return 1
    rng = random.Random(seed)
    seeds = [
        frame_body(),
        frame_body(payload={"a": [1, -2.5e10, None, True, "ü🐝\\n\"q\""], "b": {"c": {}}}),
        frame_body(str(uuid.uuid4()), meta={"type": "user", "thread_id": "t", "context": {"k": [1, {"z": 0}]}}),
        frame_body(payload=[[[[[[[[1]]]]]]]]),
        frame_body(payload="x").replace(b'"payload":"x"}', b'"payload":"\\u00e9\\ud83d\\ude00\\/"}'),
    ]
    if not fuzz(f"mutated frames (seed {seed})", seeds, plain_checks(speedups, rng, seeds), rng, count):
        return 1
    if not fuzz("mutated dst:null frames", nulls.BODIES, null_checks(speedups, rng, nulls.BODIES), rng, count // 2):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 200_000))
