"""Policy → versioned artefact ConfigMaps and one delivery ConfigMap per hive (pure, no I/O).

Storage and delivery, decided here:

* **One immutable ConfigMap per compiled version** (``<policy>-policy-v<N>``, ``immutable: true``):
  ``binaryData.artefact`` holds the artefact bytes (:meth:`Artefact.to_bytes`), ``data`` its
  version, sha256, engine, compiler and the digest of the spec it came from.  Creating an object is
  atomic, so a version is either stored whole or not at all, and it never changes afterwards.  The
  newest ``spec.keepVersions`` are kept, plus the delivered and the pinned one (rollback needs them).
* **One delivery ConfigMap per hive** (``<hive>-policy``, :func:`policy_config_map_name`), mounted
  into the hive's routers.  It is rewritten in one write carrying the ``resourceVersion`` that was
  read, so two writers never interleave and a lost race is retried, not merged; kubelet then swaps
  the mounted files in one step (its ``..data`` symlink).  It holds the artefact and its version and
  sha256: the router checks the bytes against the digest before loading them.

Versions strictly increase per Policy and are never reused: the next one is above every version
still stored and the one recorded in status.  A rollback (``spec.pinVersion``) delivers a stored
version again under its own number, so the routers report the version that is really running.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fluxbee.dataplane.policy.artefact import canonical_json
from fluxbee.models import PolicySpec
from fluxbee.operator import labels as L
from fluxbee.operator.hive.build import POLICY_ARTEFACT_KEY, POLICY_SHA256_KEY, POLICY_VERSION_KEY

POLICY_LABEL: Final = L.POLICY
VERSION_COMPONENT: Final = "policy-version"
DELIVERY_COMPONENT: Final = "policy"
MAX_ARTEFACT_BYTES: Final = 1024 * 1024 - 16 * 1024
"""The API server refuses a ConfigMap above 1 MiB of data; the rest of the object needs a little room."""


class StoredVersionError(ValueError):
    """A version ConfigMap that is not what the operator wrote (edited, truncated): never delivered."""


def entrypoints(spec: PolicySpec) -> tuple[str, str]:
    """``data.router.target`` → (``router/target``, ``router/allow``): the compiler's entry points."""
    path = spec.entrypoint.removeprefix("data.").split(".")
    package = "/".join(path[:-1]) or path[0]
    return "/".join(path), f"{package}/allow"


def source_digest(spec: PolicySpec) -> str:
    """Digest of what a compile depends on (Rego, entry point, data): equal specs, equal digests."""
    return hashlib.sha256(canonical_json({"rego": spec.rego, "entrypoint": spec.entrypoint,
                                          "data": spec.data})).hexdigest()


