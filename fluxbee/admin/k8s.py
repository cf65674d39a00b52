"""The Kubernetes backend: the admin API over FluxNode, Runtime and Hive resources and their status.

A spawned node is a FluxNode the admin API creates (labelled ``fluxbee.io/created-by=admin-api``,
so it may also kill and reconfigure it; FluxNodes applied by other means are reported but left to
their owner, as the local backend leaves the hive file's nodes alone).  Status comes from the
FluxNode's status, its Pods and the effective-config ConfigMap the operator writes; runtimes and
versions from Runtime resources; hives from Hive resources.  Routes and VPN rules are the Hive's
spec: a change is a patch of it (optimistic, on ``resourceVersion``), the operator rolls the hive
ConfigMap and the routers reload it live.

The label and annotation keys below are the operator's (``fluxbee.operator.labels``); they are
repeated here because the admin API does not import the operator (import contract).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from fluxbee.admin.backend import LIST_CHANGED, NodeObservation, RegisterIlk
from fluxbee.admin.errors import AdminError
from fluxbee.admin.schemas import KillNodeParams, SpawnNodeParams
from fluxbee.dataplane import names
from fluxbee.kube import JSON_PATCH, ApiError, KubeClient
from fluxbee.models import API_VERSION, FluxNode, FluxNodeSpec, RouteSpec, Runtime, VpnSpec
from fluxbee.models.effective import qualified_node_name, resolve_runtime_version

HIVE_LABEL = names.LABEL_HIVE
FLUXNODE_LABEL = names.LABEL_FLUXNODE
CREATED_BY = names.LABEL_CREATED_BY
ADMIN_API = "admin-api"
NODE_NAME_ANNOTATION = names.ANNOTATION_NODE_NAME
REQUESTED_VERSION_ANNOTATION = names.ANNOTATION_REQUESTED_VERSION
CONFIG_VERSION_ANNOTATION = names.ANNOTATION_CONFIG_VERSION
ADDRESS_ANNOTATION = names.ANNOTATION_ADDRESS
VERSION_ANNOTATION = names.ANNOTATION_VERSION_TEMPLATE
"""The last explicit version of ``routes`` / ``vpns`` (kept apart, as the router keeps them)."""
NODE_CONFIG_KEY = "config.json"
CRASH_REASONS = frozenset({"CrashLoopBackOff", "Error", "ImagePullBackOff", "ErrImagePull",
                           "CreateContainerConfigError", "InvalidImageName"})
CONFLICT_RETRIES = 5
RESTARTED_AT_ENV = "FLUXBEE_RESTARTED_AT"
"""Set in a FluxNode's ``spec.env`` by ``restart``: a new value makes the operator replace its Pods."""


def api_error(err: ApiError, doing: str) -> AdminError:
    return AdminError("KUBERNETES_API_ERROR", f"{doing}: the Kubernetes API answered {err.status} {err.reason}: "
                                              f"{err.message}")


