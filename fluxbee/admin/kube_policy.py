"""The ``/opa/*`` routes of the cluster admin API, on the ``Policy`` resource; the applied-version report.

In a cluster no SY.policy runs: the operator compiles ``Policy`` resources and delivers them to the
hives (``fluxbee.operator.policy``).  So the admin API of a hive acts on the Policy that delivers to
its hive — the one whose status lists the hive as ``Delivered``, else one whose ``spec.hives``
names it, else one for every hive of the namespace; when there is none, a write creates
``Policy/<hive resource>`` with ``spec.hives: [<hive>]``.

* ``POST /opa/policy`` writes ``spec.rego`` (``entrypoint``, ``data``) and clears ``spec.pinVersion``,
  then waits for the operator to reconcile that generation and answers with the original's envelope
  (``version``, ``responses`` with this hive's result, ``pending_hives``); bad Rego is
  ``COMPILE_ERROR`` with ``line`` and ``column`` from the Policy's status.  An operator that does not
  answer within :data:`RECONCILE_TIMEOUT` leaves the answer ``sync_pending`` (202).
* ``POST /opa/policy/rollback`` sets ``spec.pinVersion`` (default: the stored version before the
  delivered one) and answers the same way.
* ``POST /opa/policy/compile`` stages: in one write it sets the new Rego and pins ``spec.pinVersion``
  to the delivered version, and marks the Policy staged (annotation :data:`STAGED_ANNOTATION`).  The
  operator compiles the Rego into the next stored version and keeps delivering the pinned one, so
  the hives run what they ran; the answer names the staged version, its hash and engine.  Bad Rego
  is ``COMPILE_ERROR`` with line and column, and the Policy's spec is put back as it was.
* ``POST /opa/policy/apply`` delivers the staged version (it clears the pin and the mark) and
  answers as ``POST /opa/policy`` does; ``NOTHING_STAGED`` when nothing is staged,
  ``VERSION_MISMATCH`` when the body names another version.
* Every spec write (compile-and-apply, stage, apply, rollback) replaces the whole spec in one JSON
  patch carrying the ``resourceVersion`` read, so a change made in between (another admin replica's
  compile or apply) fails it with ``VERSION_CONFLICT`` instead of mixing the two; a retry reads the
  new state.
* ``POST /opa/policy/check`` compiles and evaluates in this process (:mod:`fluxbee.admin.kube_policy_check`):
  nothing written, no version taken.
* ``GET /opa/policy`` and ``GET /opa/status`` read the resource and its status (``current`` and ``staged``).

The applied version is known from the router itself: every :data:`REPORT_S` seconds the admin
process asks the router of its host (the one it is connected to) for its status and, when the
router's policy changed, writes it into the Policy's ``status.applied.<hive>`` (version, sha256,
engine, the refusal if any, and which admin replica reported).  With several admin replicas on
different hosts the last report wins; each names its reporter and time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from fluxbee.admin.backend import RouterLink
from fluxbee.admin.errors import AdminError
from fluxbee.admin.kube_policy_check import Checker, artefact_from_config_map
from fluxbee.dataplane.names import ANNOTATION_POLICY_STAGED, API_VERSION
from fluxbee.dataplane.policy.artefact import Artefact
from fluxbee.kube import JSON_PATCH, ApiError, KubeClient

log = logging.getLogger(__name__)

RECONCILE_TIMEOUT: Final = 60.0
"""How long a write waits for the operator's compile and delivery of the new generation."""
REPORT_S: Final = 5.0
STAGED_ANNOTATION: Final = ANNOTATION_POLICY_STAGED
"""Set (``"true"``) by a staging compile, removed by apply, compile-and-apply and rollback."""


def _status(obj: Mapping[str, Any]) -> dict[str, Any]:
    status = obj.get("status")
    return dict(status) if isinstance(status, Mapping) else {}


def _condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    for cond in _status(obj).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == ctype:
            return dict(cond)
    return {}


def _delivers_to(obj: Mapping[str, Any], hive: str) -> int:
    """How surely ``obj`` is this hive's Policy: 3 delivered, 2 named, 1 for every hive, 0 not."""
    if any(isinstance(h, Mapping) and h.get("hive") == hive and h.get("state") == "Delivered"
           for h in _status(obj).get("hives") or []):
        return 3
    hives = (obj.get("spec") or {}).get("hives")
    if isinstance(hives, list):
        return 2 if hive in hives else 0
    return 1


def _stored(obj: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """The stored versions the Policy's status lists, by version."""
    out: dict[int, dict[str, Any]] = {}
    for entry in _status(obj).get("versions") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("version"), int):
            out[entry["version"]] = dict(entry)
    return out


