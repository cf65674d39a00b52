"""The admin backend of local mode (kind ``local``): the admin API over the ``fluxbee up`` supervisor, in its process.

Spawned nodes are FluxNode documents in ``<run dir>/admin/nodes/`` (so they come back when the
hive restarts, like the original's ``relaunch_on_boot``); the supervisor plans them together with
the hive file.  Every change is first planned as a dry run, so a bad request never reaches disk.
Nodes declared in the hive file are reported but not changed here: the file is the user's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from fluxbee.admin.backend import NodeObservation, RegisterIlk
from fluxbee.admin.errors import AdminError
from fluxbee.admin.schemas import KillNodeParams, SpawnNodeParams
from fluxbee.dataplane.names import ANNOTATION_REQUESTED_VERSION
from fluxbee.models import FluxNode, FluxNodeSpec, Hive, ObjectMeta, ResourceError, load_documents
from fluxbee.supervisor.hive import LocalHive, Supervised
from fluxbee.supervisor.plan import CONFIG_VERSION_ANNOTATION, CREATED_AT_ANNOTATION, PlanError
from fluxbee.supervisor.store import StoreError

log = logging.getLogger(__name__)


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None


class LocalBackend:
    kind = "local"

    def __init__(self, hive: LocalHive) -> None:
        if hive.plan is None:
            raise RuntimeError("the local hive has no plan yet")
        self.hive = hive
        self.hive_id = hive.plan.hive_id
        self._write_lock = asyncio.Lock()
        self._status_versions: dict[str, tuple[int, str]] = {}

    # paths -----------------------------------------------------------
    def _node_dir(self, name: str) -> Path:
        return self.hive.run_dir / "nodes" / name

    def _doc_path(self, name: str) -> Path:
        return self.hive.managed_dir / f"{name}.yaml"

    def _stopped_path(self, name: str) -> Path:
        """Where a killed node's document waits for ``start`` (until its instance is removed)."""
        return self.hive.run_dir / "admin" / "stopped" / f"{name}.yaml"

    @property
    def _hives_dir(self) -> Path:
        return self.hive.run_dir / "admin" / "hives"

    def _hive_doc(self) -> Hive:
        docs = self.hive.hive_documents()
        return next(d for d in docs if isinstance(d, Hive))

    async def hive_info(self) -> dict[str, Any]:
        try:
            hive = self._hive_doc()
            role, router, mother = hive.spec.role, hive.spec.router_name, hive.spec.mother
        except (ResourceError, StopIteration):
            role, router, mother = "motherbee", None, None
        return {"hive_id": self.hive_id, "role": role, "mother_hive": mother, "router_name": router,
                "backend": self.kind,
                "run_dir": str(self.hive.run_dir), "started_at": _iso(self.hive.started_at)}

    # observation -----------------------------------------------------
    async def observe(self, visible: set[str] | None, only: str | None = None) -> list[NodeObservation]:
        return self.observe_now(visible or set(), only)

    def observe_now(self, visible: set[str], only: str | None = None) -> list[NodeObservation]:
        """The local supervisor's view is in this process: no I/O beyond small files."""
        plan = self.hive.plan
        if plan is None:
            return []
        procs: dict[str, list[Supervised]] = {}
        for sup in list(self.hive.procs.values()):
            if sup.spec.node_name:
                procs.setdefault(sup.spec.node_name, []).append(sup)
        declared = sorted({p.node_name for p in plan.nodes if p.node_name})
        names = [n for n in declared if only is None or n == only]
        nodes_dir = self.hive.run_dir / "nodes"
        if only is not None:
            leftovers = [only] if only not in declared and (nodes_dir / only / "config.json").exists() else []
        else:
            leftovers = sorted(e.name for e in os.scandir(nodes_dir) if e.is_dir() and e.name not in declared
                               and (Path(e.path) / "config.json").exists()) if nodes_dir.exists() else []
        out = []
        for name in [*names, *leftovers]:
            out.append(self._observe_one(name, name in declared, procs.get(name, []), visible))
        return out

    def _observe_one(self, name: str, declared: bool, sups: list[Supervised], visible: set[str]) -> NodeObservation:
        node_dir = self._node_dir(name)
        config: dict[str, Any] | None = None
        valid = False
        try:
            loaded = json.loads((node_dir / "config.json").read_text())
            config, valid = (loaded, True) if isinstance(loaded, dict) else (None, False)
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            config = {}
        state: Any = None
        state_exists = False
        try:
            state = json.loads((node_dir / "state.json").read_text())
            state_exists = True
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            state_exists = True
        is_visible = name in visible
        states = {s.state for s in sups}
        if declared and "RUNNING" in states:
            lifecycle = "RUNNING" if is_visible else "STARTING"
        elif declared and "FAILED" in states:
            lifecycle = "FAILED"
        elif declared and sups:
            lifecycle = "STARTING"
        elif config is not None or state_exists:
            lifecycle = "STOPPED"
        else:
            lifecycle = "UNKNOWN"
        system = config.get("_system", {}) if isinstance(config, dict) else {}
        sup = sups[0] if sups else None
        process: dict[str, Any] = {}
        if sup is not None:
            snap = sup.snapshot()
            process = {"unit": sup.spec.key, "pid": snap["pid"], "exit_code": sup.last_exit,
                       "restart_count": sum(s.restarts for s in sups), "started_at": _iso(snap["started_at"]),
                       "replicas": len(sups), "log": snap["log"], "reason": snap["reason"]}
        managed = self._doc_path(name).exists() or not declared
        return NodeObservation(
            node_name=name, hive=self.hive_id, managed=managed, lifecycle_state=lifecycle, visible_in_router=is_visible,
            runtime={"name": system.get("runtime"), "requested_version": system.get("requested_runtime_version"),
                     "resolved_version": system.get("runtime_version")},
            process=process, config_path=str(node_dir / "config.json"), config=config, config_valid=valid,
            state_path=str(node_dir / "state.json"), state=state, state_exists=state_exists,
            instances=[str(x.proc.pid) for x in sups if x.proc is not None and x.proc.returncode is None])

    def bump_status_version(self, name: str, fingerprint: str) -> int:
        """Persisted per node; bumped only when the fingerprint changes (the original's status_version rule)."""
        known = self._status_versions.get(name)
        node_dir = self._node_dir(name)
        if known is None:
            try:
                known = (int((node_dir / "status_version").read_text()),
                         (node_dir / "status_fingerprint.sha256").read_text().strip())
            except (OSError, ValueError):
                known = (0, "")
        if known[1] == fingerprint:
            self._status_versions[name] = known
            return known[0]
        version = known[0] + 1
        self._status_versions[name] = (version, fingerprint)
        if node_dir.exists():
            try:
                (node_dir / "status_version").write_text(f"{version}\n")
                (node_dir / "status_fingerprint.sha256").write_text(fingerprint + "\n")
            except OSError as err:  # a read must not fail on it: the version is kept in memory meanwhile
                log.warning("cannot persist the status version of %s: %s; it restarts after a restart", name, err)
        return version

    # changes ---------------------------------------------------------
    def _docs_with(self, path: Path, doc: FluxNode | None) -> list[object]:
        managed = self.hive.managed_documents()
        managed.pop(path, None)
        if doc is not None:
            managed[path] = doc
        return [*self.hive.hive_documents(), *managed.values()]

    def _check_plan(self, docs: list[object]) -> None:
        try:
            self.hive.plan_for(docs)
        except PlanError as err:
            raise AdminError("INVALID_CONFIG", str(err)) from err
        except ResourceError as err:
            raise AdminError("CONFIG_FAILED", f"the hive file cannot be read: {err}") from err

    def _write_doc(self, path: Path, doc: FluxNode) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(doc.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False))
        os.replace(tmp, path)

    async def _replan(self) -> None:
        try:
            await self.hive.replan()
        except OSError as err:  # e.g. the node's config cannot be written: a read-only or full run dir
            raise AdminError("STATE_WRITE_FAILED", f"the supervisor could not apply the change: {err}") from err
        except Exception as err:  # LocalHiveError: the change is on disk, the reconcile failed
            raise AdminError("SPAWN_FAILED", f"the supervisor could not apply the change: {err}") from err

    async def _apply_doc(self, path: Path, doc: FluxNode) -> None:
        """Write a node's document and reconcile; if that fails, the previous document is put back, so
        a refused change leaves nothing behind (a spawn answered with an error must not start later)."""
        try:
            previous: bytes | None = path.read_bytes()
        except FileNotFoundError:
            previous = None
        self._write_doc(path, doc)
        try:
            await self._replan()
        except AdminError as err:
            try:
                if previous is None:
                    path.unlink(missing_ok=True)
                else:
                    tmp = path.with_name(path.name + ".tmp")
                    tmp.write_bytes(previous)
                    os.replace(tmp, path)
                await self.hive.replan()
            except Exception as again:  # the run dir is in trouble: say so, keep the first error
                log.error("could not undo the refused change of %s: %s", path, again)
                raise err from None
            raise AdminError(err.code, f"{err.detail}; nothing was changed") from err

    async def spawn_node(self, name: str, params: SpawnNodeParams, register: RegisterIlk) -> dict[str, Any]:
        async with self._write_lock:
            plan = self.hive.plan
            if (plan is not None and name in plan.node_names) or (self._node_dir(name) / "config.json").exists():
                raise AdminError("NODE_ALREADY_EXISTS", f"node {name} already exists; kill it with purge_instance "
                                                        "(or remove a stopped one's instance, or start it) before "
                                                        "spawning it again")
            try:
                resolved = self.hive.store.resolve(params.runtime, params.runtime_version)
                self.hive.store.check_launchable(resolved)
            except StoreError as err:
                raise AdminError(err.code, err.detail) from err
            now_ms = int(time.time() * 1000)
            try:
                doc = FluxNode(
                    metadata=ObjectMeta(name=name.replace("@", "-at-").lower()[:253], annotations={
                        CONFIG_VERSION_ANNOTATION: "1", CREATED_AT_ANNOTATION: str(now_ms),
                        ANNOTATION_REQUESTED_VERSION: params.runtime_version}),
                    spec=FluxNodeSpec(hive=self._hive_doc().metadata.name, node_name=name, runtime=resolved.name,
                                      runtime_version=resolved.version, tenant_id=params.tenant_id,
                                      config=params.config))
            except ValueError as err:
                raise AdminError("INVALID_REQUEST", str(err)) from err
            path = self._doc_path(name)
            self._check_plan(self._docs_with(path, doc))
            ilk = await register(resolved.name, resolved.version)
            if ilk is not None:
                doc = doc.model_copy(update={"spec": doc.spec.model_copy(update={"agent_ilk": ilk})})
            await self._apply_doc(path, doc)
        written = self._observe_one(name, True, [], set())
        system = (written.config or {}).get("_system", {})
        return {"runtime": resolved.name, "version": resolved.version, "requested_version": params.runtime_version,
                "unit": f"{name}#0", "visible_in_router": False,
                "config": {"status": "ok" if written.config_valid else "missing", "path": written.config_path,
                           "created": True, "config_version": system.get("config_version")}}

    async def node_state(self, name: str) -> tuple[str | None, Any]:
        path = self._node_dir(name) / "state.json"
        try:
            return str(path), json.loads(path.read_text())
        except FileNotFoundError:
            return str(path), None
        except (OSError, ValueError) as err:
            raise AdminError("NODE_STATE_READ_FAILED", f"cannot read {path}: {err}") from err

    def _signal(self, name: str, sig: signal.Signals) -> list[int]:
        pids = []
        for sup in list(self.hive.procs.values()):
            if sup.spec.node_name == name and sup.proc is not None and sup.proc.returncode is None:
                try:
                    sup.proc.send_signal(sig)
                    pids.append(sup.proc.pid)
                except ProcessLookupError:
                    pass
        return pids

    async def kill_node(self, name: str, params: KillNodeParams) -> dict[str, Any]:
        async with self._write_lock:
            path = self._doc_path(name)
            plan = self.hive.plan
            declared = plan is not None and name in plan.node_names
            if declared and not path.exists():
                raise AdminError("NODE_NOT_MANAGED", f"node {name} is declared in {self.hive.hive_file}; "
                                                     "remove it there")
            node_dir = self._node_dir(name)
            if not declared and not node_dir.exists():
                raise AdminError("NODE_NOT_FOUND", f"node {name} is neither running nor configured")
            pids: list[int] = []
            stopped = self._stopped_path(name)
            if declared:
                pids = self._signal(name, signal.SIGKILL if params.force else signal.Signals[params.signal])
                if params.purge_instance:
                    path.unlink()
                else:  # kept for `start`, as the original keeps a stopped unit's instance
                    stopped.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, stopped)
                await self._replan()
            out: dict[str, Any] = {"unit": f"{name}#0", "pids": pids, "was_running": declared}
            if params.purge_instance:
                self._purge(name)
                out.update(instance_purged=True, removed_path=str(node_dir), purge_status="purged")
        return out

    def _purge(self, name: str) -> None:
        shutil.rmtree(self._node_dir(name), ignore_errors=True)
        self._stopped_path(name).unlink(missing_ok=True)
        self._status_versions.pop(name, None)

    def _running(self, name: str) -> bool:
        plan = self.hive.plan
        return plan is not None and name in plan.node_names

    def _summary(self, name: str, state: str) -> dict[str, Any]:
        o = self._observe_one(name, self._running(name), [s for s in self.hive.procs.values()
                                                         if s.spec.node_name == name], set())
        return {"state": state, "unit": f"{name}#0", "runtime": o.runtime.get("name"),
                "version": o.runtime.get("resolved_version"), "requested_version": o.runtime.get("requested_version"),
                "pids": [int(p) for p in o.instances]}

    def _document_from_instance(self, name: str) -> FluxNode | None:
        """The FluxNode to start a stopped instance with: the document ``kill`` kept, else one rebuilt from
        the instance's config (a node killed before documents were kept, or dropped from the hive file)."""
        stopped = self._stopped_path(name)
        if stopped.exists():
            try:
                docs = [d for d in load_documents(stopped) if isinstance(d, FluxNode)]
            except ResourceError as err:
                raise AdminError("START_FAILED", f"the stopped node's document {stopped} cannot be read: {err}"
                                 ) from err
            if len(docs) != 1:
                raise AdminError("START_FAILED", f"{stopped} holds {len(docs)} FluxNodes, not one")
            return docs[0]
        try:
            config = json.loads((self._node_dir(name) / "config.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise AdminError("START_FAILED", f"the instance config of {name} cannot be read: {err}") from err
        system = config.get("_system") if isinstance(config, dict) else None
        if not isinstance(config, dict) or not isinstance(system, dict) or not system.get("runtime"):
            raise AdminError("START_FAILED", f"the instance config of {name} has no `_system.runtime` to start "
                                             "it with; remove the instance and spawn the node again")
        annotations = {CONFIG_VERSION_ANNOTATION: str(system.get("config_version") or 1)}
        if system.get("created_at_ms"):
            annotations[CREATED_AT_ANNOTATION] = str(system["created_at_ms"])
        try:
            return FluxNode(
                metadata=ObjectMeta(name=name.replace("@", "-at-").lower()[:253], annotations=annotations),
                spec=FluxNodeSpec(hive=self._hive_doc().metadata.name, node_name=name, runtime=str(system["runtime"]),
                                  runtime_version=str(system.get("runtime_version") or "current"),
                                  tenant_id=system.get("tenant_id"), agent_ilk=system.get("ilk_id"),
                                  config={k: v for k, v in config.items() if k != "_system"}))
        except (ValueError, ResourceError, StopIteration) as err:
            raise AdminError("START_FAILED", f"the instance config of {name} cannot be started: {err}") from err

    async def start_node(self, name: str) -> dict[str, Any]:
        async with self._write_lock:
            return await self._start_locked(name)

    async def _start_locked(self, name: str) -> dict[str, Any]:
        if self._running(name):
            return self._summary(name, "already_running")
        doc = self._document_from_instance(name)
        if doc is None:
            raise AdminError("NODE_NOT_FOUND", f"node {name} has no instance to start; spawn it")
        path = self._doc_path(name)
        try:
            self._check_plan(self._docs_with(path, doc))
            await self._apply_doc(path, doc)
        except AdminError as err:
            raise AdminError("START_FAILED", f"{err.code}: {err.detail}") from err
        self._stopped_path(name).unlink(missing_ok=True)
        return self._summary(name, "started")

    async def restart_node(self, name: str) -> dict[str, Any]:
        async with self._write_lock:
            if self._running(name):
                if not await self.hive.restart_node(name):
                    raise AdminError("RESTART_FAILED", f"the supervisor runs no process of {name}")
                return self._summary(name, "restarted")
            if self._document_from_instance(name) is None:
                raise AdminError("NODE_NOT_FOUND", f"node {name} is neither running nor has an instance")
            try:  # a stopped instance is started (systemctl restart starts an inactive unit)
                out = await self._start_locked(name)
            except AdminError as err:
                raise AdminError("RESTART_FAILED", err.detail) from err
        return {**out, "state": "restarted"}

    async def remove_node_instance(self, name: str) -> dict[str, Any]:
        async with self._write_lock:
            if self._running(name):
                raise AdminError("NODE_INSTANCE_RUNNING", f"node {name} is running; kill it first")
            node_dir = self._node_dir(name)
            if not node_dir.exists() and not self._stopped_path(name).exists():
                return {"status": "not_found", "removed_path": None, "instance_purged": False}
            # one rename takes the instance away whole (a failure leaves it whole: STATE_WRITE_FAILED);
            # only then are its files deleted, out of the nodes folder
            trash = self.hive.run_dir / "admin" / "trash" / f"{name}.{time.time_ns()}"
            if node_dir.exists():
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(node_dir, trash)
            self._stopped_path(name).unlink(missing_ok=True)
            self._status_versions.pop(name, None)
            shutil.rmtree(trash, ignore_errors=True)
            if trash.exists():
                log.warning("the removed instance of %s is out of the hive but %s could not be deleted", name, trash)
            return {"status": "ok", "removed_path": str(node_dir), "instance_purged": True}

    async def set_node_config(self, name: str, config: dict[str, Any], replace: bool) -> dict[str, Any]:
        async with self._write_lock:
            path = self._doc_path(name)
            docs = self.hive.managed_documents()
            doc = docs.get(path)
            if doc is None:
                raise AdminError("NODE_NOT_MANAGED", f"node {name} was not spawned through the admin API")
            merged = dict(config) if replace else {**doc.spec.config, **config}
            annotations = dict(doc.metadata.annotations)
            version = int(annotations.get(CONFIG_VERSION_ANNOTATION, "1")) + 1
            annotations[CONFIG_VERSION_ANNOTATION] = str(version)
            try:
                new = FluxNode(metadata=doc.metadata.model_copy(update={"annotations": annotations}),
                               spec=doc.spec.model_copy(update={"config": merged}))
                FluxNodeSpec.model_validate(new.spec.model_dump(by_alias=True))
            except ValueError as err:
                raise AdminError("INVALID_CONFIG", str(err)) from err
            self._check_plan(self._docs_with(path, new))
            await self._apply_doc(path, new)
        return {"path": str(self._node_dir(name) / "config.json"), "config_version": version,
                "applied_by": "restart"}

    # runtimes and hives ------------------------------------------------
    async def runtimes(self) -> dict[str, Any]:
        store = self.hive.store
        manifest = store.manifest()
        entries = manifest.get("runtimes", {})
        out: dict[str, Any] = {}
        for name, entry in sorted(entries.items()):
            if not isinstance(entry, dict):
                continue
            out[name] = {**entry, "readiness": {v: store.readiness(name, v) for v in entry.get("available", [])}}
        return {"status": "ok" if store.manifest_path.exists() else "missing",
                "manifest_version": manifest.get("version"), "manifest_hash": store.manifest_hash(), "runtimes": out}

    async def remove_runtime_version(self, runtime: str, version: str) -> dict[str, Any]:
        try:
            return self.hive.store.remove_version(runtime, version)
        except StoreError as err:
            raise AdminError(err.code, err.detail) from err

    async def remote_hives(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path in sorted(self._hives_dir.glob("*.json")) if self._hives_dir.exists() else ():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and "hive_id" in record:
                out[str(record["hive_id"])] = record
        return out

    async def add_remote_hive(self, record: dict[str, Any]) -> dict[str, Any]:
        self._hives_dir.mkdir(parents=True, exist_ok=True)
        path = self._hives_dir / f"{record['hive_id']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return {"bootstrap_mode": "registered_only",
                "message": "registered; no WAN gateway yet, so the worker is not bootstrapped or connected"}

    async def remove_remote_hive(self, hive_id: str) -> None:
        (self._hives_dir / f"{hive_id}.json").unlink(missing_ok=True)
