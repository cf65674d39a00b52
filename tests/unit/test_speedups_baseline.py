"""The C fast path against an earlier build of itself: a restructured ``_speedups.c`` answers exactly as before.

``BASELINE`` names the commit whose ``_speedups.c`` is the reference.  Both sources are compiled
here (gcc, the flags of ``setup.py``) and loaded side by side; generated and mutated frames --
valid, truncated, malformed, ``dst: null``, around the size limit -- and wrong arguments go through
every function of both, and each pair of answers must be equal: the same value of the same type,
or the same exception with the same message.  Where a change of behaviour is intended, move
``BASELINE`` to the commit that made it.  ``hack/diff_speedups.py`` runs the same comparison
against any revision, with more cases, and times both builds.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import random
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest
from speedup_frames import NODE, NODE_B, STAMP, frame_body, mutate

from fluxbee.dataplane import fastpath, wire

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "dataplane/_speedups.c"
BASELINE = "c9fd8ff62e910b28271faa7275f3f57959d533d1"
"""The last commit before scan, scan_null, splice_null, extend, extend_null and hop shared one envelope parser."""

OTHER = str(uuid.uuid4()).encode()
DSTS = ["WF.echo", "WF.echo@*", "broadcast", str(uuid.uuid4()), "", "WF.ü", 'WF."q"', "WF.a\\b", "WF.\x7f",
        "WF.\x01", None]
RUN_DSTS = ["WF.echo", "11111111-2222-4333-8444-555555555555", "", "é", 'a"b', "a\\b", "\x7f", "\ud800"]
TTLS = [0, 1, 2, 9, 10, 11, 99, 100, 101, 254, 255, 256, 999, 1000, 12345, -1]
TRACES = ["t", "", str(uuid.uuid4()), "é", 'a"b', "a\\b", "\x7f"]
PAYLOADS: list[object] = [
    "x" * 200, "", None, True, 0, -1.5e-300, 2**64, [], {}, [[[[[[[[1]]]]]]]],
    {"a": [1, -2.5e10, None, True, "ü🐝\\n\"q\""], "b": {"c": {}}}, "\x00\x1f\x7f\u2028",
]
METAS: list[object] = [
    None, {}, {"type": "user"}, {"type": "system", "context": {"k": [1, {"z": 0}]}}, [1], "m", 1,
    b'{"type":"user"}', b'{ "type" : "user" }', b'{"a":{"b":[' + b"[" * 62 + b"]" * 62 + b"]}}",
]
TEXT_EDITS = [
    (b'"ttl":16', b'"ttl":016'), (b'"ttl":16', b'"ttl":16.0'), (b'"ttl":16', b'"ttl":-16'),
    (b'"ttl":16', b'"ttl":1e1'), (b'{"routing":', b'{ "routing":'), (b'"routing":{', b'"routing":{"src_l2_name":"x",'),
    (b',"meta":', b' ,"meta":'), (b'"trace_id":', b'"src_l2_name":"x","trace_id":'), (b'"dst":null', b'"dst":nul'),
    (b'"dst":null', b'"dst":"null"'), (b'"payload":', b'"payload": '), (b'"payload":"x', b'"payload":"\\u00e9\\ud83d'),
]


# --- building and loading ---------------------------------------------------------------------------------
def compile_speedups(source: Path, out_dir: Path, tag: str, flags: tuple[str, ...] = ("-O2",)) -> ModuleType:
    """``source`` compiled into ``out_dir`` and loaded as ``<tag>._speedups``, beside any other build."""
    include = sysconfig.get_paths()["include"]
    target = out_dir / tag / f"_speedups{sysconfig.get_config_var('EXT_SUFFIX')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-shared", "-fPIC", *flags, "-Wall", "-Wextra", f"-I{include}", str(source), "-o",
                    str(target)], check=True, capture_output=True, text=True)
    name = f"{tag}._speedups"
    loader = importlib.machinery.ExtensionFileLoader(name, str(target))
    spec = importlib.util.spec_from_file_location(name, target, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def source_at(revision: str, out_dir: Path) -> Path:
    """``_speedups.c`` as it was at ``revision``, written into ``out_dir``."""
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{SOURCE}"], capture_output=True)
    if shown.returncode != 0:
        raise LookupError(f"git cannot show {SOURCE} at {revision}: {shown.stderr.decode().strip()}")
    path = out_dir / f"{revision.replace('/', '_')}.c"
    path.write_bytes(shown.stdout)
    return path


# --- what goes through both -------------------------------------------------------------------------------
def outcome(function: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a call gave: ("=", value, its type's shape) or ("!", exception type, message)."""
    try:
        value = function(*args)
    except Exception as err:  # noqa: BLE001 -- the exception is the answer being compared
        return "!", type(err), str(err)
    return "=", value, shape(value)


