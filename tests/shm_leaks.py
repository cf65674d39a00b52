"""Which shared-memory segments did this test session create?

The session fails if its tests leave ``/dev/shm/fluxbee-*`` segments behind. Counting every new
segment is wrong on a shared machine: a hive started in another terminal (``make up``) or another
engineer's test run creates segments too, and those are none of this session's business. So a new
segment counts as this session's only if it can be traced to it:

- its header names this pytest process as the owner (in-process writers in unit tests);
- its name is one the tests' own helpers make up (``fluxbee-test-*``, ``fluxbee-itest-*``);
- its name is derived from a run dir the tests used: a router's regions are named after the router
  uuid, which the router keeps in ``<run dir>/state/*.uuid`` and shows as ``<run dir>/routers/<hex>.sock``;
  an identity region ends with the run dir's scope tag (:func:`identity_shm.run_dir_scope`).

Run dirs are noted while they still exist (most are removed when their test ends), see
:meth:`SessionSegments.note_run_dir`.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from collections.abc import Iterable
from pathlib import Path

from fluxbee.dataplane.shm import identity as identity_shm

SHM_DIR = Path("/dev/shm")
PREFIX = "fluxbee-"
TEST_PREFIXES = ("fluxbee-test-", "fluxbee-itest-")
_ROUTER_REGION = re.compile(r"^fluxbee-(?:nodes|config)-([0-9a-f]{32})$")  # shm.node_table_name, config_region_name
_IDENTITY_PREFIX = "fluxbee-identity-"  # identity_shm.region_name
_OWNER_PID_AT = {b"FLXBNODE": 64, b"FLXBCONF": 64, b"FLXBIDNT": 56}  # offsets: dataplane/shm/table.py, identity.py
_SCAN_DEPTH = 4  # run dirs sit at most a few levels below a test's tmp_path


def fluxbee_segments(shm_dir: Path = SHM_DIR) -> set[str]:
    try:
        return {n for n in os.listdir(shm_dir) if n.startswith(PREFIX)}
    except FileNotFoundError:
        return set()


def owner_pid(path: Path) -> int | None:
    """The owner pid written in a fluxbee region header, or None for a foreign or unreadable segment."""
    try:
        with open(path, "rb") as f:
            head = f.read(72)
    except OSError:
        return None
    offset = _OWNER_PID_AT.get(head[:8])
    if offset is None or len(head) < offset + 4:
        return None
    return int(struct.unpack_from("<I", head, offset)[0])


class SessionSegments:
    """What the session's tests used, and which leftover segments that makes theirs."""

    def __init__(self, before: Iterable[str], *, shm_dir: Path = SHM_DIR, pid: int | None = None) -> None:
        self.before = set(before)
        self.shm_dir = shm_dir
        self.pid = os.getpid() if pid is None else pid
        self.router_hexes: set[str] = set()
        self.scopes: set[str] = set()

    def note_run_dir(self, root: Path) -> None:
        """Remember the router uuids and run-dir scopes found at or below ``root``.

        Called for every directory a test used, before the test's fixtures remove it."""
        if not root.is_dir():
            return
        base_depth = len(root.parts)
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            if len(here.parts) - base_depth >= _SCAN_DEPTH:
                dirnames.clear()
            self.scopes.add(identity_shm.run_dir_scope(here))
            if here.name == "state":
                self.router_hexes.update(_hex(_read(here / f)) for f in filenames if f.endswith(".uuid"))
            elif here.name == "routers":
                self.router_hexes.update(_hex(Path(f).stem) for f in filenames if f.endswith(".sock"))
        self.router_hexes.discard("")

    def is_ours(self, name: str) -> bool:
        if name.startswith(TEST_PREFIXES):
            return True
        router = _ROUTER_REGION.match(name)
        if router is not None and router.group(1) in self.router_hexes:
            return True
        if name.startswith(_IDENTITY_PREFIX) and name.rpartition("-")[2] in self.scopes:
            return True
        return owner_pid(self.shm_dir / name) == self.pid

    def leftovers(self) -> list[str]:
        """New segments that this session's tests created and did not remove, sorted."""
        return sorted(n for n in fluxbee_segments(self.shm_dir) - self.before if self.is_ours(n))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _hex(text: str) -> str:
    try:
        return uuid.UUID(text).hex
    except ValueError:
        return ""

