"""The compiled form of a policy (:class:`Artefact`) and the answer to one input (:class:`Decision`).

An artefact is immutable and self-checking: ``sha256`` is the digest of the WebAssembly module
(or, for an artefact that regorus runs, of the Rego source), recomputed by :meth:`Artefact.verify`,
so a copy that travelled through shared memory or a link is refused if one byte changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from fluxbee.dataplane.policy.errors import PolicyLoadError

EngineName = Literal["wasm", "regorus"]

TARGET_ENTRYPOINT: Final = "router/target"
ALLOW_ENTRYPOINT: Final = "router/allow"

#: Top-level data keys the system fills in (:func:`fluxbee.dataplane.policy.data.build_identity_data`);
#: a policy's own data may not define them.
SYSTEM_DATA_KEYS: Final = frozenset({"identity", "identity_aliases", "by_capability", "by_role"})

_encoder = msgspec.json.Encoder(order="sorted")

ARTEFACT_FORMAT: Final = 1
"""Version of :meth:`Artefact.to_bytes`'s encoding; :meth:`Artefact.from_bytes` refuses others."""


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    """The serialised form of an :class:`Artefact` (MessagePack, keys sorted)."""

    format: int
    source: str
    wasm: bytes | None
    sha256: str
    target_entrypoint: str
    allow_entrypoint: str | None
    data: dict[str, Any]
    compiler: str
    fallback_reason: str | None


_wire_encoder = msgspec.msgpack.Encoder(order="sorted")
_wire_decoder = msgspec.msgpack.Decoder(_Wire)


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: equal documents give equal bytes (and digests)."""
    return _encoder.encode(value)


@dataclass(frozen=True, slots=True)
class Artefact:
    """A policy ready to load: the module (or, without one, the source regorus evaluates), the
    entry points it answers, its own data and digests.

    ``engine`` says which engine will run it: ``"wasm"`` when ``wasm`` holds a module compiled by
    ``opa build -t wasm``, ``"regorus"`` otherwise, with ``fallback_reason`` saying why there is no
    module (no ``opa`` on this machine, for instance). ``allow_entrypoint`` is ``None`` when the
    policy defines no ``allow`` rule: such a policy never refuses a message.
    """

    source: str
    wasm: bytes | None
    sha256: str
    target_entrypoint: str = TARGET_ENTRYPOINT
    allow_entrypoint: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    compiler: str = ""  # e.g. "opa 1.22.4" or "regorus"
    fallback_reason: str | None = None

    @property
    def engine(self) -> EngineName:
        return "wasm" if self.wasm is not None else "regorus"

    @property
    def entrypoints(self) -> tuple[str, ...]:
        return (self.target_entrypoint,) if self.allow_entrypoint is None else (
            self.target_entrypoint, self.allow_entrypoint)

    @staticmethod
    def digest(source: str, wasm: bytes | None) -> str:
        return hashlib.sha256(wasm if wasm is not None else source.encode("utf-8")).hexdigest()

    def to_bytes(self) -> bytes:
        """The artefact as bytes (MessagePack with sorted keys): what the policy region and the
        links carry. Equal artefacts give equal bytes, so the bytes' SHA-256 identifies a version's
        artefact (module, source, data and entry points together)."""
        return _wire_encoder.encode(_Wire(
            format=ARTEFACT_FORMAT, source=self.source, wasm=self.wasm, sha256=self.sha256,
            target_entrypoint=self.target_entrypoint, allow_entrypoint=self.allow_entrypoint,
            data=dict(self.data), compiler=self.compiler, fallback_reason=self.fallback_reason))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Artefact:
        """Decode :meth:`to_bytes`'s output and :meth:`verify` it.

        :class:`PolicyLoadError` for bytes that are not an artefact (truncated, wrong types,
        unknown fields, another format version) or whose module no longer matches its digest.
        """
        try:
            wire = _wire_decoder.decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise PolicyLoadError(f"not a policy artefact: {exc}") from exc
        if wire.format != ARTEFACT_FORMAT:
            raise PolicyLoadError(
                f"artefact format {wire.format}; this router reads format {ARTEFACT_FORMAT}")
        artefact = cls(
            source=wire.source, wasm=wire.wasm, sha256=wire.sha256,
            target_entrypoint=wire.target_entrypoint, allow_entrypoint=wire.allow_entrypoint,
            data=wire.data, compiler=wire.compiler, fallback_reason=wire.fallback_reason)
        artefact.verify()
        return artefact

    def verify(self) -> None:
        """Raise :class:`PolicyLoadError` unless ``sha256`` matches the module (or source)."""
        actual = self.digest(self.source, self.wasm)
        if actual != self.sha256:
            raise PolicyLoadError(f"artefact hash mismatch: expected {self.sha256}, computed {actual}")


def entrypoint_rule(entrypoint: str) -> str:
    """``router/target`` → ``data.router.target`` (the query regorus evaluates)."""
    return "data." + entrypoint.replace("/", ".")


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy said about one input.

    ``target`` is the string the policy's target rule produced, or ``None`` when the rule is
    undefined for this input. ``allow`` is ``None`` only when the policy has no allow rule; when it
    has one, an input for which it is undefined is not allowed (``False``), OPA's own convention.
    ``engine`` names the engine that decided.
    """

    target: str | None
    allow: bool | None
    engine: EngineName