def resource_name(node_name: str) -> str:
    """A DNS-1123 name for a FluxNode, stable and distinct per L2 name (``WF.a`` and ``WF.A`` differ)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", node_name.lower().replace("@", "-at-")).strip("-")[:200]
    return f"{slug}-{hashlib.sha256(node_name.encode()).hexdigest()[:8]}"


def _view(body: Mapping[str, Any]) -> dict[str, Any]:
    """apiVersion/kind/metadata(name, namespace, labels, annotations)/spec: what the models accept."""
    meta = body.get("metadata") or {}
    return {"apiVersion": body.get("apiVersion", API_VERSION), "kind": body.get("kind"),
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                         "labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}},
            "spec": body.get("spec") or {}}


def _phase(body: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(phase, reason, message) of a fluxbee.io resource's status (Degraded condition first)."""
    status = body.get("status") or {}
    reason = message = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Degraded" and cond.get("status") == "True":
            reason, message = cond.get("reason"), cond.get("message")
        elif cond.get("type") == "Reconciling" and cond.get("status") == "True" and reason is None:
            reason, message = cond.get("reason"), cond.get("message")
    return status.get("phase"), reason, message


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _pod_crashing(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return True
    return any(((c.get("state") or {}).get("waiting") or {}).get("reason") in CRASH_REASONS
               for c in status.get("containerStatuses") or [])



def _mother(spec: Mapping[str, Any]) -> str | None:
    """A worker Hive's mother: ``motherHive``, else ``identity.primaryHive`` (as ``HiveSpec.mother``)."""
    if spec.get("role") != "worker":
        return None
    identity = spec.get("identity")
    mother = spec.get("motherHive") or (identity.get("primaryHive") if isinstance(identity, dict) else None)
    return mother if isinstance(mother, str) and mother else None

class KubernetesBackend:
    """One hive (a Hive resource) in one namespace.  Reads go to the API server each time (no cache,
    no lock); changes to one hive's nodes are serialised by one lock so a duplicate check holds."""

    kind = "kubernetes"

    def __init__(self, api: KubeClient, namespace: str, hive_resource: str) -> None:
        self.api = api
        self.namespace = namespace
        self.hive_resource = hive_resource
        self.hive_id = hive_resource
        self._write_lock = asyncio.Lock()
        self._status_versions: dict[str, tuple[int, str]] = {}

    async def start(self) -> None:
        """Read the Hive once for its id; raises AdminError when it does not exist."""
        hive = await self._hive()
        self.hive_id = str((hive.get("spec") or {}).get("hiveId") or self.hive_resource)

    async def _hive(self) -> dict[str, Any]:
        try:
            hive = await self.api.get("hives", self.namespace, self.hive_resource)
        except ApiError as err:
            raise api_error(err, f"reading Hive {self.hive_resource}") from err
        if hive is None:
            raise AdminError("HIVE_NOT_FOUND", f"Hive {self.hive_resource!r} does not exist in namespace "
                                               f"{self.namespace}")
        return hive

    async def hive_info(self) -> dict[str, Any]:
        hive = await self._hive()
        spec, status = hive.get("spec") or {}, hive.get("status") or {}
        phase, reason, message = _phase(hive)
        return {"hive_id": self.hive_id, "role": spec.get("role", "motherbee"), "mother_hive": _mother(spec),
                "router_name": spec.get("routerName", names.DEFAULT_ROUTER_NAME), "backend": self.kind, "run_dir": None,
                "started_at": (hive.get("metadata") or {}).get("creationTimestamp"), "namespace": self.namespace,
                "hive_resource": self.hive_resource, "phase": phase, "reason": reason, "message": message,
                "desired_pods": status.get("desiredPods"), "ready_pods": status.get("readyPods")}

    # nodes -------------------------------------------------------------------
    async def _list(self, plural: str, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        try:
            return await self.api.list(plural, self.namespace, labels)
        except ApiError as err:
            raise api_error(err, f"listing {plural}") from err

    async def _fluxnodes(self) -> list[dict[str, Any]]:
        return [n for n in await self._list("fluxnodes") if (n.get("spec") or {}).get("hive") == self.hive_resource]

    def _l2_name(self, node: Mapping[str, Any]) -> str:
        return qualified_node_name(str((node.get("spec") or {}).get("nodeName", "")), self.hive_id)

    async def _find(self, name: str) -> dict[str, Any] | None:
        return next((n for n in await self._fluxnodes() if self._l2_name(n) == name), None)

    async def observe(self, visible: set[str] | None, only: str | None = None) -> list[NodeObservation]:
        nodes, pods, maps = await asyncio.gather(
            self._fluxnodes(), self._list("pods", {HIVE_LABEL: self.hive_resource}),
            self._list("configmaps", {HIVE_LABEL: self.hive_resource}))
        by_map = {(m.get("metadata") or {}).get("name"): m for m in maps}
        out = []
        for node in sorted(nodes, key=self._l2_name):
            name = self._l2_name(node)
            if only is not None and name != only:
                continue
            resource = node["metadata"]["name"]
            mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(FLUXNODE_LABEL) == resource
                    and not (p.get("metadata") or {}).get("deletionTimestamp")]
            out.append(self._observe_one(node, name, sorted(mine, key=lambda p: p["metadata"]["name"]),
                                         by_map.get(f"{resource}-node-config"), visible))
        return out

    def _observe_one(self, node: dict[str, Any], name: str, pods: list[dict[str, Any]],
                     config_map: dict[str, Any] | None, visible: set[str] | None) -> NodeObservation:
        meta, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
        phase, reason, message = _phase(node)
        ready = sum(1 for p in pods if _pod_ready(p))
        if meta.get("deletionTimestamp") or spec.get("replicas", 1) == 0:
            lifecycle = "STOPPED"
        elif phase == "Degraded" or any(_pod_crashing(p) for p in pods):
            lifecycle = "FAILED"
        elif ready:
            lifecycle = "RUNNING" if visible is None or name in visible else "STARTING"
        else:
            lifecycle = "STARTING"
        config: dict[str, Any] | None = None
        valid = False
        config_path = None
        if config_map is not None:
            config_path = f"configmap/{config_map['metadata']['name']}#{NODE_CONFIG_KEY}"
            try:
                loaded = json.loads((config_map.get("data") or {}).get(NODE_CONFIG_KEY, ""))
                config, valid = (loaded, True) if isinstance(loaded, dict) else ({}, False)
            except ValueError:
                config = {}
        system = config.get("_system", {}) if isinstance(config, dict) else {}
        annotations = meta.get("annotations") or {}
        statuses = [c for p in pods for c in (p.get("status") or {}).get("containerStatuses") or []]
        exits = [((c.get("lastState") or {}).get("terminated") or {}).get("exitCode") for c in statuses]
        starts = sorted(str(t) for t in ((p.get("status") or {}).get("startTime") for p in pods) if t)
        process: dict[str, Any] = {
            "unit": f"fluxnode/{meta['name']}", "pid": None,
            "exit_code": next((e for e in exits if e is not None), None),
            "restart_count": sum(int(c.get("restartCount") or 0) for c in statuses),
            "started_at": starts[0] if starts else None, "replicas": len(pods), "ready_replicas": ready,
            "desired_replicas": spec.get("replicas", 1), "pods": [p["metadata"]["name"] for p in pods],
            "phase": phase, "reason": reason, "message": message, "config_hash": status.get("configHash")}
        return NodeObservation(
            node_name=name, hive=self.hive_id, managed=(meta.get("labels") or {}).get(CREATED_BY) == ADMIN_API,
            lifecycle_state=lifecycle, visible_in_router=visible is not None and name in visible,
            runtime={"name": spec.get("runtime"),
                     "requested_version": annotations.get(REQUESTED_VERSION_ANNOTATION, spec.get("runtimeVersion")),
                     "resolved_version": status.get("runtimeVersion") or system.get("runtime_version")},
            process=process, config_path=config_path, config=config, config_valid=valid,
            instances=[str(p["metadata"].get("uid") or p["metadata"]["name"]) for p in pods])

    def bump_status_version(self, name: str, fingerprint: str) -> int:
        """Per admin process (the API server is not written on reads); bumped when the fingerprint changes."""
        version, known = self._status_versions.get(name, (0, ""))
        if known != fingerprint:
            version += 1
            self._status_versions[name] = (version, fingerprint)
        return version

    async def _runtime(self, name: str) -> tuple[Runtime, Runtime | None, dict[str, Any]]:
        try:
            body = await self.api.get("runtimes", self.namespace, name)
        except ApiError as err:
            raise api_error(err, f"reading Runtime {name}") from err
        if body is None:
            raise AdminError("RUNTIME_NOT_AVAILABLE", f"runtime {name!r} is not a Runtime in namespace "
                                                      f"{self.namespace}")
        try:
            runtime = Runtime.model_validate(_view(body))
        except ValidationError as err:
            raise AdminError("RUNTIME_NOT_AVAILABLE", f"Runtime {name!r} is not valid: {err}") from err
        base = None
        if runtime.spec.runtime_base:
            base_body = await self.api.get("runtimes", self.namespace, runtime.spec.runtime_base)
            try:
                base = Runtime.model_validate(_view(base_body)) if base_body is not None else None
            except ValidationError:
                base = None
        return runtime, base, body

    async def spawn_node(self, name: str, params: SpawnNodeParams, register: RegisterIlk) -> dict[str, Any]:
        async with self._write_lock:
            if await self._find(name) is not None:
                raise AdminError("NODE_ALREADY_EXISTS", f"node {name} already exists (a FluxNode of hive "
                                                        f"{self.hive_resource}); kill it before spawning it again")
            runtime, _, body = await self._runtime(params.runtime)
            phase, reason, message = _phase(body)
            if phase == "Degraded":
                raise AdminError("RUNTIME_NOT_AVAILABLE", f"Runtime {params.runtime!r} is not ready: {reason}: "
                                                          f"{message}")
            try:
                version = resolve_runtime_version(runtime, params.runtime_version)
            except ValueError as err:
                raise AdminError("RUNTIME_NOT_AVAILABLE", str(err)) from err
            spec: dict[str, Any] = {"hive": self.hive_resource, "nodeName": name, "runtime": runtime.metadata.name,
                                    "runtimeVersion": version, "config": params.config}
            if params.tenant_id is not None:
                spec["tenantId"] = params.tenant_id
            manifest = {"apiVersion": API_VERSION, "kind": "FluxNode", "metadata": {
                "name": resource_name(name), "namespace": self.namespace,
                "labels": {CREATED_BY: ADMIN_API, HIVE_LABEL: self.hive_resource},
                "annotations": {NODE_NAME_ANNOTATION: name, REQUESTED_VERSION_ANNOTATION: params.runtime_version,
                                CONFIG_VERSION_ANNOTATION: "1"}}, "spec": spec}
            try:
                FluxNode.model_validate(manifest)
            except ValidationError as err:
                raise AdminError("INVALID_REQUEST", str(err)) from err
            ilk = await register(runtime.metadata.name, version)
            if ilk is not None:
                spec["agentIlk"] = ilk
            try:
                await self.api.create("fluxnodes", self.namespace, manifest)
            except ApiError as err:
                if err.status == 409:
                    raise AdminError("NODE_ALREADY_EXISTS", f"FluxNode {resource_name(name)} exists") from err
                raise api_error(err, "creating the FluxNode") from err
        # the operator renders the effective config into this ConfigMap (GET …/config serves it)
        return {"runtime": runtime.metadata.name, "version": version, "requested_version": params.runtime_version,
                "unit": f"fluxnode/{resource_name(name)}", "visible_in_router": False,
                "config": {"status": "ok", "path": f"configmap/{resource_name(name)}-node-config#{NODE_CONFIG_KEY}",
                           "created": True, "config_version": 1}}

    async def node_state(self, name: str) -> tuple[str | None, Any]:
        """Nodes in a cluster keep no state file the admin API can read: there is none to show."""
        return None, None

    async def _managed(self, name: str) -> dict[str, Any]:
        node = await self._find(name)
        if node is None:
            raise AdminError("NODE_NOT_FOUND", f"node {name} is not a FluxNode of hive {self.hive_resource}")
        if ((node["metadata"].get("labels") or {}).get(CREATED_BY)) != ADMIN_API:
            raise AdminError("NODE_NOT_MANAGED", f"node {name} is FluxNode {node['metadata']['name']}, not created "
                                                 "through the admin API; change it where it is declared")
        return node

    async def kill_node(self, name: str, params: KillNodeParams) -> dict[str, Any]:
        async with self._write_lock:
            node = await self._managed(name)
            resource = node["metadata"]["name"]
            pods = await self._list("pods", {FLUXNODE_LABEL: resource})
            try:
                await self.api.delete("fluxnodes", self.namespace, resource)
            except ApiError as err:
                raise api_error(err, f"deleting FluxNode {resource}") from err
        # Running = asked to run (replicas > 0), even before the operator has made its Pod; a FluxNode at
        # replicas 0 is a stopped node, which kill reports as `not_found` (and still deletes).
        asked = (node.get("spec") or {}).get("replicas", 1) > 0
        out: dict[str, Any] = {"unit": f"fluxnode/{resource}", "pids": [], "was_running": asked or bool(pods),
                               "pods": sorted(p["metadata"]["name"] for p in pods)}
        if params.purge_instance:  # the operator deletes the node's ConfigMap with it; no state volume exists
            self._status_versions.pop(name, None)
            out.update(instance_purged=True, removed_path=f"fluxnode/{resource}", purge_status="purged")
        return out

    # start, restart, instance ----------------------------------------------------
    # A FluxNode at ``replicas: 0`` is the operator's stopped node: it keeps its effective-config
    # ConfigMap and credential, and runs no Pod.  ``kill`` deletes a FluxNode (so a killed node has no
    # instance left to start, unlike a local one); a node of the admin API's scaled to 0 (``kubectl
    # scale``-like patches) is started here by scaling it to 1.

    def _summary(self, node: Mapping[str, Any], state: str, pods: list[str]) -> dict[str, Any]:
        meta, spec = node["metadata"], node.get("spec") or {}
        status = node.get("status") or {}
        return {"state": state, "unit": f"fluxnode/{meta['name']}", "runtime": spec.get("runtime"),
                "version": status.get("runtimeVersion") or spec.get("runtimeVersion"),
                "requested_version": (meta.get("annotations") or {}).get(REQUESTED_VERSION_ANNOTATION,
                                                                         spec.get("runtimeVersion")),
                "replicas": spec.get("replicas", 1), "pods": pods}

    async def _scale(self, node: dict[str, Any], replicas: int, failure: str) -> dict[str, Any]:
        meta = node["metadata"]
        ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
               {"op": "add", "path": "/spec/replicas", "value": replicas}]
        try:
            return await self.api.patch("fluxnodes", self.namespace, meta["name"], ops, content_type=JSON_PATCH)
        except ApiError as err:
            if err.status in (409, 422):
                raise AdminError("BUSY", f"FluxNode {meta['name']} changed while it was started; try again") from err
            raise AdminError(failure, f"scaling FluxNode {meta['name']} to {replicas}: the Kubernetes API answered "
                                      f"{err.status} {err.reason}: {err.message}") from err

    async def _stopped_managed(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        """(the node's FluxNode or None, whether it is stopped: replicas 0)."""
        node = await self._find(name)
        return node, node is not None and (node.get("spec") or {}).get("replicas", 1) == 0

    async def start_node(self, name: str) -> dict[str, Any]:
        async with self._write_lock:
            node, stopped = await self._stopped_managed(name)
            if node is None:
                raise AdminError("NODE_NOT_FOUND", f"node {name} is not a FluxNode of hive {self.hive_resource}; "
                                                   "spawn it")
            if not stopped:
                return self._summary(node, "already_running", [])
            node = await self._scale(await self._managed(name), 1, "START_FAILED")
            return self._summary(node, "started", [])

    async def restart_node(self, name: str) -> dict[str, Any]:
        """Stamp :data:`RESTARTED_AT_ENV` into the FluxNode's ``spec.env`` (``kubectl rollout restart``'s
        idea): the Pods' spec changes, so the operator replaces each of them; the node's config does not
        change.  The admin Role may patch FluxNodes but not delete Pods.  A stopped node is started."""
        async with self._write_lock:
            node = await self._managed(name)
            spec = node.get("spec") or {}
            if spec.get("replicas", 1) == 0:
                node = await self._scale(node, 1, "RESTART_FAILED")
                return self._summary(node, "restarted", [])
            meta = node["metadata"]
            pods = sorted(p["metadata"]["name"] for p in await self._list("pods", {FLUXNODE_LABEL: meta["name"]}))
            stamp = str(int(time.time() * 1000))
            ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
                   {"op": "add", "path": "/spec/env", "value": {**(spec.get("env") or {}), RESTARTED_AT_ENV: stamp}}]
            try:
                node = await self.api.patch("fluxnodes", self.namespace, meta["name"], ops, content_type=JSON_PATCH)
            except ApiError as err:
                if err.status in (409, 422):
                    raise AdminError("BUSY", f"FluxNode {meta['name']} changed while it was restarted; try again"
                                     ) from err
                raise AdminError("RESTART_FAILED", f"patching FluxNode {meta['name']}: the Kubernetes API answered "
                                                   f"{err.status} {err.reason}: {err.message}") from err
            return {**self._summary(node, "restarted", pods), "replaced_pods": pods, "restarted_at_ms": int(stamp)}

    async def remove_node_instance(self, name: str) -> dict[str, Any]:
        async with self._write_lock:
            node, stopped = await self._stopped_managed(name)
            if node is None:
                return {"status": "not_found", "removed_path": None, "instance_purged": False}
            if not stopped:
                raise AdminError("NODE_INSTANCE_RUNNING", f"node {name} runs "
                                                          f"{(node.get('spec') or {}).get('replicas', 1)} replicas; "
                                                          "kill it or scale it to 0 first")
            node = await self._managed(name)
            resource = node["metadata"]["name"]
            try:
                await self.api.delete("fluxnodes", self.namespace, resource)
            except ApiError as err:
                raise AdminError("REMOVE_FAILED", f"deleting FluxNode {resource}: the Kubernetes API answered "
                                                  f"{err.status} {err.reason}: {err.message}") from err
            self._status_versions.pop(name, None)
            return {"status": "ok", "removed_path": f"fluxnode/{resource}", "instance_purged": True}

    async def set_node_config(self, name: str, config: dict[str, Any], replace: bool) -> dict[str, Any]:
        async with self._write_lock:
            for _ in range(CONFLICT_RETRIES):
                node = await self._managed(name)
                meta, spec = node["metadata"], node.get("spec") or {}
                merged = dict(config) if replace else {**(spec.get("config") or {}), **config}
                try:
                    FluxNodeSpec.model_validate({**spec, "config": merged})
                except ValidationError as err:
                    raise AdminError("INVALID_CONFIG", str(err)) from err
                version = int((meta.get("annotations") or {}).get(CONFIG_VERSION_ANNOTATION, "1")) + 1
                ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
                       {"op": "add", "path": "/spec/config", "value": merged},
                       {"op": "add", "path": "/metadata/annotations/" + CONFIG_VERSION_ANNOTATION.replace("/", "~1"),
                        "value": str(version)}]
                try:
                    await self.api.patch("fluxnodes", self.namespace, meta["name"], ops, content_type=JSON_PATCH)
                except ApiError as err:
                    if err.status in (409, 422):
                        continue  # changed under us: read again
                    raise api_error(err, f"patching FluxNode {meta['name']}") from err
                return {"path": f"configmap/{meta['name']}-node-config#{NODE_CONFIG_KEY}", "config_version": version,
                        "applied_by": "restart", "fluxnode": meta["name"]}
        raise AdminError("BUSY", f"FluxNode of {name} kept changing; try again")

    # runtimes and hives ------------------------------------------------------------
    async def runtimes(self) -> dict[str, Any]:
        items = await self._list("runtimes")
        out: dict[str, Any] = {}
        canonical = []
        by_name = {i["metadata"]["name"]: i for i in items}
        for name, body in sorted(by_name.items()):
            spec = body.get("spec") or {}
            version = spec.get("version")
            phase, reason, message = _phase(body)
            ready = phase == "Ready"
            base = spec.get("runtimeBase")
            base_ready = True if not base else _phase(by_name.get(base, {}))[0] == "Ready"
            canonical.append([name, spec])
            out[name] = {"available": [version] if version else [], "current": version,
                         "type": spec.get("type", "full_runtime"), "runtime_base": base,
                         "image": spec.get("image") or (body.get("status") or {}).get("image"),
                         "readiness": {version: {"runtime_present": True, "start_sh_executable": ready,
                                                 "base_runtime_ready": base_ready, "phase": phase,
                                                 "reason": reason, "message": message}} if version else {}}
        versions = [int(rv) for i in items if str(rv := (i.get("metadata") or {}).get("resourceVersion", "")).isdigit()]
        digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
        return {"status": "ok", "manifest_version": max(versions, default=0), "manifest_hash": digest,
                "runtimes": out}

    async def remove_runtime_version(self, runtime: str, version: str) -> dict[str, Any]:
        raise AdminError("NOT_IMPLEMENTED", f"a cluster's runtime {runtime} {version} is a Runtime resource, "
                                            "removed with kubectl (the admin Role may not delete Runtimes)")

    async def _other_hives(self) -> list[dict[str, Any]]:
        return [h for h in await self._list("hives") if h["metadata"]["name"] != self.hive_resource]

    async def remote_hives(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for hive in await self._other_hives():
            meta, spec, status = hive["metadata"], hive.get("spec") or {}, hive.get("status") or {}
            hive_id = str(spec.get("hiveId") or meta["name"])
            phase, reason, _ = _phase(hive)
            out[hive_id] = {"hive_id": hive_id, "address": (meta.get("annotations") or {}).get(ADDRESS_ANNOTATION),
                            "created_at": meta.get("creationTimestamp"), "status": (phase or "pending").lower(),
                            "role": spec.get("role", "motherbee"), "is_local": False, "wan_connected": False,
                            "hive_resource": meta["name"], "phase": phase, "reason": reason,
                            "desired_pods": status.get("desiredPods"), "ready_pods": status.get("readyPods")}
        return out

    async def add_remote_hive(self, record: dict[str, Any]) -> dict[str, Any]:
        hive_id = str(record["hive_id"])
        name = re.sub(r"[^a-z0-9-]+", "-", hive_id.lower()).strip("-") or "hive"
        if name != hive_id:
            name = f"{name}-{hashlib.sha256(hive_id.encode()).hexdigest()[:6]}"
        manifest = {"apiVersion": API_VERSION, "kind": "Hive", "metadata": {
            "name": name, "namespace": self.namespace, "labels": {CREATED_BY: ADMIN_API},
            "annotations": {ADDRESS_ANNOTATION: str(record.get("address", ""))}},
            "spec": {"hiveId": hive_id, "role": "worker", "nodeSelector": {HIVE_LABEL: hive_id}}}
        try:
            await self.api.create("hives", self.namespace, manifest)
        except ApiError as err:
            if err.status == 409:
                raise AdminError("HIVE_EXISTS", f"a Hive named {name} exists") from err
            raise api_error(err, "creating the Hive") from err
        return {"bootstrap_mode": "hive_resource",
                "message": f"Hive {name} created; the operator runs its routers on the hosts labelled "
                           f"{HIVE_LABEL}={hive_id}"}

    async def remove_remote_hive(self, hive_id: str) -> None:
        for hive in await self._other_hives():
            if str((hive.get("spec") or {}).get("hiveId") or hive["metadata"]["name"]) == hive_id:
                try:
                    await self.api.delete("hives", self.namespace, hive["metadata"]["name"])
                except ApiError as err:
                    raise api_error(err, f"deleting Hive {hive['metadata']['name']}") from err


async def mark_global_version(backend: KubernetesBackend, version: int) -> None:
    """Annotate the Hive with the global config version its spec now holds (never a lower one)."""
    b, key = backend, names.ANNOTATION_GLOBAL_VERSION
    for _ in range(CONFLICT_RETRIES):
        meta = (await b._hive())["metadata"]
        held = str((meta.get("annotations") or {}).get(key, "0"))
        if held.isdigit() and int(held) >= version:
            return
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"), "annotations": {key: str(version)}}}
        try:
            await b.api.patch("hives", b.namespace, b.hive_resource, patch)
            return
        except ApiError as err:
            if err.status != 409:
                raise api_error(err, f"annotating Hive {b.hive_resource}") from err
    raise AdminError("BUSY", f"the Hive kept changing; its {key} annotation was not set to {version}")


class HiveSpecRoutes:
    """Routes and VPN rules as the Hive's spec (:class:`~fluxbee.admin.backend.RouteConfig`).

    ``config_version`` is the Hive's ``metadata.generation`` (what the operator writes into the hive
    ConfigMap as ``version``); an explicit ``version`` must exceed both it and the last explicit one
    for the same list (kept in an annotation), as the router requires of ``CONFIG_CHANGED``."""

    def __init__(self, backend: KubernetesBackend) -> None:
        self.backend = backend

    async def lists(self) -> dict[str, Any]:
        hive = await self.backend._hive()
        spec = hive.get("spec") or {}
        return {"config_version": (hive.get("metadata") or {}).get("generation"),
                "routes": [RouteSpec.model_validate(r).model_dump(mode="json") for r in spec.get("routes") or []],
                "vpns": [VpnSpec.model_validate(v).model_dump(mode="json") for v in spec.get("vpns") or []]}

    async def apply(self, subsystem: str, items: list[dict[str, Any]], version: int,
                    base: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        key, model = ("routes", RouteSpec) if subsystem == "routes" else ("vpns", VpnSpec)
        try:
            wire_items = [model.model_validate(i).model_dump(mode="json", by_alias=True, exclude_none=True)
                          for i in items]
        except ValidationError as err:
            return {"status": "error", "error_code": "INVALID_CONFIG", "error_detail": str(err)}
        b = self.backend
        for _ in range(CONFLICT_RETRIES):
            hive = await b._hive()
            meta = hive["metadata"]
            if base is not None and [model.model_validate(i).model_dump(mode="json")
                                     for i in (hive.get("spec") or {}).get(key) or []] != base:
                # another admin replica edited the list since it was read: an edit on the old one
                # would drop its change, even though the patch below is on the newest version
                return {"status": "error", "error_code": LIST_CHANGED,
                        "error_detail": f"the Hive's {key} changed since they were read"}
            annotations = meta.get("annotations") or {}
            annotation = VERSION_ANNOTATION.format(key=key)
            applied = max(int(meta.get("generation") or 0), int(annotations.get(annotation, "0")))
            if version and version <= applied:
                return {"status": "error", "error_code": "STALE_VERSION",
                        "error_detail": f"version {version} is not newer than the applied {applied}"}
            patch: dict[str, Any] = {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                                     "spec": {key: wire_items}}
            if version:
                patch["metadata"]["annotations"] = {annotation: str(version)}
            try:
                new = await b.api.patch("hives", b.namespace, b.hive_resource, patch)
            except ApiError as err:
                if err.status == 409:
                    continue
                raise api_error(err, f"patching Hive {b.hive_resource}") from err
            generation = (new.get("metadata") or {}).get("generation")
            return {"status": "ok", "config_version": generation, "version": version or generation}
        return {"status": "error", "error_code": "BUSY", "error_detail": "the Hive kept changing; try again"}
