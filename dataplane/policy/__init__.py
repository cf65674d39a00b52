"""Routing policies: Rego compiled by OPA to WebAssembly, or evaluated by regorus; one interface.

A policy is a Rego module (package ``router`` by default) with a ``target`` rule (the node, ILK,
capability or role a ``dst: null`` message goes to) and, optionally, an ``allow`` rule (whether a
message carrying ``meta.action`` may pass). Its life has three steps:

1. **compile** — :func:`compile_policy(source, data=...) <compile_policy>` returns an
   :class:`Artefact`: with ``opa`` here (``$FLUXBEE_OPA`` or ``PATH``; ``hack/build-tools.sh``
   builds it from source, the container image carries it), ``opa build -t wasm -e router/target
   [-e router/allow]`` gives the WebAssembly module, its sha256, and the entry points; without it
   the artefact holds the source for regorus and ``fallback_reason`` says why. Bad Rego raises
   :class:`CompileError` (``COMPILE_ERROR``) with ``line`` and ``column`` from either compiler.
2. **load** — :func:`load(artefact, system_data) <load>` returns an :class:`Engine`
   (:class:`~fluxbee.dataplane.policy.wasm.WasmEngine` on wasmtime, or
   :class:`~fluxbee.dataplane.policy.regorus_engine.RegorusEngine`). The data document — the
   policy's own data plus :func:`build_identity_data`'s ``identity``, ``identity_aliases``,
   ``by_capability`` and ``by_role`` — is parsed once per version, here. An artefact that cannot run
   (hash mismatch, unsupported WebAssembly ABI, builtins this host lacks, listed) raises
   :class:`PolicyLoadError`.
3. **evaluate** — ``engine.evaluate(input)`` with :func:`build_input`'s document returns a
   :class:`Decision`: ``target`` (a string, or ``None`` when undefined), ``allow`` (``None`` when
   the policy has no allow rule), and the ``engine`` that decided (``"wasm"`` or ``"regorus"``).
   A failing evaluation (conflicting rule values, a builtin error, a non-string target) raises
   :class:`EvaluationError` (``OPA_ERROR``) with the detail.

Engines are not thread-safe (one per thread). The two engines must agree on every input; the test
suite checks that on a generated corpus for every test policy.

Rules should look identities up through the indexes (``data.by_capability[cap]``), never scan
``data.identity``: a scan over 10,000 identities costs milliseconds per message in either engine,
the lookup microseconds.
"""

from fluxbee.dataplane.policy.artefact import (
    ALLOW_ENTRYPOINT,
    SYSTEM_DATA_KEYS,
    TARGET_ENTRYPOINT,
    Artefact,
    Decision,
    EngineName,
)
from fluxbee.dataplane.policy.compiler import OpaNotFound, compile_policy, find_opa
from fluxbee.dataplane.policy.data import IdentityRecord, build_identity_data, build_input
from fluxbee.dataplane.policy.engine import Engine, load, merge_data
from fluxbee.dataplane.policy.errors import (
    COMPILE_ERROR,
    OPA_ERROR,
    POLICY_LOAD_ERROR,
    CompileError,
    EvaluationError,
    PolicyError,
    PolicyLoadError,
)

__all__ = [
    "ALLOW_ENTRYPOINT",
    "COMPILE_ERROR",
    "OPA_ERROR",
    "POLICY_LOAD_ERROR",
    "SYSTEM_DATA_KEYS",
    "TARGET_ENTRYPOINT",
    "Artefact",
    "CompileError",
    "Decision",
    "Engine",
    "EngineName",
    "EvaluationError",
    "IdentityRecord",
    "OpaNotFound",
    "PolicyError",
    "PolicyLoadError",
    "build_identity_data",
    "build_input",
    "compile_policy",
    "find_opa",
    "load",
    "merge_data",
]