def staged_version(obj: Mapping[str, Any]) -> int | None:
    """The version a staging compile made and nobody delivered yet, or None.

    Staged means: the Policy carries :data:`STAGED_ANNOTATION`, the operator reconciled its
    generation without a compile error, and its newest compiled version is stored, the newest
    stored, and not the delivered one."""
    meta = obj.get("metadata") or {}
    if (meta.get("annotations") or {}).get(STAGED_ANNOTATION) != "true":
        return None
    st = _status(obj)
    if st.get("observedGeneration") != meta.get("generation"):
        return None
    degraded = _condition(obj, "Degraded")
    if degraded.get("status") == "True" and degraded.get("reason") == "CompileError":
        return None
    compiled, stored = st.get("compiledVersion"), _stored(obj)
    if not isinstance(compiled, int) or compiled not in stored or compiled != max(stored):
        return None
    return None if compiled == st.get("deliveredVersion") else compiled


def _summary(obj: Mapping[str, Any], version: int | None) -> dict[str, Any] | None:
    entry = _stored(obj).get(version) if version is not None else None
    if entry is None:
        return None
    return {"version": version, "hash": f"sha256:{entry.get('sha256')}", "engine": entry.get("engine"),
            "config_map": entry.get("configMap")}


def _full_entrypoint(entrypoint: str) -> str:
    return entrypoint if entrypoint.startswith("data.") else "data." + entrypoint.replace("/", ".")


