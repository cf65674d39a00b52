"""The region framework every shared-memory layout of ours is built on.

One error family, the POSIX create/open/unlink calls, the mapping, the seqlock read loop, the
takeover rule (a live owner with a fresh heartbeat -- or a header stuck mid-store under a live
owner -- is never displaced) and the close rule (the name is unlinked only if it still maps the
region this writer created). Layouts (:mod:`.nodes`, :mod:`.config`, :mod:`.identity`,
:mod:`.identity_jsid`) own their bytes; this module owns none.

A leaf: it imports nothing of ours and never logs.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import posix_ipc

TAKEOVER_READ_DEADLINE_S: Final = 0.100
"""How long a new writer waits for an existing header to become consistent."""
SEQ_WORD: Final = 1
"""Every layout keeps its header seqlock in the second u64 of the region."""
_SEQ_WORD: Final = SEQ_WORD
_SPINS_BEFORE_YIELD: Final = 16

_T = TypeVar("_T")

_HELD_HERE: dict[str, tuple[int, int]] = {}
"""Regions held by open writers of *this* process: name -> (st_dev, st_ino).

Why: after a container restart the new router often gets the same pid as the crashed one
(pid 1, say), so "the owner pid is alive" is true of ourselves. A header naming our own pid
is a live owner only if a writer in this process really holds that name.
"""

# --------------------------------------------------------------------------- errors


class ShmError(Exception):
    """Base of every error the shared-memory package raises, whatever the layout."""


class RegionNotFoundError(ShmError):
    """No region of that name exists (the router is not running or has not created it yet)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"shared-memory region {name!r} does not exist")
        self.name = name


class RegionPermissionError(ShmError):
    """The region exists but belongs to another user (regions are created mode 0600)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"shared-memory region {name!r} is not accessible to this user")
        self.name = name


class RegionBusyError(ShmError):
    """A live owner with a fresh heartbeat holds the region; a second writer must not steal it.

    ``owner_pid`` is 0 when another process created the name between our unlink and our create.
    """

    def __init__(self, name: str, owner_pid: int) -> None:
        super().__init__(
            f"shared-memory region {name!r} is held by live process {owner_pid} "
            "with a fresh heartbeat"
        )
        self.name = name
        self.owner_pid = owner_pid


class RegionFormatError(ShmError):
    """The region is not one of ours, or of another layout version, size or kind."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"shared-memory region {name!r} has an unexpected format: {reason}")
        self.name = name
        self.reason = reason


class RegionFullError(ShmError):
    """Every slot of one of a region's tables is in use (``what`` names the table)."""

    def __init__(self, name: str, capacity: int, what: str = "node") -> None:
        super().__init__(f"{what} table of {name!r} is full ({capacity} slots)")
        self.name = name
        self.capacity = capacity
        self.what = what


class ReadTimeoutError(ShmError):
    """The seqlock never showed a stable, even sequence within the deadline.

    Either the writer is descheduled in the middle of a store for longer than the deadline, or it
    died mid-store (the sequence word stays odd). Retrying later, or reopening once the header
    reads as stale, are the remedies.
    """

    def __init__(self, name: str, what: str, deadline_s: float) -> None:
        super().__init__(
            f"no consistent read of {what} in {name!r} within {deadline_s * 1000:.1f} ms"
        )
        self.name = name
        self.what = what
        self.deadline_s = deadline_s


# --------------------------------------------------------------------------- value types


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def pid_alive(pid: int) -> bool:
    """True if a process with that pid exists in our pid namespace (zombies count as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _seqlock_read(
    seqs: memoryview,
    word: int,
    copy: Callable[[], _T],
    deadline_s: float,
    on_timeout: Callable[[], ShmError],
) -> _T:
    """Run ``copy`` between two equal, even loads of ``seqs[word]``.

    The fast path (no concurrent write) costs two loads and the copy; the clock is read only
    once a retry is needed. After a few spins the reader yields the CPU so that a writer
    sharing the core can finish its store.
    """
    s1 = seqs[word]
    if not s1 & 1:
        data = copy()
        if seqs[word] == s1:
            return data
    deadline = time.monotonic() + deadline_s
    spins = 0
    while True:
        s1 = seqs[word]
        if not s1 & 1:
            data = copy()
            if seqs[word] == s1:
                return data
        spins += 1
        if spins >= _SPINS_BEFORE_YIELD:
            os.sched_yield()
        if time.monotonic() > deadline:
            raise on_timeout()


class _Mapping:
    """An mmap of a whole region plus its ``'Q'`` view; owns both and releases them in order.

    ``posix_ipc`` descriptors are closed as soon as the mapping exists: the mapping keeps the
    memory alive and a lingering fd would only leak.
    """

    __slots__ = ("mm", "_view", "seqs", "size")

    def __init__(self, shm: Any, *, writable: bool) -> None:
        size = int(shm.size)
        fd = int(shm.fd)
        try:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot)
        finally:
            shm.close_fd()
        self.size = size
        self._view = memoryview(self.mm)
        words = size - size % 8
        self.seqs = self._view[:words].cast("Q")

    def close(self) -> None:
        self.seqs.release()
        self._view.release()
        self.mm.close()


def _open_existing(name: str, *, read_only: bool) -> Any:
    try:
        return posix_ipc.SharedMemory(name, read_only=read_only)
    except posix_ipc.ExistentialError as exc:
        raise RegionNotFoundError(name) from exc
    except posix_ipc.PermissionsError as exc:
        raise RegionPermissionError(name) from exc


def _unlink_quietly(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


def _inode_of(name: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the object currently behind ``name``, or None if there is none."""
    try:
        shm = posix_ipc.SharedMemory(name, read_only=True)
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return None
    try:
        st = os.fstat(int(shm.fd))
        return (st.st_dev, st.st_ino)
    finally:
        shm.close_fd()


