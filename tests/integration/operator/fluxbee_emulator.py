"""kmock's KubernetesEmulator, given what a kopf operator needs and stock kmock 0.8 lacks.

Stock kmock serves too little of the Kubernetes API for kopf and Helm.  Fixed here:
- objects get a monotonic ``resourceVersion``, ``uid``, ``creationTimestamp``, ``generation``
  (bumped when anything but metadata/status changes) and the namespace from the URL;
- create answers 201; a failed JSON-patch (``test`` op) answers 422 instead of 500;
- the status subresource: ``PATCH …/status`` changes only status, the main resource never does;
- watch: the bus is marked *before* the snapshot, under the store lock (no lost events);
  ``?resourceVersion=N`` replays only newer objects; list metadata has a numeric version;
- core discovery says ``groupVersion: v1`` (not ``/v1``), Secrets/ServiceAccounts have kinds,
  CRDs are Established on create and their resources served from then on, PUT replaces (what
  Helm needs to install into it);
- equality ``labelSelector`` (``k=v``, ``k!=v``, ``k``, ``!k``) on LIST and WATCH;
- optional ownerReference garbage collection (off by default: the operator must not need it);
- Kubernetes requests are served without kmock's DSL dispatch when no test has added its own
  reactions: kmock matches each request against every reaction by re-filtering the *whole*
  request log (``request in payload._source``), which makes every request O(requests so far)
  and a 500-FluxNode burst quadratic (it was 90 % of the emulator's CPU; see BENCHMARKS.md);
  lists scan an index of their resource's keys, not the whole store, and a
  ``KubernetesError`` (a 404 from a GET-before-create) is answered without formatting a
  traceback.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import uuid
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import apps, dicts, enums, k8s, rendering

_META_ONLY = ("metadata", "status")


def _selector(text: str | None) -> list[tuple[str, str, str | None]]:
    rules: list[tuple[str, str, str | None]] = []
    for term in (t.strip() for t in (text or "").split(",")):
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            rules.append(("ne", k.strip(), v.strip()))
        elif "==" in term or "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            rules.append(("eq", k.strip(), v.strip()))
        elif term.startswith("!"):
            rules.append(("absent", term[1:].strip(), None))
        else:
            rules.append(("present", term, None))
    return rules


def _matches(obj: Mapping[str, Any], rules: list[tuple[str, str, str | None]]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for op, key, value in rules:
        if op == "eq" and labels.get(key) != value:
            return False
        if op == "ne" and labels.get(key) == value:
            return False
        if op == "present" and key not in labels:
            return False
        if op == "absent" and key in labels:
            return False
    return True


def _essence(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in _META_ONLY}


@attrs.define(kw_only=True)
class FluxEmulator(kmock.KubernetesEmulator):
    garbage_collect: bool = False
    _rv: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _builtin_reactions: int = attrs.field(default=0, init=False)
    _direct: dict[Any, rendering.Response] = attrs.field(factory=dict, init=False)
    _keys_of: dict[Any, dict[Any, None]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._builtin_reactions = len(self._payloads)
        self._direct = {
            enums.action.LIST: rendering.Response.guess(self._serve_list),
            enums.action.WATCH: rendering.Response.guess(self._serve_watch),
            enums.action.FETCH: rendering.Response.guess(self._serve_fetch),
            enums.action.CREATE: rendering.Response.guess(self._serve_create),
            enums.action.UPDATE: rendering.Response.guess(self._serve_update),
            enums.action.DELETE: rendering.Response.guess(self._serve_delete),
        }

    async def _dispatch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """kmock's reaction lookup, or straight to the emulator when nobody added reactions."""
        resource = request.resource
        direct = self._direct.get(request.action) if resource and resource.plural else None
        if direct is None or len(self._payloads) != self._builtin_reactions:
            return await apps.RawHandler._handle(self, request)
        return await direct(request)

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if request.name is None or key not in self._objects or self._objects[key].deleted:
                raise k8s.KubernetesObjectNotFoundError()
            return self._objects[key].raw

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        meta = request.data.get("metadata", {}) if isinstance(request.data, dict) else {}
        key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
        async with self._lock:
            return self._objects[key].raw

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        async with self._lock:
            return self._objects[(request.resource, request.namespace, request.name)].last.raw

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _has_status(self, resource: Any) -> bool:
        for known in self._resources:
            if known == resource:
                return "status" in self._resources[known].subresources
        return False

    def _objects_of(self, request: rendering.Request) -> list[tuple[Any, dict[str, Any]]]:
        out = []
        for key in self._keys_of.get(request.resource, {}):
            _, namespace, name = key
            obj = self._objects[key]
            if obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            if request.name is not None and name != request.name:
                continue
            out.append((key, obj.raw))
        return out

    async def _publish(self, resource: Any, kind: str, raw: Mapping[str, Any]) -> None:
        await self._buses[resource].put({"type": kind, "object": copy.deepcopy(dict(raw))})

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None:
            return await apps.RawHandler._handle(self, request)
        if request.action == enums.action.CREATE:
            await self._create(request)
            response = await self._dispatch(request)
            response.set_status(201)
            return response
        if request.method == enums.method.PUT and request.name is not None:
            return await self._replace(request)
        if request.action == enums.action.UPDATE and request.name is not None:
            await self._patch(request)
        elif request.action == enums.action.DELETE and request.name is not None:
            return await self._delete(request)
        return await self._dispatch(request)

    async def _create(self, request: rendering.Request) -> None:
        obj = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        meta = obj.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        if namespace:
            meta["namespace"] = namespace
        if self._has_status(request.resource):
            obj.pop("status", None)
        key = (request.resource, namespace, meta.get("name"))
        async with self._lock:
            if key in self._objects and not self._objects[key].deleted:
                raise k8s.KubernetesObjectConflictError()
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = self._next_rv()
            meta["generation"] = 1
            meta["creationTimestamp"] = datetime.datetime.now(tz=datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            if obj.get("kind") == "CustomResourceDefinition":  # no apiextensions controller here
                self._serve_crd(obj)
                obj["status"] = {"conditions": [
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                ], "acceptedNames": obj.get("spec", {}).get("names", {})}
            if key in self._objects:
                self._objects[key].create(obj)
            else:
                self._objects[key] = obj
            self._keys_of.setdefault(request.resource, {})[key] = None
            await self._publish(request.resource, "ADDED", obj)

    def _serve_crd(self, crd: Mapping[str, Any]) -> None:
        """Register the resource a created CRD defines (stock kmock only stores the object)."""
        spec, names = crd.get("spec") or {}, (crd.get("spec") or {}).get("names") or {}
        verbs = {"create", "delete", "get", "list", "patch", "update", "watch"}
        for version in spec.get("versions") or []:
            self.resources[f"{spec.get('group')}/{version.get('name')}/{names.get('plural')}"] = (
                kmock.ResourceInfo(
                    kind=names.get("kind"), singular=names.get("singular"),
                    namespaced=spec.get("scope") != "Cluster", verbs=verbs,
                    shortnames=set(names.get("shortNames") or ()),
                    subresources=set((version.get("subresources") or {}).keys()),
                )
            )

    async def _replace(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """PUT: replace the object (what Helm does to its release Secrets)."""
        key = (request.resource, request.namespace, request.name)
        new = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise k8s.KubernetesObjectNotFoundError()
            old = self._objects[key].raw
            meta = new.setdefault("metadata", {})
            meta["namespace"] = request.namespace
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"].get("creationTimestamp")
            meta["resourceVersion"] = self._next_rv()
            meta["generation"] = int(old["metadata"].get("generation", 1)) + (
                1 if _essence(new) != _essence(old) else 0
            )
            self._objects[key].history.append(new)
            await self._publish(request.resource, "MODIFIED", new)
        return aiohttp.web.json_response(new, status=200)

    async def _patch(self, request: rendering.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        body = request.data
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise k8s.KubernetesObjectNotFoundError()
            old = copy.deepcopy(self._objects[key].raw)
            status_sub = self._has_status(request.resource)
            if request.subresource == "status":
                body = self._only_status(body)
            elif status_sub:
                body = self._without_status(body)
            try:
                new = dict(dicts.patch_dict(old, body))
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as err:
                raise k8s.KubernetesError(
                    status=422, reason="Invalid", message=f"JSON patch failed: {err}"
                ) from err
            meta = new.setdefault("metadata", {})
            want_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(
                body, dict
            ) else None
            if want_rv is not None and want_rv != old["metadata"].get("resourceVersion"):
                raise k8s.KubernetesError(status=409, reason="Conflict", message="stale object")
            meta["resourceVersion"] = self._next_rv()
            meta["uid"] = old["metadata"]["uid"]
            generation = int(old["metadata"].get("generation", 1))
            meta["generation"] = generation + (1 if _essence(new) != _essence(old) else 0)
            self._objects[key].history.append(new)
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                self._objects[key].delete()
                await self._publish(request.resource, "DELETED", new)
                gone = new
            else:
                await self._publish(request.resource, "MODIFIED", new)
                gone = None
        if gone is not None:
            await self._collect(gone)

    def _only_status(self, body: Any) -> Any:
        if isinstance(body, list):
            return [op for op in body if str(op.get("path", "")).startswith("/status")
                    or op.get("op") == "test"]
        return {"status": body.get("status")} if isinstance(body, dict) and "status" in body else {}

    def _without_status(self, body: Any) -> Any:
        if isinstance(body, list):
            return [op for op in body if not str(op.get("path", "")).startswith("/status")]
        return {k: v for k, v in body.items() if k != "status"} if isinstance(body, dict) else body

    async def _delete(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise k8s.KubernetesObjectNotFoundError()
            raw = copy.deepcopy(self._objects[key].raw)
            meta = raw["metadata"]
            if meta.get("finalizers") and not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = datetime.datetime.now(tz=datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
                meta["resourceVersion"] = self._next_rv()
                self._objects[key].history.append(raw)
                await self._publish(request.resource, "MODIFIED", raw)
                gone = None
            elif meta.get("finalizers"):
                gone = None
            else:
                meta["resourceVersion"] = self._next_rv()
                self._objects[key].delete()
                await self._publish(request.resource, "DELETED", raw)
                gone = raw
        if gone is not None:
            await self._collect(gone)
        return aiohttp.web.json_response(raw, status=200)

    async def _collect(self, owner: Mapping[str, Any]) -> None:
        """ownerReference garbage collection (only with ``garbage_collect=True``)."""
        if not self.garbage_collect:
            return
        uid = owner["metadata"].get("uid")
        async with self._lock:
            victims = [
                (key, obj.raw) for key, obj in self._objects.items()
                if not obj.deleted and any(
                    r.get("uid") == uid for r in obj.raw.get("metadata", {}).get(
                        "ownerReferences", []
                    )
                )
            ]
            for key, raw in victims:
                self._objects[key].delete()
                await self._publish(key[0], "DELETED", raw)
        for _, raw in victims:
            await self._collect(raw)

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        """kmock says ``groupVersion: "/v1"`` for the core group; clients expect ``v1``."""
        answer = await super()._serve_version(request)
        if isinstance(answer, dict) and str(answer.get("groupVersion", "")).startswith("/"):
            answer["groupVersion"] = answer["groupVersion"][1:]
        return answer

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, k8s.KubernetesError) and not exc.details:
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "code": exc.status,
                "status": "Failure", "reason": exc.reason or type(exc).__name__,
                "message": exc.message or repr(exc),
            }, status=exc.status)
        return await super()._render_error(exc)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._keys_of and not any(
            r == request.resource for r in self._resources
        ):
            raise k8s.KubernetesResourceNotFoundError()
        rules = _selector(request.params.get("labelSelector"))
        async with self._lock:
            items = [copy.deepcopy(raw) for _, raw in self._objects_of(request)
                     if _matches(raw, rules)]
            version = str(self._last_rv)
        return {"metadata": {"resourceVersion": version}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        rules = _selector(request.params.get("labelSelector"))
        since_text = request.params.get("resourceVersion") or "0"
        since = int(since_text) if since_text.isdigit() else 0
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()  # before the snapshot: nothing falls in between
            snapshot = [
                {"type": "ADDED", "object": copy.deepcopy(raw)}
                for _, raw in self._objects_of(request)
                if _matches(raw, rules) and int(raw["metadata"].get("resourceVersion", 0)) > since
            ]
        try:
            for event in snapshot:
                yield event
            async for event in bus.stream(since=mark):
                obj = event.get("object") or {}
                meta = obj.get("metadata") or {}
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                if int(meta.get("resourceVersion", 0) or 0) <= since:
                    continue
                if _matches(obj, rules):
                    yield event
        finally:
            await bus.unmark(mark)


def declare_fluxbee_resources(emulator: FluxEmulator) -> None:
    """Builtin K3s discovery plus the fluxbee.io kinds (POSTing a CRD does not register it)."""
    from fluxbee.models.crd import KINDS

    with warnings.catch_warnings():  # kmock uses the deprecated importlib.resources API
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()
    verbs = {"create", "delete", "get", "list", "patch", "update", "watch"}
    # The bundled snapshot lacks the kind of a few core resources (discovery would say
    # "Secrets"); Helm's REST mapper needs the real kinds.
    for plural, kind_name in (("secrets", "Secret"), ("serviceaccounts", "ServiceAccount")):
        emulator.resources[f"v1/{plural}"] = kmock.ResourceInfo(
            kind=kind_name, singular=kind_name.lower(), namespaced=True, verbs=verbs
        )
    for kind in KINDS:
        emulator.resources[f"fluxbee.io/v1alpha1/{kind.plural}"] = kmock.ResourceInfo(
            kind=kind.kind,
            singular=kind.singular,
            namespaced=True,
            verbs=verbs,
            shortnames=set(kind.short_names),
            subresources={"status"},
        )


async def _serve_forever() -> None:
    """Serve the emulator on loopback; print its URL; stop on SIGTERM/SIGINT."""
    import asyncio
    import signal

    emulator = FluxEmulator()
    declare_fluxbee_resources(emulator)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with emulator, kmock.Server(emulator) as server:
        print(str(server.url).rstrip("/"), flush=True)
        await stop.wait()


if __name__ == "__main__":  # used by hack/check_chart.py (Helm installs into it) and benchmarks
    import asyncio

    asyncio.run(_serve_forever())
