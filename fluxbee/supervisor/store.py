"""The local hive's runtime store: the original's ``runtimes/<name>/<version>/`` layout.

``<run dir>/dist/runtimes/<name>/<version>/`` holds ``package.json``, ``bin/start.sh`` and
``config/default-config.json``; ``<run dir>/dist/runtimes/manifest.json`` lists, per runtime,
the ``available`` versions and the ``current`` one.  Until ``fluxbee publish`` exists the store is
seeded with the SDK's example nodes (:func:`seed_builtins`), whose ``start.sh`` runs them with this
interpreter.  The store is read on every plan, so a package copied in by hand is picked up too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxbee import __version__
from fluxbee.dataplane.names import RUNTIME_NAME_RE, VERSION_RE
from fluxbee.errors import CodedError
from fluxbee.models import ObjectMeta, Runtime, RuntimeSpec

VERSION_TOKEN_RE = VERSION_RE
BUILTIN_NODES = {"fluxbee.echo": "echo", "fluxbee.listener": "listener"}


class StoreError(CodedError):
    """A runtime lookup that cannot be satisfied; ``code`` is the admin API error code."""


@dataclass(frozen=True, slots=True)
class Resolved:
    name: str
    version: str
    package_dir: Path
    package: dict[str, Any]


class RuntimeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        """``<run dir>/dist/runtimes``."""

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        """The manifest, or an empty one when there is none yet."""
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {"schema_version": 1, "version": 0, "updated_at": None, "hash": None, "runtimes": {}}
        return data if isinstance(data, dict) else {"schema_version": 1, "version": 0, "runtimes": {}}

    def manifest_hash(self) -> str | None:
        """Bare sha256 hex of manifest.json (as the original reports it)."""
        try:
            return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()
        except OSError:
            return None

    def install(self, package: dict[str, Any], files: dict[str, str], *, set_current: bool = True) -> Path:
        """Write one package (``files``: relative path → text) and register it in the manifest.

        ``bin/*`` files are made executable.  An identical existing version is left alone.
        """
        name, version = str(package["name"]), str(package["version"])
        if not RUNTIME_NAME_RE.match(name) or not VERSION_TOKEN_RE.match(version):
            raise StoreError("INVALID_PACKAGE_LAYOUT", f"bad runtime name or version: {name!r} {version!r}")
        target = self.root / name / version
        all_files = {"package.json": json.dumps(package, indent=2, sort_keys=True) + "\n", **files}
        for rel, text in all_files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.read_text() == text:
                continue
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o755 if rel.startswith("bin/") else 0o644)
            os.replace(tmp, path)
        manifest = self.manifest()
        runtimes = manifest.setdefault("runtimes", {})
        entry = runtimes.setdefault(name, {"available": [], "current": None})
        changed = False
        if version not in entry["available"]:
            entry["available"] = sorted([*entry["available"], version])
            changed = True
        if (set_current or not entry.get("current")) and entry.get("current") != version:
            entry["current"] = version
            changed = True
        for key in ("type", "runtime_base"):
            value = package.get(key, "full_runtime" if key == "type" else None)
            if entry.get(key) != value:
                entry[key] = value
                changed = True
        if changed or not self.manifest_path.exists():
            now_ms = int(time.time() * 1000)
            manifest["version"] = max(now_ms, int(manifest.get("version") or 0) + 1)
            manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            manifest["hash"] = None
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.manifest_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.manifest_path)
        return target

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["version"] = max(int(time.time() * 1000), int(manifest.get("version") or 0) + 1)
        manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["hash"] = None
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.manifest_path)

    def remove_version(self, name: str, version: str) -> dict[str, Any]:
        """Take ``version`` out of the manifest and its package off the disk, fully or not at all.

        The package folder is first renamed aside (one atomic step: nothing can launch it any more),
        then the manifest is rewritten; if that fails the folder is renamed back and the error raised.
        Only then is the set-aside folder deleted.  The last version takes the runtime with it.  The
        caller has checked that the version may go (not current unless alone, unused, no dependents)."""
        manifest = self.manifest()
        runtimes = manifest.get("runtimes", {})
        entry = runtimes.get(name)
        if not isinstance(entry, dict) or version not in (entry.get("available") or []):
            raise StoreError("RUNTIME_VERSION_NOT_FOUND", f"runtime {name!r} has no version {version!r}")
        package_dir = self.root / name / version
        aside = self.root / name / f".{version}.removing-{os.getpid()}-{time.monotonic_ns()}"
        moved = package_dir.exists()
        if moved:
            os.replace(package_dir, aside)
        left = [v for v in entry["available"] if v != version]
        if left:
            runtimes[name] = {**entry, "available": left}
        else:
            del runtimes[name]
        try:
            self._write_manifest(manifest)
        except OSError as err:
            if moved:
                os.replace(aside, package_dir)
            raise StoreError("RUNTIME_REMOVE_FAILED", f"{self.manifest_path} cannot be written ({err}); "
                                                      f"{name} {version} is left as it was") from err
        if moved:
            shutil.rmtree(aside, ignore_errors=True)
        runtime_dir = self.root / name
        removed_runtime_dir = False
        if not left:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            removed_runtime_dir = not runtime_dir.exists()
        return {"removed_path": str(package_dir), "removed_runtime_dir": removed_runtime_dir,
                "current": runtimes.get(name, {}).get("current"), "manifest_version": manifest["version"],
                "manifest_hash": self.manifest_hash()}

    def seed_builtins(self) -> None:
        """Install the SDK's example nodes (idempotent)."""
        for name, kind in BUILTIN_NODES.items():
            package = {"name": name, "version": __version__, "type": "full_runtime",
                       "description": f"The SDK's {kind} example node", "config_template": "config/default-config.json",
                       "entry_point": "bin/start.sh"}
            start = f'#!/bin/sh\nexec "{sys.executable}" -m fluxbee node {kind} "$@"\n'
            self.install(package, {"bin/start.sh": start, "config/default-config.json": "{}\n"}, set_current=False)

    def names(self) -> list[str]:
        return sorted(self.manifest().get("runtimes", {}))

    def resolve(self, name: str, requested: str = "current") -> Resolved:
        """The concrete version ``requested`` names (``current``/empty → the manifest's current)."""
        entries = self.manifest().get("runtimes", {})
        entry = entries.get(name)
        if entry is None:
            folded = [k for k in entries if k.lower() == name.lower()]
            if len(folded) == 1:
                name, entry = folded[0], entries[folded[0]]
        if not isinstance(entry, dict):
            raise StoreError("RUNTIME_NOT_AVAILABLE", f"runtime {name!r} is not in the store "
                                                      f"(available: {', '.join(sorted(entries)) or 'none'})")
        if requested in ("", "current"):
            version = entry.get("current")
            if not version:
                raise StoreError("RUNTIME_NOT_AVAILABLE", f"runtime {name!r} has no current version")
        else:
            if not VERSION_TOKEN_RE.match(requested):
                raise StoreError("INVALID_REQUEST", f"runtime_version {requested!r} is not a version token")
            if requested not in entry.get("available", []) and requested != entry.get("current"):
                raise StoreError("RUNTIME_NOT_AVAILABLE",
                                 f"runtime {name!r} has no version {requested!r} "
                                 f"(available: {', '.join(entry.get('available', []))})")
            version = requested
        package_dir = self.root / name / str(version)
        if not package_dir.is_dir():
            raise StoreError("RUNTIME_NOT_PRESENT", f"runtime {name} {version} is in the manifest but its package "
                                                    f"{package_dir} is not in the store: install it there (the "
                                                    "original waits for its dist copy: sync-hint, update)")
        if not (package_dir / "package.json").exists():
            # the original launches from the manifest entry and bin/start.sh alone: package.json is what
            # publishing writes, not what a spawn needs, so a package copied in without one still runs
            return Resolved(name=name, version=str(version), package_dir=package_dir,
                            package={"name": name, "version": str(version),
                                     "type": entry.get("type", "full_runtime"),
                                     **({"runtime_base": entry["runtime_base"]} if entry.get("runtime_base")
                                        else {})})
        try:
            package = json.loads((package_dir / "package.json").read_text())
        except (OSError, ValueError) as err:
            raise StoreError("RUNTIME_NOT_AVAILABLE", f"{package_dir}/package.json is unreadable: {err}") from err
        if not isinstance(package, dict):
            raise StoreError("RUNTIME_NOT_AVAILABLE", f"{package_dir}/package.json is not an object")
        return Resolved(name=name, version=str(version), package_dir=package_dir, package=package)

    def check_launchable(self, resolved: Resolved) -> None:
        """Refuse a spawn whose package cannot start, before anything of the node is written (the
        original's preflight): ``RUNTIME_NOT_PRESENT`` for a full runtime without an executable
        ``bin/start.sh``, ``BASE_RUNTIME_NOT_PRESENT`` for a config_only/workflow package whose base has
        no launchable current version."""
        ready = self.readiness(resolved.name, resolved.version)
        kind = resolved.package.get("type", "full_runtime")
        if kind == "full_runtime" and not ready["start_sh_executable"]:
            start = resolved.package_dir / "bin" / "start.sh"
            raise StoreError("RUNTIME_NOT_PRESENT", f"{start} is {'not executable' if start.is_file() else 'missing'}"
                                                    f": runtime {resolved.name} {resolved.version} cannot start")
        if kind != "full_runtime" and not ready["base_runtime_ready"]:
            raise StoreError("BASE_RUNTIME_NOT_PRESENT", f"runtime {resolved.name} {resolved.version} runs on "
                                                         f"{resolved.package.get('runtime_base')!r}, which has no "
                                                         "current version with an executable bin/start.sh")

    def runtime_model(self, resolved: Resolved) -> Runtime:
        """The Runtime resource the planner uses for one resolved package."""
        pkg = resolved.package
        kind = pkg.get("type", "full_runtime")
        template: dict[str, Any] = {}
        template_path = resolved.package_dir / str(pkg.get("config_template") or "config/default-config.json")
        try:
            loaded = json.loads(template_path.read_text())
        except (OSError, ValueError):
            loaded = {}
        if isinstance(loaded, dict):
            template = loaded
        spec: dict[str, Any] = {"version": resolved.version, "type": kind, "config_template": template}
        if kind == "full_runtime":
            spec["command"] = [str(resolved.package_dir / "bin" / "start.sh")]
        else:
            spec["runtime_base"] = pkg.get("runtime_base")
            if kind == "workflow":
                spec["flow"] = {"path": str(resolved.package_dir / "flow")}
        return Runtime(metadata=ObjectMeta(name=resolved.name), spec=RuntimeSpec.model_validate(spec))

    def readiness(self, name: str, version: str) -> dict[str, bool]:
        entry = self.manifest().get("runtimes", {}).get(name, {})
        pkg_dir = self.root / name / version
        if entry.get("type", "full_runtime") == "full_runtime":
            start = pkg_dir / "bin" / "start.sh"
            executable = start.is_file() and os.access(start, os.X_OK)
            return {"runtime_present": start.is_file(), "start_sh_executable": executable,
                    "base_runtime_ready": True}
        base = entry.get("runtime_base")
        base_ready = False
        if isinstance(base, str):
            try:
                b = self.resolve(base)
            except StoreError:
                b = None
            base_start = b.package_dir / "bin" / "start.sh" if b else None
            base_ready = bool(base_start and base_start.is_file() and os.access(base_start, os.X_OK))
        return {"runtime_present": pkg_dir.is_dir(), "start_sh_executable": base_ready,
                "base_runtime_ready": base_ready}
