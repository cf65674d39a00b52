"""``POST /opa/policy/check`` in a cluster: validate Rego and evaluate an input in the admin process.

No SY.policy runs in a cluster, so the admin API checks by itself, with regorus (the engine the
local ``check`` uses too): the Rego of the request, or the artefact of a stored version read from
its ConfigMap (``binaryData.artefact``), its bytes checked against the sha256 the operator recorded
and the artefact against its own digest.  Nothing is written and no version is taken.

regorus engines must be dropped by the thread that made them, so every compile and evaluation
runs on one worker thread of :class:`Checker`, and only plain values and fresh errors leave it.
regorus comes with the policy extra (the container image has it); without it ``check`` answers
``POLICY_LOAD_ERROR`` saying what to install, and every other route works.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from fluxbee.admin.errors import AdminError
from fluxbee.dataplane.policy.artefact import ALLOW_ENTRYPOINT, TARGET_ENTRYPOINT, Artefact
from fluxbee.dataplane.policy.errors import CompileError, EvaluationError, PolicyLoadError

ARTEFACT_KEY: Final = "artefact"
"""The key of a stored version's artefact in its ConfigMap's ``binaryData`` (the operator's layout)."""
SHA256_KEY: Final = "sha256"
"""The key of the artefact's recorded sha256 in the ConfigMap's ``data``."""


def rule_path(entrypoint: str | None) -> str:
    """``data.router.target`` or ``router/target`` → ``router/target`` (default: the target rule)."""
    if not entrypoint:
        return TARGET_ENTRYPOINT
    return entrypoint.removeprefix("data.").replace(".", "/")


def artefact_from_config_map(cm: Mapping[str, Any], *, expected_sha256: str | None) -> Artefact:
    """The artefact a stored version's ConfigMap holds, its hashes verified (POLICY_LOAD_ERROR if not)."""
    name = str((cm.get("metadata") or {}).get("name", "?"))
    raw = (cm.get("binaryData") or {}).get(ARTEFACT_KEY)
    recorded = (cm.get("data") or {}).get(SHA256_KEY)
    if not isinstance(raw, str) or not isinstance(recorded, str):
        raise AdminError("POLICY_LOAD_ERROR", f"ConfigMap {name} holds no stored policy artefact")
    try:
        blob = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as err:
        raise AdminError("POLICY_LOAD_ERROR", f"ConfigMap {name}: the artefact is not base64: {err}") from err
    actual = hashlib.sha256(blob).hexdigest()
    for label, want in (("recorded in the ConfigMap", recorded), ("in the Policy's status", expected_sha256)):
        if want is not None and actual != want:
            raise AdminError("POLICY_LOAD_ERROR", f"ConfigMap {name}: the artefact hashes to {actual}, not the "
                                                  f"sha256 {want} {label}; it is not used")
    try:
        return Artefact.from_bytes(blob)
    except PolicyLoadError as err:
        raise AdminError("POLICY_LOAD_ERROR", f"ConfigMap {name}: {err}") from None


class _Failure(Exception):
    """An error that leaves the worker thread holding nothing of regorus."""

    def __init__(self, code: str, detail: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.payload = code, detail, payload


def _compile(rego: str, data: Mapping[str, Any] | None, entrypoint: str) -> Artefact:
    from fluxbee.dataplane.policy.compiler import compile_policy  # noqa: PLC0415 - regorus only when checking

    failure: _Failure
    try:
        return compile_policy(rego, data=data, target_entrypoint=entrypoint, allow_entrypoint=ALLOW_ENTRYPOINT,
                              use_opa=False)
    except CompileError as err:
        failure = _Failure("COMPILE_ERROR", str(err), {"line": err.line, "column": err.column,
                                                       "compiler": err.compiler or None})
    except ImportError as err:
        failure = _Failure("POLICY_LOAD_ERROR", f"regorus is not installed here ({err.name or err}): "
                                                "pip install 'fluxbee[policy]'")
    gc.collect()
    raise failure


def _evaluate(artefact: Artefact, input_doc: dict[str, Any]) -> dict[str, Any]:
    from fluxbee.dataplane.policy.engine import load  # noqa: PLC0415 - regorus only when checking

    failure: _Failure
    try:
        decision = load(artefact, engine="regorus").evaluate(input_doc)
        return {"target": decision.target, "allow": decision.allow, "engine": decision.engine}
    except (EvaluationError, PolicyLoadError) as err:
        failure = _Failure(err.code, str(err))
    gc.collect()
    raise failure


class Checker:
    """Compiles and evaluations for ``check``, one at a time, on one worker thread."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-check")

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except _Failure as failure:
            raise AdminError(failure.code, failure.detail, payload=failure.payload) from None

    async def compile(self, rego: str, data: Mapping[str, Any] | None, entrypoint: str | None) -> Artefact:
        artefact: Artefact = await self._run(_compile, rego, data, rule_path(entrypoint))
        return artefact

    async def evaluate(self, artefact: Artefact, input_doc: dict[str, Any]) -> dict[str, Any]:
        decision: dict[str, Any] = await self._run(_evaluate, artefact, input_doc)
        return decision

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