class KubePolicies:
    """The Policy resource of one hive, as the admin API reads and writes it."""

    def __init__(self, api: KubeClient, namespace: str, hive_resource: str, hive_id: str, instance: str) -> None:
        self.api = api
        self.namespace = namespace
        self.hive_resource = hive_resource
        self.hive_id = hive_id
        self.instance = instance
        self._reported: tuple[str, dict[str, Any]] | None = None
        self.checker = Checker()

    async def find(self) -> dict[str, Any] | None:
        """This hive's Policy (see the module docstring), or None."""
        try:
            items = await self.api.list("policies", self.namespace)
        except ApiError as err:
            raise AdminError("SERVICE_FAILED", f"cannot list Policies: {err}") from err
        ranked = [(_delivers_to(p, self.hive_resource), str(p["metadata"].get("creationTimestamp", "")),
                   p["metadata"]["name"], p) for p in items]
        ranked = [r for r in ranked if r[0] > 0]
        if not ranked:
            return None
        ranked.sort(key=lambda r: (-r[0], r[1], r[2]))
        return ranked[0][3]

    async def _require(self) -> dict[str, Any]:
        found = await self.find()
        if found is None:
            raise AdminError("NOT_FOUND", f"no Policy delivers to Hive {self.hive_resource} in {self.namespace}")
        return found

    async def write(self, rego: str, entrypoint: str | None, data: dict[str, Any] | None) -> dict[str, Any]:
        """Set the Policy's Rego (creating the hive's own Policy if none exists) and unpin it.

        One guarded write (:meth:`_replace`): the data document is replaced, never merged into the old one."""
        found = await self.find()
        spec: dict[str, Any] = {k: v for k, v in ((found or {}).get("spec") or {}).items() if k != "pinVersion"}
        spec["rego"] = rego
        if entrypoint is not None:
            spec["entrypoint"] = _full_entrypoint(entrypoint)
        if data is not None:
            spec["data"] = data
        if found is not None:
            return await self._replace(found, spec, False, "writing the Rego")
        body = {"apiVersion": API_VERSION, "kind": "Policy",
                "metadata": {"name": self.hive_resource, "namespace": self.namespace},
                "spec": {**spec, "hives": [self.hive_resource]}}
        try:
            return await self.api.create("policies", self.namespace, body)
        except ApiError as err:
            code = "VERSION_CONFLICT" if err.conflict else \
                "INVALID_REQUEST" if err.status in (400, 422) else "SERVICE_FAILED"
            raise AdminError(code, f"the Policy was not written: {err.message or err}") from err

    async def pin(self, version: int | None) -> dict[str, Any]:
        """Pin a stored version (default: the newest stored one below the delivered one)."""
        found = await self._require()
        status = _status(found)
        stored = sorted(int(v["version"]) for v in status.get("versions") or [] if isinstance(v, Mapping))
        if version is None:
            below = [v for v in stored if v < int(status.get("deliveredVersion") or 0)]
            if not below:
                raise AdminError("NO_BACKUP", "no stored version before the delivered one", status=409)
            version = below[-1]
        elif version not in stored:
            raise AdminError("NOT_FOUND", f"version {version} is not stored (kept: {stored})")
        return await self._replace(found, {**(found.get("spec") or {}), "pinVersion": version}, False,
                                   f"pinning version {version}")

    async def _replace(self, read: Mapping[str, Any], spec: Mapping[str, Any], staged: bool,
                       what: str) -> dict[str, Any]:
        """Write the whole ``spec`` and the staged mark of the Policy ``read``, only if nobody changed it since.

        Other annotations (the operator framework's own among them) are left as they are.

        The write carries the ``resourceVersion`` read.  A conflict caused by a status write alone (the
        operator's, the router report's) is retried on the new ``resourceVersion``; a changed spec
        (``generation``) or staged mark is ``VERSION_CONFLICT``: someone else changed the Policy."""
        name = read["metadata"]["name"]

        def mark(obj: Mapping[str, Any]) -> tuple[Any, Any]:
            meta = obj.get("metadata") or {}
            return meta.get("generation"), (meta.get("annotations") or {}).get(STAGED_ANNOTATION)

        current: Mapping[str, Any] = read
        for _ in range(5):
            ops = [{"op": "replace", "path": "/metadata/resourceVersion",
                    "value": current["metadata"]["resourceVersion"]},
                   {"op": "add", "path": "/spec", "value": dict(spec)}]
            annotations = current["metadata"].get("annotations")
            key = "/metadata/annotations/" + STAGED_ANNOTATION.replace("~", "~0").replace("/", "~1")
            if staged:
                ops.append({"op": "add", "path": key, "value": "true"} if isinstance(annotations, Mapping) else
                           {"op": "add", "path": "/metadata/annotations", "value": {STAGED_ANNOTATION: "true"}})
            elif isinstance(annotations, Mapping) and STAGED_ANNOTATION in annotations:
                ops.append({"op": "remove", "path": key})
            try:
                return await self.api.patch("policies", self.namespace, name, ops, content_type=JSON_PATCH)
            except ApiError as err:
                if not err.conflict:
                    code = "INVALID_REQUEST" if err.status in (400, 422) else "SERVICE_FAILED"
                    raise AdminError(code, f"the Policy was not written ({what}): {err.message or err}") from err
            latest = await self.api.get("policies", self.namespace, name)
            if latest is None or mark(latest) != mark(read):
                break
            current = latest
        raise AdminError("VERSION_CONFLICT", f"Policy {name} changed while {what} (another admin replica?); "
                                             "nothing was written: read it again and retry")

    async def stage(self, rego: str, entrypoint: str | None,
                    data: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Set the new Rego with the delivered version pinned and the staged mark: (before, written)."""
        found = await self._require()
        delivered = _status(found).get("deliveredVersion")
        if not isinstance(delivered, int):
            raise AdminError("INVALID_REQUEST", f"Policy {found['metadata']['name']} delivers no version yet: a "
                                                "version is staged beside a delivered one (POST /opa/policy first)")
        spec: dict[str, Any] = {**(found.get("spec") or {}), "rego": rego, "pinVersion": delivered}
        if entrypoint is not None:
            spec["entrypoint"] = _full_entrypoint(entrypoint)
        if data is not None:
            spec["data"] = data
        return found, await self._replace(found, spec, True, "staging a version")

    async def unstage(self, before: Mapping[str, Any], written: Mapping[str, Any]) -> None:
        """Put back the spec a refused staging replaced (unless the Policy changed since)."""
        try:
            was_staged = (before["metadata"].get("annotations") or {}).get(STAGED_ANNOTATION) == "true"
            await self._replace(written, before.get("spec") or {}, was_staged,
                                "putting back the spec a refused compile replaced")
        except AdminError as err:
            log.warning("Policy %s: %s", written["metadata"]["name"], err.detail)

    async def apply_staged(self, version: int | None) -> dict[str, Any]:
        """Deliver the staged version: unpin it and drop the mark (NOTHING_STAGED, VERSION_MISMATCH)."""
        found = await self._require()
        staged = staged_version(found)
        if staged is None:
            raise AdminError("NOTHING_STAGED", f"Policy {found['metadata']['name']} has no staged version "
                                               "(POST /opa/policy/compile stages one)")
        if version is not None and version != staged:
            raise AdminError("VERSION_MISMATCH", f"version {version} is not the staged one ({staged})",
                             payload={"hive": self.hive_id, "staged_version": staged})
        spec = {k: v for k, v in (found.get("spec") or {}).items() if k != "pinVersion"}
        return await self._replace(found, spec, False, "applying the staged version")

    async def check(self, rego: str | None, entrypoint: str | None, data: dict[str, Any] | None,
                    input_doc: dict[str, Any] | None, against: str | None) -> dict[str, Any]:
        """Validate ``rego`` (else read the staged or current stored artefact) and evaluate ``input_doc``."""
        if rego is not None:
            artefact = await self.checker.compile(rego, data, entrypoint)
            label = "request"
        else:
            found = await self._require()
            source = against or "staged"
            version = staged_version(found) if source == "staged" else _status(found).get("deliveredVersion")
            entry = _stored(found).get(version) if isinstance(version, int) else None
            if entry is None:
                raise AdminError("NOTHING_STAGED" if source == "staged" else "NOT_FOUND",
                                 f"there is no {source} policy to check against")
            artefact = await self._artefact(entry)
            label = f"{source}:{version}"
        out: dict[str, Any] = {"status": "ok", "hive": self.hive_id, "valid": True, "against": label,
                               "module_sha256": artefact.sha256, "engine": artefact.engine}
        if input_doc is not None:
            out["decision"] = await self.checker.evaluate(artefact, input_doc)
        return out

    async def _artefact(self, entry: Mapping[str, Any]) -> Artefact:
        """The artefact of a stored version (an entry of ``status.versions``), read from its ConfigMap."""
        cm = await self.api.get("configmaps", self.namespace, str(entry.get("configMap")))
        if cm is None:
            raise AdminError("POLICY_LOAD_ERROR", f"ConfigMap {entry.get('configMap')} of version "
                                                  f"{entry.get('version')} is gone")
        return artefact_from_config_map(cm, expected_sha256=entry.get("sha256"))

    async def settled(self, written: Mapping[str, Any], timeout: float = RECONCILE_TIMEOUT) -> dict[str, Any] | None:
        """The Policy once the operator reconciled the generation just written; None on timeout."""
        name, generation = written["metadata"]["name"], written["metadata"].get("generation")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = await self.api.get("policies", self.namespace, name)
            if obj is not None and _status(obj).get("observedGeneration") == generation:
                return obj
            await asyncio.sleep(0.5)
        return None

    def answer(self, action: str, written: Mapping[str, Any], settled: Mapping[str, Any] | None,
               started: float) -> dict[str, Any]:
        """The original's write envelope for this hive, or COMPILE_ERROR / SERVICE_FAILED."""
        hive, name = self.hive_id, written["metadata"]["name"]
        elapsed = int((time.perf_counter() - started) * 1000)
        base = {"action": action, "check_only": False, "expected_hives": [hive], "policy": name,
                "elapsed_ms": elapsed}
        if settled is None:
            return {**base, "status": "sync_pending", "version": None, "pending": True, "pending_hives": [hive],
                    "failed_hives": [], "responses": [{"hive": hive, "status": "pending", "error_code": "TIMEOUT",
                                                       "error_detail": "the operator did not reconcile the Policy "
                                                                       f"within {RECONCILE_TIMEOUT:g} s"}]}
        st = _status(settled)
        degraded = _condition(settled, "Degraded")
        if degraded.get("status") == "True":
            payload = {"hive": hive, "policy": name, "line": st.get("errorLine"), "column": st.get("errorColumn")}
            if degraded.get("reason") == "CompileError":
                raise AdminError("COMPILE_ERROR", str(degraded.get("message")), payload=payload)
            raise AdminError("SERVICE_FAILED", f"Policy {name}: {degraded.get('reason')}: {degraded.get('message')}",
                             payload=payload)
        delivered = next((h for h in st.get("hives") or [] if isinstance(h, Mapping)
                          and h.get("hive") == self.hive_resource), None)
        response = {"hive": hive, "status": "ok", "version": st.get("deliveredVersion"),
                    "hash": f"sha256:{st['deliveredSha256']}" if st.get("deliveredSha256") else None,
                    "engine": st.get("engine"), "fallback_reason": st.get("fallbackReason"),
                    "applied": delivered is not None and delivered.get("state") == "Delivered"}
        return {**base, "status": "ok", "version": st.get("deliveredVersion"), "pending": False, "pending_hives": [],
                "failed_hives": [], "responses": [response]}

    async def staged_answer(self, before: Mapping[str, Any], written: Mapping[str, Any],
                            settled: Mapping[str, Any] | None, started: float) -> dict[str, Any]:
        """The compile (stage) envelope: the staged version, or COMPILE_ERROR (the old spec put back)."""
        degraded = _condition(settled, "Degraded") if settled is not None else {}
        if settled is not None and degraded.get("status") == "True" and \
                degraded.get("reason") in ("CompileError", "ArtefactTooLarge"):
            await self.unstage(before, settled)
        out = self.answer("compile", written, settled, started)  # raises COMPILE_ERROR / SERVICE_FAILED
        if settled is None:
            return out
        st = _status(settled)
        staged = staged_version(settled)
        version = staged if staged is not None else st.get("compiledVersion")
        summary = _summary(settled, version) or {}
        out["version"] = version
        out["responses"] = [{"hive": self.hive_id, "status": "ok", "version": version, "hash": summary.get("hash"),
                             "engine": summary.get("engine"), "staged": staged is not None, "applied": False,
                             "delivered_version": st.get("deliveredVersion")}]
        return out

    async def describe(self, *, with_source: bool) -> dict[str, Any]:
        """``GET /opa/policy`` (with the Rego) and ``GET /opa/status`` (without)."""
        found = await self._require()
        st, spec = _status(found), found.get("spec") or {}
        current = None
        if st.get("deliveredVersion") is not None:
            current = {"version": st["deliveredVersion"], "hash": f"sha256:{st.get('deliveredSha256')}",
                       "engine": st.get("engine"), "compiler": st.get("compiler"),
                       "fallback_reason": st.get("fallbackReason"), "pinned": st.get("pinnedVersion") is not None}
        out: dict[str, Any] = {"status": "ok", "hive": self.hive_id, "policy": found["metadata"]["name"],
                               "phase": st.get("phase"), "last_version": st.get("compiledVersion"),
                               "current": current, "staged": _summary(found, staged_version(found)),
                               "applied_versions": [v.get("version") for v in st.get("versions") or []],
                               "versions": st.get("versions") or [], "delivery": st.get("hives") or [],
                               "error": ({"message": st.get("error"), "line": st.get("errorLine"),
                                          "column": st.get("errorColumn")} if st.get("error") else None)}
        if with_source:
            version = st.get("deliveredVersion")
            delivered = _stored(found).get(version) if isinstance(version, int) else None
            if delivered is None:  # nothing delivered: what the spec asks for
                out.update(rego=spec.get("rego"), entrypoint=spec.get("entrypoint"), data=spec.get("data"))
            else:  # the delivered version's own source (the spec holds a staged one, or a pin's newer one)
                current_artefact = await self._artefact(delivered)
                out.update(rego=current_artefact.source, entrypoint=current_artefact.target_entrypoint,
                           data=dict(current_artefact.data))
        else:  # the router's own policy description, as a local hive's status gives it
            applied = (st.get("applied") or {}).get(self.hive_resource)
            out["router"] = None if not isinstance(applied, Mapping) else {
                "status": applied.get("state"), "version": applied.get("version"),
                "hash": f"sha256:{applied['sha256']}" if applied.get("sha256") else None,
                "engine": applied.get("engine"), "error": applied.get("error"),
                "reported_by": applied.get("reportedBy"), "at": applied.get("at")}
        return out

    async def report(self, link: RouterLink) -> None:
        """Write what the router of this host runs into the Policy's ``status.applied`` (when it changed)."""
        try:
            policy = (await link.router_status()).get("policy")
        except AdminError:
            return  # no router yet: nothing to report
        if not isinstance(policy, Mapping):
            return
        error = policy.get("error") if isinstance(policy.get("error"), Mapping) else None
        entry = {"version": policy.get("version"), "sha256": str(policy.get("hash") or "").removeprefix("sha256:")
                 or None, "engine": policy.get("engine"), "state": policy.get("status"),
                 "error": f"{error.get('code')}: {error.get('detail')}" if error else None,
                 "reportedBy": self.instance}
        found = await self.find()
        if found is None:
            return
        key = (str(found["metadata"]["name"]), entry)
        if self._reported == key:
            return
        stamp = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            await self.api.patch("policies", self.namespace, found["metadata"]["name"],
                                 {"status": {"applied": {self.hive_resource: {**entry, "at": stamp}}}},
                                 subresource="status")
        except ApiError as err:
            log.warning("the router's policy was not reported into Policy %s; will retry in %.0f s: %s",
                        found["metadata"]["name"], REPORT_S, err)
            return
        self._reported = key

    async def report_forever(self, link: RouterLink) -> None:
        while True:
            try:
                await self.report(link)
            except AdminError as err:
                log.warning("policy report skipped; will retry in %.0f s: %s", REPORT_S, err.detail)
            await asyncio.sleep(REPORT_S)
