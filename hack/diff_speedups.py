"""Compare the C fast path with the one at another git revision: the same answers, and how fast each is.

    .venv/bin/python hack/diff_speedups.py [--base REV] [--seed N] [--count N] [--bench FRAMES] [--repeat N]
                                           [--cflags FLAGS]

Both ``dataplane/_speedups.c`` sources (the working tree's and the one at ``--base``, default
``main``) are compiled with the flags of ``setup.py`` and loaded side by side.  ``--count`` bodies
(valid, edited, mutated, truncated, near the size limit, garbage) and a table of wrong arguments go
through every function of both; the first call whose answers differ is printed and the exit status
is 1.  ``--bench`` then times each frame function over that many frames on both builds, interleaved
in the same process, best CPU time of ``--repeat`` rounds, and prints this build's time as a ratio
of the base's (below 1: faster).  A few percent either way can be where the linker happened to put
the hot loops rather than the code: ``--cflags "-O2 -falign-functions=64 -falign-loops=64"`` builds
both with the same alignment to tell the two apart.  The unit test ``tests/unit/test_speedups_baseline.py`` runs the
same comparison against a pinned revision.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

import test_speedups_baseline as baseline  # noqa: E402
from speedup_frames import NODE_B, STAMP, frame_body  # noqa: E402

DST = "11111111-2222-4333-8444-555555555555"
META = b'{"type":"user"}'


def workloads(module: ModuleType, frames: int) -> dict[str, Callable[[], object]]:
    """One callable per function, each going over ``frames`` frames the fast path takes."""
    plain = [frame_body("WF.echo", ttl=16) for _ in range(1000)]
    nulls = [frame_body(None, ttl=16) for _ in range(1000)]
    plain_all = (plain * (frames // len(plain) + 1))[:frames]
    null_all = (nulls * (frames // len(nulls) + 1))[:frames]
    cuts = [module.scan_null(b, NODE_B)[1] for b in null_all]
    scan, scan_null, splice_null = module.scan, module.scan_null, module.splice_null
    extend, extend_null, hop = module.extend, module.extend_null, module.hop
    big = 1 << 30

    def scan_all() -> None:
        for body in plain_all:
            scan(body, NODE_B, STAMP)

    def scan_null_all() -> None:
        for body in null_all:
            scan_null(body, NODE_B)

    def splice_all() -> None:
        for body, cut in zip(null_all, cuts, strict=True):
            splice_null(body, NODE_B, cut, STAMP, DST)

    def runs(step: Callable[[int], int]) -> Callable[[], None]:
        def go() -> None:
            at = 0
            while at < frames:
                at += step(at)
        return go

    # runs of 64 frames, as a burst from one sender is cut when the router reads it
    def extend_step(at: int) -> int:
        return int(extend(plain_all, at, NODE_B, STAMP, "WF.echo", META, 64 * 400, big)[1]) or 1

    def extend_null_step(at: int) -> int:
        return int(extend_null(null_all, at, NODE_B, STAMP, DST, META, 64 * 400, big)[1]) or 1

    def hop_step(at: int) -> int:
        return int(hop(plain_all, at, NODE_B, "WF.echo", META, big, 64)[1]) or 1

    return {"scan": scan_all, "scan_null": scan_null_all, "splice_null": splice_all,
            "extend (runs of ~64)": runs(extend_step), "extend_null (runs of ~64)": runs(extend_null_step),
            "hop (runs of 64)": runs(hop_step)}


def bench(old: ModuleType, new: ModuleType, frames: int, repeat: int) -> None:
    """Best CPU time of ``repeat`` interleaved rounds per function and build; the ratio this / base."""
    olds, news = workloads(old, frames), workloads(new, frames)
    print(f"{'function':<28}{'base ns/frame':>14}{'this ns/frame':>14}{'this/base':>11}")
    for name in olds:
        best = {"base": float("inf"), "this": float("inf")}
        for round_ in range(repeat):
            pair = [("base", olds[name]), ("this", news[name])]
            for label, work in pair if round_ % 2 else reversed(pair):  # neither always runs first
                t0 = time.process_time()
                work()
                best[label] = min(best[label], time.process_time() - t0)
        print(f"{name:<28}{best['base'] / frames * 1e9:>14.1f}{best['this'] / frames * 1e9:>14.1f}"
              f"{best['this'] / best['base']:>11.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision whose _speedups.c is the reference")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--count", type=int, default=100_000, help="bodies to compare on")
    parser.add_argument("--bench", type=int, default=0, metavar="FRAMES", help="time each function over FRAMES")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cflags", default="-O2", help="compiler flags for both builds (default: setup.py's -O2)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    with tempfile.TemporaryDirectory(prefix="diff-speedups-") as tmp:
        out = Path(tmp)
        try:
            source = baseline.source_at(args.base, out)
        except LookupError as err:
            print(f"diff_speedups: {err}", file=sys.stderr)
            return 2
        flags = tuple(args.cflags.split())
        old = baseline.compile_speedups(source, out, "base", flags)
        new = baseline.compile_speedups(baseline.ROOT / baseline.SOURCE, out, "this", flags)
        try:
            compared = baseline.compare(old, new, seed, args.count)
        except AssertionError as err:
            print(f"diff_speedups: seed {seed}: {err}", file=sys.stderr)
            return 1
        print(f"diff_speedups: {args.count} bodies, {compared} calls (seed {seed}): every answer the same as at "
              f"{args.base}")
        if args.bench:
            bench(old, new, args.bench, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