def version_config_map_name(policy: str, version: int) -> str:
    return f"{policy}-policy-v{version}"


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One compiled version, as read back from its ConfigMap."""

    version: int
    sha256: str
    engine: str
    compiler: str
    source_sha256: str
    config_map: str
    fallback_reason: str | None = None

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "engine": self.engine,
                "configMap": self.config_map, "sourceSha256": self.source_sha256}


def _labels(policy: str, component: str) -> dict[str, str]:
    return {**L.common(component, policy), POLICY_LABEL: policy}


def build_version_config_map(policy: str, namespace: str, version: int, artefact: bytes, *, engine: str,
                             compiler: str, source_sha256: str, fallback_reason: str | None) -> dict[str, Any]:
    """The immutable ConfigMap of one compiled version (ValueError if the artefact cannot fit)."""
    if len(artefact) > MAX_ARTEFACT_BYTES:
        raise ValueError(f"the compiled artefact is {len(artefact)} bytes; a ConfigMap holds at most "
                         f"{MAX_ARTEFACT_BYTES}")
    data = {POLICY_VERSION_KEY: str(version), POLICY_SHA256_KEY: hashlib.sha256(artefact).hexdigest(),
            "engine": engine, "compiler": compiler, "sourceSha256": source_sha256}
    if fallback_reason:
        data["fallbackReason"] = fallback_reason
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": version_config_map_name(policy, version), "namespace": namespace,
                     "labels": _labels(policy, VERSION_COMPONENT)},
        "immutable": True,
        "data": data,
        "binaryData": {POLICY_ARTEFACT_KEY: base64.b64encode(artefact).decode("ascii")},
    }


def stored_version(cm: Mapping[str, Any]) -> StoredVersion:
    """A version ConfigMap's description (StoredVersionError if its fields are not the operator's)."""
    name = str((cm.get("metadata") or {}).get("name", "?"))
    data = cm.get("data") or {}
    try:
        version = int(data[POLICY_VERSION_KEY])
        sha = str(data[POLICY_SHA256_KEY])
        engine, compiler, source = str(data["engine"]), str(data["compiler"]), str(data["sourceSha256"])
    except (KeyError, TypeError, ValueError) as err:
        raise StoredVersionError(f"ConfigMap {name} is not a stored policy version: {err!r}") from err
    if version < 1 or name != version_config_map_name(name.rsplit("-policy-v", 1)[0], version):
        raise StoredVersionError(f"ConfigMap {name} says version {version}")
    reason = data.get("fallbackReason")
    return StoredVersion(version, sha, engine, compiler, source, name, str(reason) if reason else None)


def stored_artefact(cm: Mapping[str, Any]) -> bytes:
    """The artefact bytes of a version ConfigMap, checked against its recorded sha256."""
    info = stored_version(cm)
    raw = (cm.get("binaryData") or {}).get(POLICY_ARTEFACT_KEY)
    try:
        artefact = base64.b64decode(str(raw), validate=True)
    except (binascii.Error, ValueError) as err:
        raise StoredVersionError(f"ConfigMap {info.config_map}: binaryData.{POLICY_ARTEFACT_KEY} is not "
                                 f"base64: {err}") from err
    actual = hashlib.sha256(artefact).hexdigest()
    if raw is None or actual != info.sha256:
        raise StoredVersionError(f"ConfigMap {info.config_map}: the artefact hashes to {actual}, "
                                 f"not the recorded {info.sha256}")
    return artefact


def build_delivery_config_map(hive_config_map: str, policy: str, namespace: str, version: int,
                              artefact: bytes) -> dict[str, Any]:
    """What a hive's policy ConfigMap should hold to run ``version``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": hive_config_map, "namespace": namespace,
                     "labels": _labels(policy, DELIVERY_COMPONENT)},
        "data": {POLICY_VERSION_KEY: str(version), POLICY_SHA256_KEY: hashlib.sha256(artefact).hexdigest(),
                 "policy": policy},
        "binaryData": {POLICY_ARTEFACT_KEY: base64.b64encode(artefact).decode("ascii")},
    }


def delivered(cm: Mapping[str, Any]) -> tuple[int, str] | None:
    """``(version, sha256)`` a delivery ConfigMap claims to hold (None if it holds none)."""
    data = cm.get("data") or {}
    try:
        return int(data[POLICY_VERSION_KEY]), str(data[POLICY_SHA256_KEY])
    except (KeyError, TypeError, ValueError):
        return None


def next_version(stored: Iterable[int], recorded: int | None) -> int:
    """Above every stored version and the newest one status remembers (a pruned number is never reused)."""
    return max([0, recorded or 0, *stored]) + 1


def to_prune(stored: Iterable[int], keep: int, *, delivered_version: int | None,
             pinned: int | None) -> list[int]:
    """Versions whose ConfigMaps go: all but the newest ``keep``, the delivered and the pinned one."""
    ordered = sorted(set(stored), reverse=True)
    kept = set(ordered[:keep]) | {v for v in (delivered_version, pinned) if v is not None}
    return [v for v in ordered if v not in kept]