def shape(value: object) -> object:
    """The types inside a result (``==`` alone would let a bytearray stand for bytes)."""
    if isinstance(value, tuple | list):
        return type(value), tuple(shape(v) for v in value)
    return type(value)


def bodies(rng: random.Random) -> Iterator[bytes]:
    """Frames of every kind, endlessly: canonical, hand-edited, mutated, truncated, oversize, garbage.

    Most start as a frame the fast path takes (this sender, a live TTL, a plain or null dst, meta an
    object), so that the edits land next to the accepting branches as well as the refusing ones.
    """
    while True:
        dst = None if rng.random() < 0.35 else rng.choice(DSTS[:4]) if rng.random() < 0.8 else rng.choice(DSTS)
        body = frame_body(dst, rng.choice(PAYLOADS),
                          ttl=rng.randint(1, 255) if rng.random() < 0.7 else rng.choice(TTLS),
                          meta=rng.choice(METAS[:4]) if rng.random() < 0.8 else rng.choice(METAS),
                          src=NODE if rng.random() < 0.9 else rng.choice([OTHER.decode(), ""]))
        if rng.random() < 0.2:
            body = body.replace(body[body.index(b'"trace_id":"') + 12:body.index(b'"},"meta"')],
                                msgspec.json.encode(rng.choice(TRACES))[1:-1], 1)
        kind = rng.random()
        if kind < 0.35:
            yield body
        elif kind < 0.45:
            old, new = rng.choice(TEXT_EDITS)
            yield body.replace(old, new, 1)
        elif kind < 0.75:
            yield mutate(rng, body)
        elif kind < 0.85:
            yield body[:rng.randrange(len(body) + 1)]
        elif kind < 0.93:
            yield near_the_limit(rng, dst)
        else:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(60)))


def near_the_limit(rng: random.Random, dst: str | None) -> bytes:
    """A body a few bytes either side of where the stamp or the spliced dst takes it past the size limit."""
    empty = frame_body(dst, "", ttl=rng.choice([1, 2, 16, 255]))
    room = wire.MAX_FRAME - len(empty) - len(STAMP) + rng.randrange(-12, 40)
    return empty.replace(b'"payload":""', b'"payload":"' + b"x" * max(room, 0) + b'"')