# --------------------------------------------------------------------------- writers


class ClosedOnExit:
    """``with region: …`` closes it on the way out (writers keep their default of unlinking)."""

    def close(self) -> None:
        raise TypeError(f"{type(self).__name__} must define close()")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()




# --------------------------------------------------------------------------- takeover and close


@dataclass(frozen=True, slots=True)
class Predecessor:
    """What a new writer needs to know of a region of its own layout found under its name."""

    owner_pid: int
    heartbeat_ms: int
    generation: int


def clear_the_way(
    name: str,
    *,
    header_size: int,
    parse: Callable[[bytes], Predecessor | None],
    stale_after_ms: int,
    now_ms: Callable[[], int],
) -> int:
    """Unlink an abandoned region of this name; return its generation (0 if none or foreign).

    The one takeover rule of every layout. ``parse`` recognises a header of the caller's layout
    (magic, version) or returns None for a foreign one. The owner is alive if its pid exists -- or,
    for our own pid (a restarted container often gets the crashed one's pid), only if a writer of
    this process holds the name. A live owner with a fresh heartbeat keeps its region, and so does
    a live owner whose header seq stays odd for ``TAKEOVER_READ_DEADLINE_S`` (half-written: killing
    a live writer's region is worse than refusing to start): RegionBusyError. A dead or stale owner,
    a crashed writer's half-written header, a foreign or truncated region are unlinked.
    """
    try:
        shm = posix_ipc.SharedMemory(name, read_only=True)
    except posix_ipc.ExistentialError:
        return 0
    except posix_ipc.PermissionsError as exc:
        raise RegionPermissionError(name) from exc
    if int(shm.size) < header_size:
        shm.close_fd()
        _unlink_quietly(name)
        return 0
    mapping = _Mapping(shm, writable=False)
    try:
        mm = mapping.mm

        def copy() -> bytes:
            return mm[:header_size]

        try:
            raw = _seqlock_read(
                mapping.seqs,
                _SEQ_WORD,
                copy,
                TAKEOVER_READ_DEADLINE_S,
                lambda: ReadTimeoutError(name, "header", TAKEOVER_READ_DEADLINE_S),
            )
            stuck = False
        except ReadTimeoutError:
            raw = mm[:header_size]  # a writer died mid-store, or is very slow
            stuck = True
    finally:
        mapping.close()
    found = parse(raw)
    if found is not None:
        if found.owner_pid == os.getpid():
            alive = name in _HELD_HERE
        else:
            alive = pid_alive(found.owner_pid)
        fresh = now_ms() - found.heartbeat_ms <= stale_after_ms
        if alive and (stuck or fresh):
            raise RegionBusyError(name, found.owner_pid)
    _unlink_quietly(name)
    return found.generation if found is not None else 0


def create_region(name: str, size: int) -> tuple[Any, tuple[int, int]]:
    """Create ``name`` (``O_CREAT|O_EXCL``, mode 0600); return it and its (st_dev, st_ino).

    RegionBusyError(name, 0) if someone created it between our unlink and our create.
    """
    try:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
    except posix_ipc.ExistentialError as exc:
        raise RegionBusyError(name, 0) from exc
    except posix_ipc.PermissionsError as exc:
        raise RegionPermissionError(name) from exc
    st = os.fstat(int(shm.fd))
    return shm, (st.st_dev, st.st_ino)


def hold(name: str, inode: tuple[int, int]) -> None:
    """Note that a writer of this process holds ``name`` (see ``_HELD_HERE``)."""
    _HELD_HERE[name] = inode


def release(name: str, inode: tuple[int, int], *, unlink: bool = True) -> None:
    """A writer is done with ``name``: forget it and unlink it -- only if it still maps *our* region.

    A writer whose region was taken over (its heartbeat went stale) must not delete its successor's.
    """
    if _HELD_HERE.get(name) == inode:
        del _HELD_HERE[name]
    if unlink and _inode_of(name) == inode:
        _unlink_quietly(name)


def inode_of(name: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the region behind ``name`` now, found through POSIX shm (no path)."""
    return _inode_of(name)
