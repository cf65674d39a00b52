"""The one engine interface and :func:`load`, which picks the engine an artefact asks for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from fluxbee.dataplane.policy.artefact import SYSTEM_DATA_KEYS, Artefact, Decision, EngineName
from fluxbee.dataplane.policy.errors import PolicyLoadError


class Engine(Protocol):
    """A loaded policy: data already inside, one :meth:`evaluate` per input."""

    @property
    def name(self) -> EngineName: ...

    @property
    def artefact(self) -> Artefact: ...

    def evaluate(self, input_doc: Mapping[str, Any]) -> Decision: ...


def merge_data(own: Mapping[str, Any], system: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole data document: the policy's own data, then the system's keys (``identity`` …).

    The system may only bring its own keys, and the policy's data may not hold them (checked when
    compiling; checked again here for artefacts that travelled)."""
    system = dict(system or {})
    stray = sorted(set(system) - SYSTEM_DATA_KEYS)
    if stray:
        raise PolicyLoadError(f"system data has keys it does not own: {', '.join(stray)}")
    clash = sorted(SYSTEM_DATA_KEYS & set(own))
    if clash:
        raise PolicyLoadError(f"the policy's own data defines system keys: {', '.join(clash)}")
    return {**own, **system}


def load(artefact: Artefact, system_data: Mapping[str, Any] | None = None, *,
         engine: EngineName | None = None) -> Engine:
    """Load ``artefact`` with the system data (:func:`~fluxbee.dataplane.policy.data.build_identity_data`).

    The artefact's own engine by default (``"wasm"`` when it carries a module); ``engine="regorus"``
    evaluates the source of a WebAssembly artefact instead (agreement checks, ``check``). Data is
    parsed once, here. Raises :class:`PolicyLoadError` when the artefact cannot run here."""
    data = merge_data(artefact.data, system_data)
    chosen = engine or artefact.engine
    try:
        if chosen == "wasm":
            from fluxbee.dataplane.policy.wasm import WasmEngine  # noqa: PLC0415 - wasmtime only when asked for
            return WasmEngine(artefact, data)
        if chosen == "regorus":
            from fluxbee.dataplane.policy.regorus_engine import RegorusEngine  # noqa: PLC0415
            return RegorusEngine(artefact, data)
    except ImportError as err:  # the base install: the engines come with the policy extra
        raise PolicyLoadError(f"the {chosen} engine is not installed here ({err.name or err}): "
                              "pip install 'fluxbee[policy]'") from None
    raise PolicyLoadError(f"unknown engine {chosen!r}; expected wasm or regorus")
