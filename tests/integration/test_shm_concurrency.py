"""Seqlock readers in another process never see a torn record or a half-written document.

The writer runs in this process and churns as fast as it can; the reader is a separate
interpreter (``python -c``) so the two really run on different CPUs against one mapping.
Every value written is a pure function of something else in the same unit (a record's uuid,
a document's checksum), so the reader can check each observation on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import posix_ipc
import pytest

from fluxbee.dataplane.shm import (
    ConfigRegionWriter,
    NodeRecord,
    NodeTableWriter,
)

pytestmark = pytest.mark.integration

OWNER = "0b7e5d4c-3a2b-4c1d-8e9f-a0b1c2d3e4f5"
CHILD_TIMEOUT_S = 20.0
CAPACITY = 16
"""A small table keeps every slot hot: each is rewritten for another uuid many times a second,
so a read without the seqlock check would catch mixed records (checked by mutating it)."""

NODE_READER = """
import json, sys, time, uuid
from fluxbee.dataplane.shm import NodeTableReader, ReadTimeoutError

name, seconds = sys.argv[1], float(sys.argv[2])
reads = torn = scans = timeouts = 0
seen = set()
with NodeTableReader(name) as reader:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            records = reader.read()
        except ReadTimeoutError:
            timeouts += 1
            continue
        scans += 1
        for rec in records:
            reads += 1
            u = uuid.UUID(rec.uuid)
            seen.add(u)
            if (
                rec.name != f"WF.n{u.hex}@h"
                or rec.vpn_id != u.int % 997
                or rec.connected_at_ms % 1000 != u.int % 1000
                or rec.flags != 1
            ):
                torn += 1
print(json.dumps({"reads": reads, "torn": torn, "scans": scans,
                  "timeouts": timeouts, "distinct": len(seen)}))
"""

CONFIG_READER = """
import hashlib, json, sys, time
from fluxbee.dataplane.shm import ConfigRegionReader, ReadTimeoutError

name, seconds = sys.argv[1], float(sys.argv[2])
reads = bad = timeouts = changes = 0
last = 0
with ConfigRegionReader(name) as reader:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            version, document = reader.read()
        except ReadTimeoutError:
            timeouts += 1
            continue
        if version == 0:
            continue
        reads += 1
        try:
            outer = json.loads(document)
            body = outer["body"]
            inner = json.loads(body)
            ok = (
                hashlib.sha256(body.encode()).hexdigest() == outer["sha256"]
                and inner["version"] == version
                and version >= last
            )
        except (ValueError, KeyError, UnicodeDecodeError):
            ok = False
        if not ok:
            bad += 1
        if version != last:
            changes += 1
        last = version
print(json.dumps({"reads": reads, "bad": bad, "timeouts": timeouts, "changes": changes}))
"""


@pytest.fixture
def region_name() -> Iterator[str]:
    name = f"/fluxbee-itest-{uuid.uuid4().hex}"
    yield name
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


@contextlib.contextmanager
def _reader_process(script: str, name: str, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Run a reader script in a fresh interpreter; never leave it behind, even on failure."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), name, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with proc:  # closes the pipes and reaps the child on the way out
        try:
            yield proc
        except BaseException:
            proc.kill()
            raise


def _result(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, err
    result: dict[str, int] = json.loads(out)
    return result


def _node(u: uuid.UUID, tick: int) -> NodeRecord:
    """A record whose every field is checkable from its uuid alone."""
    return NodeRecord(
        uuid=str(u),
        name=f"WF.n{u.hex}@h",
        vpn_id=u.int % 997,
        connected_at_ms=1_700_000_000_000 + tick * 1000 + u.int % 1000,
    )


def test_reader_never_sees_a_torn_record_while_writer_churns(region_name: str) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    with NodeTableWriter(
        region_name, owner_uuid=OWNER, hive_id="h", owner_name="RT.router@h", capacity=CAPACITY
    ) as writer:
        live: list[uuid.UUID] = []
        for _ in range(CAPACITY // 2):
            u = uuid.UUID(int=rng.getrandbits(128), version=4)
            writer.put(_node(u, 0))
            live.append(u)
        ops = tick = 0
        with _reader_process(NODE_READER, region_name, 1.5) as proc:
            deadline = time.monotonic() + CHILD_TIMEOUT_S
            # Constant slot reuse: a torn read would mix two records' fields.
            while proc.poll() is None and time.monotonic() < deadline:
                for _ in range(200):
                    tick += 1
                    roll = rng.random()
                    if roll < 0.4 and live:
                        writer.remove(str(live.pop(rng.randrange(len(live)))))
                    elif roll < 0.8 and len(live) < CAPACITY:
                        u = uuid.UUID(int=rng.getrandbits(128), version=4)
                        writer.put(_node(u, tick))
                        live.append(u)
                    elif live:
                        writer.put(_node(live[rng.randrange(len(live))], tick))  # in place
                ops += 200
            result = _result(proc)
    print(f"writer ops={ops} reader={result}")
    assert result["torn"] == 0, result
    assert result["reads"] > 1000, result
    assert result["distinct"] > 100, result  # the reader really watched the churn


def _document(version: int, rng: random.Random) -> bytes:
    fill = chr(ord("a") + version % 26) * rng.randrange(1_000, 200_000)
    body = json.dumps({"version": version, "routes": [{"prefix": "WF.", "fill": fill}]})
    outer = {"sha256": hashlib.sha256(body.encode()).hexdigest(), "body": body}
    return json.dumps(outer).encode()


def test_config_reader_never_sees_a_half_written_document(region_name: str) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    with ConfigRegionWriter(
        region_name, owner_uuid=OWNER, hive_id="h", owner_name="RT.router@h"
    ) as writer:
        version = 1
        writer.write(version, _document(version, rng))
        with _reader_process(CONFIG_READER, region_name, 1.0) as proc:
            deadline = time.monotonic() + CHILD_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                version += 1
                writer.write(version, _document(version, rng))
            result = _result(proc)
    print(f"writer versions={version} reader={result}")
    assert result["bad"] == 0, result
    assert result["reads"] > 100, result
    assert result["changes"] > 10, result
