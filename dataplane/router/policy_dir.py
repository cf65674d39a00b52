"""``router --policy-dir DIR``: run the policy delivered as files (a mounted ConfigMap in Kubernetes).

In a cluster no SY.policy runs beside the routers: the operator compiles the ``Policy`` resource
and writes the artefact into the hive's policy ConfigMap, which every router of the hive mounts.
The directory holds three keys:

* ``artefact`` — the artefact bytes (:meth:`Artefact.to_bytes`, from the ConfigMap's binaryData);
* ``version`` — the policy version, a positive integer in decimal;
* ``sha256`` — the SHA-256 of ``artefact`` (64 hex digits, ``sha256:`` prefix accepted).

kubelet updates such a mount in one step: the files are symlinks into ``..data``, itself a symlink
to a timestamped directory that kubelet replaces by renaming a new symlink over it.  The loader
resolves ``..data`` once and reads all three keys from that one directory, so it never mixes the
version of one update with the artefact of another; a plain directory (no ``..data``) is read as is.

Every second the loader compares the directory's signature (the ``..data`` target, or the files'
sizes and modification times) with the one it last handled.  On a change it reads the keys, checks
the bytes against ``sha256`` and the artefact's own module digest, and only then writes them into
this router's policy region (the router is that region's writer here) and reloads the policy at
once, exactly as an ``OPA_RELOAD`` would.  Anything wrong (a tampered or truncated artefact, a bad
version or digest) is refused: the router keeps routing with the policy it runs, and its status'
``policy.error`` says why (code ``HASH_MISMATCH``, ``INVALID_REQUEST`` or ``POLICY_LOAD_ERROR``).
A directory that becomes empty leaves the running policy in place.

Versions may go down (a rollback delivers an older version): the region takes only growing
versions from one writer, so for a lower version the loader replaces the region with a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fluxbee.dataplane.policy import POLICY_LOAD_ERROR, Artefact, PolicyError
from fluxbee.dataplane.shm.policy import DEFAULT_CAPACITY, PolicyRegion, artefact_digest, normalise_digest
from fluxbee.dataplane.shm.region import ShmError

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

log = logging.getLogger(__name__)

ARTEFACT_KEY: Final = "artefact"
VERSION_KEY: Final = "version"
SHA256_KEY: Final = "sha256"
DATA_LINK: Final = "..data"
SOURCE: Final = "policy-dir"
MAX_SMALL_FILE: Final = 256

HASH_MISMATCH: Final = "HASH_MISMATCH"
INVALID_REQUEST: Final = "INVALID_REQUEST"


class MountRefused(Exception):
    """The directory holds something the router will not run: ``code`` and ``detail`` go to its status."""

    def __init__(self, code: str, detail: str, version: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.version = version


class MountMoved(Exception):
    """kubelet replaced the directory while it was being read: read it again."""


@dataclass(frozen=True, slots=True)
class Mounted:
    """A delivered policy whose bytes match their digest and whose artefact decodes and verifies."""

    version: int
    sha256: str
    raw: bytes
    artefact: Artefact


def signature(directory: Path) -> str | None:
    """What changes whenever kubelet (or anyone) replaces the keys; None when there is nothing to read."""
    link = directory / DATA_LINK
    try:
        if link.is_symlink():
            return "data:" + os.readlink(link)
        stats = []
        for key in (ARTEFACT_KEY, VERSION_KEY, SHA256_KEY):
            st = (directory / key).stat()
            stats.append(f"{key}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"error:{err.errno}"
    return "files:" + ",".join(stats)


def _read(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MountRefused(INVALID_REQUEST, f"{path.name} is larger than {limit} bytes")
    return data


def read_mounted(directory: Path, max_bytes: int = DEFAULT_CAPACITY) -> Mounted | None:
    """The delivered policy in ``directory`` (None when it holds none), checked.

    :class:`MountRefused` for content that must not run, :class:`MountMoved` when kubelet swapped
    the files while they were read (the caller reads again)."""
    link = directory / DATA_LINK
    try:
        base = directory / os.readlink(link) if link.is_symlink() else directory
    except OSError as err:
        raise MountMoved(str(err)) from err
    if base is not directory and not base.is_dir():
        raise MountMoved(f"{DATA_LINK} points at {base.name}, which is gone")
    try:
        if not (base / ARTEFACT_KEY).exists() and not (base / VERSION_KEY).exists():
            return None
        version_text = _read(base / VERSION_KEY, MAX_SMALL_FILE)
        digest_text = _read(base / SHA256_KEY, MAX_SMALL_FILE)
        raw = _read(base / ARTEFACT_KEY, max_bytes)
    except FileNotFoundError as err:
        if base is not directory:  # the timestamped directory went away under us
            raise MountMoved(str(err)) from err
        raise MountRefused(INVALID_REQUEST, f"incomplete policy directory: {err.filename} is missing") from err
    except OSError as err:
        raise MountRefused(INVALID_REQUEST, f"cannot read the policy directory: {err}") from err
    try:
        version = int(version_text.decode("ascii").strip())
        if version < 1:
            raise ValueError(version)
    except ValueError as err:
        raise MountRefused(INVALID_REQUEST, f"version must be a positive integer, not {version_text[:40]!r}") from err
    try:
        digest = normalise_digest(digest_text.decode("ascii").strip())
    except (ValueError, UnicodeDecodeError) as err:
        raise MountRefused(INVALID_REQUEST, f"sha256: {err}", version) from err
    actual = artefact_digest(raw)
    if actual != digest:
        raise MountRefused(HASH_MISMATCH, f"the artefact of version {version} hashes to {actual}, "
                                          f"not the delivered sha256 {digest}", version)
    try:
        artefact = Artefact.from_bytes(raw)
    except PolicyError as err:
        raise MountRefused(POLICY_LOAD_ERROR, f"version {version}: {err}", version) from err
    return Mounted(version, digest, raw, artefact)


class PolicyDirLoader:
    """Watches ``--policy-dir`` for its router (see the module docstring)."""

    def __init__(self, router: Router, directory: Path) -> None:
        self._router = router
        self.directory = directory
        self._region: PolicyRegion | None = None
        self._seen: str | None = None
        self._busy = False

    def poll(self) -> None:
        """Called every second by the router: start a load when the directory changed."""
        if self._busy or self._router.stopped.is_set():
            return
        sig = signature(self.directory)
        if sig is None or sig == self._seen:
            return
        self._busy = True
        self._router.policy.spawn(self._load(sig))

    def heartbeat(self) -> None:
        if self._region is not None:
            self._region.heartbeat()

    def close(self) -> None:
        if self._region is not None:
            self._region.close()
            self._region = None

    async def _load(self, sig: str) -> None:
        self._seen = sig  # a refused content is not read again until it changes
        try:
            try:
                mounted = await asyncio.to_thread(read_mounted, self.directory)
            except MountMoved as err:
                log.info("policy directory %s changed while read (%s); reading it again", self.directory, err)
                self._seen = None
                return
            if mounted is None:
                current = self._router.policy.current
                log.warning("policy directory %s holds no policy; %s", self.directory,
                            f"keeping version {current.version}" if current else "none is running")
                return
            self._publish(mounted)
            answer = await self._router.policy.reload({"version": mounted.version,
                                                       "hash": f"sha256:{mounted.sha256}"})
            if answer.get("status") != "ok":
                log.warning("policy version %d from %s refused: %s", mounted.version, self.directory,
                            answer.get("error_detail"))
        except MountRefused as err:
            self._refuse(err.code, err.detail, err.version)
        except (ShmError, ValueError) as err:
            self._refuse(POLICY_LOAD_ERROR, f"not written to the policy region: {err}", None)
        finally:
            self._busy = False

    def _publish(self, mounted: Mounted) -> None:
        region = self._region
        if region is not None and mounted.version == region.version and mounted.sha256 == region.sha256:
            return
        if region is not None and mounted.version <= region.version:  # a rollback: a fresh region
            region.close()
            self._region = region = None
        if region is None:
            s = self._router.settings
            region = self._region = PolicyRegion.create(s.hive_id, owner_uuid=self._router.uuid, run_dir=s.run_dir,
                                                        owner_name=self._router.name,
                                                        capacity_bytes=max(DEFAULT_CAPACITY, len(mounted.raw)))
        region.publish(mounted.raw, mounted.version, mounted.sha256, engine=mounted.artefact.engine,
                       entrypoints=mounted.artefact.entrypoints)

    def _refuse(self, code: str, detail: str, version: int | None) -> None:
        policy = self._router.policy
        policy.reloads["refused"] += 1
        error: dict[str, Any] = {"code": code, "detail": detail[:1000], "source": SOURCE, "version": version,
                                 "hash": None}
        policy.error = error
        current = policy.current
        log.warning("policy from %s refused: %s: %s; %s", self.directory, code, detail,
                    f"keeping version {current.version}" if current else "no policy is running")
