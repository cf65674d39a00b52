"""SY.policy's files: the version counter and the current, staged and earlier artefacts of one hive.

Layout under ``<state dir>`` (the hive's ``<run dir>/policy``)::

    version            the highest version ever given out (decimal); versions only grow
    current.json       the artefact the routers run, with its version
    staged.json        the artefact compiled and not applied yet
    applied/<v>.json   every applied version (the newest :data:`KEEP_APPLIED`), for rollback

Every file is written to a temporary name, flushed and renamed: a crash leaves the old file or the
new one, never half of one.  A version is taken (:meth:`PolicyStore.take_version`) only once a
compile has succeeded, so a failed compile consumes none (the original service burned one on every
compile, check included).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxbee.dataplane.policy import Artefact, PolicyLoadError

KEEP_APPLIED = 20
"""Applied versions kept for rollback by version."""


class StoreError(Exception):
    """A state file is unreadable or corrupt; ``path`` names it."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Versioned:
    """An artefact and the version it was given, with when and how it came about."""

    version: int
    artefact: Artefact
    created_at_ms: int
    origin: str = "compile"
    """``compile``, or ``rollback:<v>`` for a version that restores version ``v``'s artefact."""

    def to_json(self) -> dict[str, Any]:
        a = self.artefact
        return {"version": self.version, "created_at_ms": self.created_at_ms, "origin": self.origin,
                "artefact": {"source": a.source, "wasm": base64.b64encode(a.wasm).decode() if a.wasm else None,
                             "sha256": a.sha256, "target_entrypoint": a.target_entrypoint,
                             "allow_entrypoint": a.allow_entrypoint, "data": dict(a.data), "compiler": a.compiler,
                             "fallback_reason": a.fallback_reason}}

    @classmethod
    def from_json(cls, doc: Any) -> Versioned:
        """Raises ValueError (with what is wrong) for a document that is not a versioned artefact."""
        if not isinstance(doc, dict) or not isinstance(doc.get("artefact"), dict):
            raise ValueError("not a versioned artefact document")
        version, a = doc.get("version"), doc["artefact"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version {version!r} is not a positive integer")
        wasm = a.get("wasm")
        data = a.get("data") or {}
        if not isinstance(a.get("source"), str) or not isinstance(a.get("sha256"), str) or not isinstance(data, dict):
            raise ValueError("artefact source, sha256 or data missing or of the wrong type")
        try:
            artefact = Artefact(source=a["source"], wasm=base64.b64decode(wasm, validate=True) if wasm else None,
                                sha256=a["sha256"], target_entrypoint=str(a.get("target_entrypoint")),
                                allow_entrypoint=a.get("allow_entrypoint"), data=data,
                                compiler=str(a.get("compiler") or ""), fallback_reason=a.get("fallback_reason"))
            artefact.verify()
        except (ValueError, TypeError, PolicyLoadError) as err:
            raise ValueError(f"artefact refused: {err}") from err
        return cls(version=version, artefact=artefact, created_at_ms=int(doc.get("created_at_ms") or 0),
                   origin=str(doc.get("origin") or "compile"))

    @property
    def hash(self) -> str:
        """``sha256:<hex>`` of the serialised artefact: what the region, OPA_RELOAD and router status carry."""
        return "sha256:" + hashlib.sha256(self.artefact.to_bytes()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What the API shows of it (no module bytes)."""
        a = self.artefact
        raw = a.to_bytes()
        return {"version": self.version, "hash": self.hash, "sha256": hashlib.sha256(raw).hexdigest(),
                "size": len(raw), "module_sha256": a.sha256, "engine": a.engine,
                "compiler": a.compiler, "fallback_reason": a.fallback_reason, "entrypoints": list(a.entrypoints),
                "wasm_size_bytes": len(a.wasm) if a.wasm is not None else None,
                "created_at_ms": self.created_at_ms, "origin": self.origin}


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` after this, or (on any error) what it held before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class PolicyStore:
    """The files of one hive's policy (single writer: the hive's SY.policy)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    # the version counter ---------------------------------------------------------
    def last_version(self) -> int:
        """The highest version given out (0 before the first); never below the current one."""
        path = self.root / "version"
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            text = "0"
        except (OSError, UnicodeDecodeError) as err:
            raise StoreError(path, f"unreadable: {err}") from err
        if not text.isdigit():
            raise StoreError(path, f"holds {text[:40]!r}, not a version number")
        current = self.current()
        return max(int(text), current.version if current else 0)

    def take_version(self, requested: int | None = None) -> int:
        """The next version (or ``requested``, which must be above every version given out), written
        down before it is used.  Raises ValueError for a requested version that is not greater."""
        last = self.last_version()
        version = last + 1 if requested is None else requested
        if version <= last:
            raise ValueError(f"version {version} is not greater than {last}, the last one given out")
        write_atomic(self.root / "version", f"{version}\n".encode())
        return version

    # artefact files -------------------------------------------------------------
    def _read(self, path: Path) -> Versioned | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(path, f"unreadable: {err}") from err
        try:
            return Versioned.from_json(json.loads(raw))
        except ValueError as err:  # JSONDecodeError is a ValueError
            raise StoreError(path, str(err)) from err

    def _write(self, path: Path, item: Versioned) -> None:
        write_atomic(path, json.dumps(item.to_json(), sort_keys=True).encode())

    def current(self) -> Versioned | None:
        return self._read(self.root / "current.json")

    def staged(self) -> Versioned | None:
        return self._read(self.root / "staged.json")

    def applied(self, version: int) -> Versioned | None:
        return self._read(self.root / "applied" / f"{version}.json")

    def applied_versions(self) -> list[int]:
        directory = self.root / "applied"
        if not directory.is_dir():
            return []
        return sorted(int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit())

    def previous(self) -> Versioned | None:
        """The applied version before the current one (what a plain rollback restores)."""
        current = self.current()
        older = [v for v in self.applied_versions() if current is None or v < current.version]
        return self.applied(older[-1]) if older else None

    def stage(self, item: Versioned) -> None:
        self._write(self.root / "staged.json", item)

    def unstage(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / "staged.json").unlink()

    def make_current(self, item: Versioned) -> None:
        """Record ``item`` as applied and current (the applied copy first: a crash in between leaves
        the old current, and the new version still in the history)."""
        self._write(self.root / "applied" / f"{item.version}.json", item)
        self._write(self.root / "current.json", item)
        for old in self.applied_versions()[:-KEEP_APPLIED]:
            with contextlib.suppress(FileNotFoundError):
                (self.root / "applied" / f"{old}.json").unlink()