def calls(rng: random.Random, body: bytes, fns: ModuleType) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The calls one body takes part in (``fns``, the reference build, supplies real cuts, dsts and metas)."""
    node = NODE_B if rng.random() < 0.85 else rng.choice([OTHER, b"", NODE_B[:-1]])
    stamp = rng.choice([STAMP, STAMP, b"", fastpath.make_stamp("x" * 300)])
    view: Any = rng.choice([body, bytearray(body), memoryview(body + b'0"}')[:len(body)],
                            (ctypes.c_char * len(body)).from_buffer_copy(body) if body else b""])
    yield "scan", (view, node, stamp)
    yield "scan_null", (view, node)
    hit, null_hit = fns.scan(body, NODE_B, STAMP), fns.scan_null(body, NODE_B)
    cut = null_hit[1] if null_hit else rng.randrange(-2, len(body) + 3)
    for at in (cut, rng.randrange(-2, len(body) + 3), len(body) - 1):
        yield "splice_null", (view, node, at, stamp, rng.choice(RUN_DSTS))
    dst, meta = (hit[0], hit[1]) if hit else ("WF.echo" if rng.random() < 0.8 else rng.choice(RUN_DSTS),
                                              b'{"type":"user"}')
    null_meta = null_hit[0] if null_hit else b'{"type":"user"}'
    plain_ttl, null_ttl = rng.choice([1, 2, 16]), rng.choice([1, 16])
    others = [frame_body(dst if dst.isprintable() else "WF.echo", ttl=plain_ttl, meta=meta),
              frame_body(None, ttl=null_ttl, meta=null_meta)]
    pool: list[Any] = [body, body, body, *others, *others, b"junk", 42, bytearray(body)]
    run = [rng.choice(pool) for _ in range(rng.randrange(0, 7))]
    start = 0 if rng.random() < 0.6 else rng.randrange(-2, len(run) + 3)
    soft = 1 << 30 if rng.random() < 0.6 else rng.choice([0, 1, rng.randrange(0, 3000)])
    hard = 1 << 30 if rng.random() < 0.5 else rng.choice([0, rng.randrange(0, 3000), len(body) + len(stamp) + 3,
                                                          len(body) + len(stamp) + 4])
    yield "extend", (run, start, node, stamp, dst, meta, soft, hard)
    null_dst = RUN_DSTS[1] if rng.random() < 0.7 else rng.choice(RUN_DSTS)
    yield "extend_null", (run, start, node, stamp, null_dst, null_meta, soft, hard)
    limit = 1 << 20 if rng.random() < 0.6 else rng.choice([1, 0, -1, rng.randrange(8)])
    yield "hop", (run, start, node, dst, meta, hard, limit)
    stream = len(body).to_bytes(4, "big") + body + body[:rng.randrange(len(body) + 1)]
    yield "split", (stream, rng.randrange(0, 2 * len(body) + 2))


WRONG = [
    ("scan", (b"{}", NODE_B)), ("scan", ("text", NODE_B, STAMP)), ("scan", (b"{}", None, STAMP)),
    ("scan_null", (b"{}",)), ("scan_null", ("text", NODE_B)),
    ("splice_null", (b"{}", NODE_B, 0, STAMP)), ("splice_null", (b"{}", NODE_B, "0", STAMP, "d")),
    ("splice_null", (b"{}", NODE_B, 0, STAMP, b"d")), ("splice_null", (b"{}", NODE_B, 2**70, STAMP, "d")),
    ("splice_null", ("x", NODE_B, 0, STAMP, "d")),
    ("extend", ([], 0, NODE_B, STAMP, "d", b"{}", 1)), ("extend", ((), 0, NODE_B, STAMP, "d", b"{}", 1, 1)),
    ("extend", ([], 0, NODE_B, STAMP, b"d", b"{}", 1, 1)), ("extend", ([], "0", NODE_B, STAMP, "d", b"{}", 1, 1)),
    ("extend", ([], 0, NODE_B, STAMP, "d", b"{}", None, 1)), ("extend", ([], 0, NODE_B, STAMP, "d", b"{}", 1, 2**70)),
    ("extend", ([], 0, NODE_B, STAMP, "\ud800", b"{}", 1, 1)), ("extend", ([], 0, "n", STAMP, "d", b"{}", 1, 1)),
    ("extend", ([], 0, NODE_B, STAMP, "d", None, 1, 1)),
    ("extend_null", ([], 0, NODE_B, STAMP, "d", b"{}", 1)), ("extend_null", ((), 0, NODE_B, STAMP, "d", b"{}", 1, 1)),
    ("extend_null", ([], 0, NODE_B, STAMP, b"d", b"{}", 1, 1)),
    ("extend_null", ([], 0, NODE_B, STAMP, "d", b"{}", 1.5, 1)),
    ("extend_null", ([], 0, NODE_B, STAMP, "\ud800", b"{}", 1, 1)),
    ("extend_null", ([], 0, NODE_B, None, "d", b"{}", 1, 1)),
    ("hop", ([], 0, NODE_B, "d", b"{}", 1)), ("hop", ((), 0, NODE_B, "d", b"{}", 1, 1)),
    ("hop", ([], 0, NODE_B, b"d", b"{}", 1, 1)), ("hop", ([], 0, NODE_B, "d", b"{}", "1", 1)),
    ("hop", ([], 0, NODE_B, "d", b"{}", 1, None)), ("hop", ([], 0, NODE_B, "\ud800", b"{}", 1, 1)),
    ("hop", ([], 0, 7, "d", b"{}", 1, 1)),
    ("split", (b"",)), ("split", (None, 10)), ("split", (b"", "x")),
    ("frame", (b"", "d", b"", "t", b"{}")), ("frame", ("", "d", b"", "t", b"{}", b"1")),
    ("frame", (b'{"h":', None, b",", "t", b"{}", b"1")), ("frame", (b'{"h":', "d", b",", None, b"{}", b"1")),
    ("frame", (b'{"h":', 'a"b', b",", "t", b"{}", b"1")), ("frame", (b'{"h":', "d", b",", "\x7f", b"{}", b"1")),
    ("trace_seed", (b"p",)), ("trace_seed", ("é",)), ("trace_seed", ("p" * 65,)),
]


def compare(old: ModuleType, new: ModuleType, seed: int, count: int) -> int:
    """``count`` bodies (and the wrong-argument table) through both builds; the number of calls compared.

    Raises AssertionError at the first call whose answers differ.
    """
    rng = random.Random(seed)
    compared = 0

    def same(name: str, args: tuple[Any, ...]) -> None:
        nonlocal compared
        want, got = outcome(getattr(old, name), args), outcome(getattr(new, name), args)
        assert got == want, f"{name}{_short(args)}: the baseline gave {_short(want)}, this build {_short(got)}"
        compared += 1

    for name, args in WRONG:
        same(name, args)
    for prefix in ("p-", "", "x" * 64):
        old.trace_seed(prefix)
        new.trace_seed(prefix)
        for _ in range(3):
            same("trace_id", ())
    source = bodies(rng)
    for _ in range(count):
        body = next(source)
        for name, args in calls(rng, body, old):
            same(name, args)
    return compared


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 600 else text[:300] + f" ... ({len(text)} characters) ... " + text[-200:]


# --- the test ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    if shutil.which("gcc") is None or shutil.which("git") is None:
        pytest.skip("needs gcc and git to build the baseline")
    out = tmp_path_factory.mktemp("speedups")
    try:
        base = source_at(BASELINE, out)
    except LookupError as err:  # e.g. a shallow clone or an unpacked sdist
        pytest.skip(str(err))
    return compile_speedups(base, out, "baseline"), compile_speedups(ROOT / SOURCE, out, "current")


def test_every_function_answers_exactly_as_the_baseline_build(builds: tuple[ModuleType, ModuleType]) -> None:
    seed = random.randrange(1 << 32)
    print(f"baseline comparison seed {seed}", file=sys.stderr)
    old, new = builds
    assert compare(old, new, seed, 20_000) > 20_000 * 9


def test_the_comparison_sees_a_difference(builds: tuple[ModuleType, ModuleType]) -> None:
    """The comparison itself can fail: a build that answers one case differently is caught."""
    old, new = builds

    class Off:
        def __getattr__(self, name: str) -> Any:
            real = getattr(new, name)
            if name != "hop":
                return real
            return lambda *args: (b"", 0) if len(args) == 7 and args[6] == 1 else real(*args)  # wrong at limit 1

    with pytest.raises(AssertionError, match="^hop"):
        compare(old, Off(), 5, 4000)  # type: ignore[arg-type]
