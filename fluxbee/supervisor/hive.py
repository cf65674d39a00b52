"""``fluxbee up``: run a hive file's router and nodes as supervised processes.

The supervisor reconciles: every second it compares the processes the hive
file asks for (:func:`fluxbee.supervisor.plan.plan_hive`) with the ones running,
starts what is missing, stops what is no longer declared, and restarts what
changed.  A process that dies is restarted with exponential backoff (100 ms
doubling to 30 s, reset after 10 s of healthy running).  Routes and VPNs are
written to the router's config file, which the router reloads live.

Children run in their own sessions (a terminal's Ctrl-C reaches only the
supervisor, which then stops the nodes before the router) and get SIGTERM if
the supervisor itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, BinaryIO

from fluxbee.dataplane import shm
from fluxbee.dataplane.sdk import default_run_dir, read_node_table
from fluxbee.models import FluxNode, Hive, Resource, ResourceError, load_documents
from fluxbee.procs import die_with_parent
from fluxbee.supervisor import hive_yaml
from fluxbee.supervisor.credentials import claimed_names, write_claims
from fluxbee.supervisor.plan import PlanError, plan_hive
from fluxbee.supervisor.plan_types import HivePlan, ProcessSpec
from fluxbee.supervisor.store import RuntimeStore
from fluxbee.supervisor.wan import WanOptions, WanSetupError, link_args

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 10.0
STOP_GRACE = 5.0
READY_TIMEOUT = 30.0


class LocalHiveError(Exception):
    """The local hive cannot start; the message says why."""


def default_hive_file() -> Path:
    return Path(str(importlib_resources.files("fluxbee") / "data" / "hive.yaml"))


@dataclass(slots=True)
class Supervised:
    """One desired process and its running state."""

    spec: ProcessSpec
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    restarts: int = 0
    quick_failures: int = 0
    started_at: float = 0.0
    last_exit: int | None = None
    state: str = "STARTING"
    reason: str | None = None
    """Why the process is not running (``FAILED``): it could not be started, or it exited."""
    stopping: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshot(self) -> dict[str, Any]:
        return {"key": self.spec.key, "node_name": self.spec.node_name, "state": self.state,
                "pid": self.proc.pid if self.proc and self.proc.returncode is None else None,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "started_at": self.started_at or None, "log": str(self.log_path), "reason": self.reason}


ServiceFactory = Callable[["LocalHive"], AbstractAsyncContextManager[object]]
"""Something run inside ``fluxbee up`` once the router is up (the admin API), stopped first."""


class LocalHive:
    def __init__(self, hive_file: Path, *, hive_id: str | None, run_dir: Path,
                 services: Sequence[ServiceFactory] = (), wan: WanOptions | None = None) -> None:
        self.hive_file = hive_file
        self.wan = wan or WanOptions()
        self.link_args: tuple[str, ...] = ()
        self.hive_id_override = hive_id
        self.run_dir = run_dir
        self.services = tuple(services)
        self.store = RuntimeStore(run_dir / "dist" / "runtimes")
        self.plan: HivePlan | None = None
        self.procs: dict[str, Supervised] = {}
        self.started_at = time.time()
        self._file_sig: tuple[int, int] | None = None
        self._stopping = False
        self._reconcile_lock = asyncio.Lock()

    # planning ---------------------------------------------------------
    @property
    def managed_dir(self) -> Path:
        """FluxNode documents created at runtime (admin API spawns); planned with the hive file."""
        return self.run_dir / "admin" / "nodes"

    def hive_documents(self) -> list[Resource]:
        """The hive file's documents (raises :class:`ResourceError`)."""
        return load_documents(self.hive_file)

    def managed_documents(self) -> dict[Path, FluxNode]:
        """The runtime-created FluxNodes, by file; unreadable files are reported and skipped."""
        out: dict[Path, FluxNode] = {}
        for path in sorted(self.managed_dir.glob("*.yaml")) if self.managed_dir.exists() else ():
            try:
                docs = load_documents(path)
            except ResourceError as err:
                log.error("ignoring %s: %s", path, err)
                continue
            for doc in docs:
                if isinstance(doc, FluxNode):
                    out[path] = doc
        return out

    def plan_for(self, docs: Sequence[object]) -> HivePlan:
        """A plan of ``docs`` (raises :class:`PlanError`); used to check a change before making it."""
        return plan_hive(docs, run_dir=self.run_dir, hive_id=self.hive_id_override,
                         now_ms=int(time.time() * 1000), store=self.store, link_args=self.link_args)

    def prepare_links(self) -> None:
        """The router's link flags from ``spec.wan`` and the ``--wan-*`` flags (certificate issued here);
        read once at start: the router is started once."""
        try:
            hives = [d for d in self.hive_documents() if isinstance(d, Hive)]
        except ResourceError as err:
            raise LocalHiveError(str(err)) from err  # the error names the file
        if len(hives) != 1:
            return  # load_plan says what is wrong
        hive = hives[0]
        try:
            self.link_args = link_args(hive, self.hive_id_override or hive.hive_id, self.run_dir, self.wan)
        except WanSetupError as err:
            raise LocalHiveError(str(err)) from err

    def load_plan(self) -> HivePlan:
        try:
            docs: list[object] = [*self.hive_documents(), *self.managed_documents().values()]
            return self.plan_for(docs)
        except (ResourceError, PlanError) as err:
            raise LocalHiveError(str(err)) from err

    async def replan(self) -> HivePlan:
        """Re-read the hive file and the managed nodes, and reconcile now."""
        plan = self.load_plan()
        await self.reconcile(plan)
        return plan

    def write_configs(self, plan: HivePlan) -> None:
        write_claims(self.run_dir, claimed_names(plan.node_names))  # before any process that needs them starts
        router_config = self.run_dir / "hive" / "config.json"
        try:
            current = json.loads(router_config.read_text())
        except (OSError, ValueError):
            current = None
        if current != plan.router_config:  # rewriting an unchanged file would bump the router's config version
            _atomic_json(router_config, plan.router_config)
        for spec in plan.nodes:
            if spec.node_name and spec.config is not None:
                path = self.run_dir / "nodes" / spec.node_name / "config.json"
                if not path.exists() or _digest_of(path) != _config_identity(spec.config):
                    _atomic_json(path, spec.config, mode=0o600)

    # processes --------------------------------------------------------
    def _start(self, spec: ProcessSpec) -> Supervised:
        name = spec.key.replace("/", "_")
        sup = Supervised(spec=spec, log_path=self.run_dir / "logs" / f"{name}.log")
        sup.task = asyncio.create_task(self._keep_running(sup), name=f"supervise-{spec.key}")
        self.procs[spec.key] = sup
        return sup

    async def _keep_running(self, sup: Supervised) -> None:
        """Start the process, wait for it, start it again: forever, until it is stopped.

        Nothing that goes wrong while starting (the log file cannot be opened: a read-only run dir,
        a full disk, no file descriptors left; the program cannot be executed) may end this loop:
        the process stays ``FAILED`` with the reason in its status, and is retried with backoff, so
        it comes back by itself once the cause is gone."""
        delay = BACKOFF_INITIAL
        while not sup.stopping:
            try:
                logf = _open_log(sup.log_path)
            except OSError as err:
                self._retry_later(sup, f"cannot open its log file {sup.log_path}: {err}", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            with logf:
                try:
                    sup.proc = await asyncio.create_subprocess_exec(
                        *sup.spec.argv, env={**os.environ, **dict(sup.spec.env)}, stdin=asyncio.subprocess.DEVNULL,
                        stdout=logf, stderr=logf, start_new_session=True, preexec_fn=die_with_parent,
                    )
                except (OSError, ValueError) as err:
                    self._retry_later(sup, f"cannot start {sup.spec.argv[0]}: {err}", delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
            sup.started_at = time.time()
            sup.state = "RUNNING"
            if sup.reason is not None:  # it was failing: say it is back
                sup.reason = None
                self._write_state()
            code = await sup.proc.wait()
            sup.last_exit = code
            if sup.stopping:
                sup.state = "STOPPED"
                return
            ran = time.time() - sup.started_at
            if ran > HEALTHY_AFTER:
                delay = BACKOFF_INITIAL
                sup.quick_failures = 0
            else:
                sup.quick_failures += 1
                if sup.quick_failures == 3:  # say it once where the user looks, not only in the log
                    print(f"fluxbee up: {sup.spec.key} keeps failing (exit {code}); its log ({sup.log_path}) "
                          f"ends with:\n{_tail(sup.log_path, 5)}", file=sys.stderr, flush=True)
            sup.restarts += 1
            sup.state = "FAILED"
            sup.reason = f"exited with {code} after {ran:.1f} s"
            self._write_state()
            log.warning("%s exited with %s after %.1f s; restarting in %.1f s (see %s)",
                        sup.spec.key, code, ran, delay, sup.log_path)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _retry_later(self, sup: Supervised, reason: str, delay: float) -> None:
        sup.state = "FAILED"
        sup.reason = reason
        log.error("%s: %s; will retry in %.1f s", sup.spec.key, reason, delay)
        self._write_state()  # the state file says why now, not at the next periodic write

    async def _stop(self, sup: Supervised) -> None:
        sup.stopping = True
        proc = sup.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                log.warning("%s did not stop within %.0f s; killing it", sup.spec.key, STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if sup.task is not None:
            sup.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sup.task
        sup.state = "STOPPED"
        self.procs.pop(sup.spec.key, None)

    async def reconcile(self, plan: HivePlan) -> None:
        """Make the running processes match ``plan`` (nodes only; the router is started once)."""
        async with self._reconcile_lock:
            await self._reconcile(plan)

    async def _reconcile(self, plan: HivePlan) -> None:
        self.write_configs(plan)
        desired = {p.key: p for p in plan.nodes}
        for key, sup in list(self.procs.items()):
            if key == "router":
                continue
            want = desired.get(key)
            if want is None or want.digest != sup.spec.digest:
                log.info("%s: %s", key, "no longer declared; stopping" if want is None else "changed; restarting")
                await self._stop(sup)
        for key, spec in desired.items():
            if key not in self.procs:
                self._start(spec)
        self.plan = plan
        self._write_state()

    async def restart_node(self, node_name: str) -> list[Supervised]:
        """Stop every process of ``node_name`` and start it again at once, with a fresh backoff (the
        admin API's restart: not counted as a failure, unlike a process that exits by itself).

        Returns the new processes' supervisors (empty when the plan runs no process of that name);
        their ``proc`` is set once they have been spawned."""
        async with self._reconcile_lock:
            plan = self.plan
            specs = [p for p in plan.nodes if p.node_name == node_name] if plan is not None else []
            for spec in specs:
                sup = self.procs.get(spec.key)
                if sup is not None:
                    log.info("%s: restart asked; stopping", spec.key)
                    await self._stop(sup)
            started = [self._start(spec) for spec in specs]
            self._write_state()
            return started

    def _write_state(self) -> None:
        plan = self.plan
        doc = {
            "hive_id": plan.hive_id if plan else None,
            "hive_file": str(self.hive_file),
            "supervisor_pid": os.getpid(),
            "updated_at": time.time(),
            "processes": [s.snapshot() for s in self.procs.values()],
        }
        with contextlib.suppress(OSError):
            _atomic_json(self.run_dir / "state" / "supervisor.json", doc)

    # lifecycle --------------------------------------------------------
    async def run(self) -> int:
        self.store.seed_builtins()
        self.prepare_links()
        plan = self.load_plan()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_configs(plan)
        try:
            hive_yaml.write(hive_yaml.config_dir(self.run_dir), plan.hive_id, plan.role)
        except (hive_yaml.HiveYamlError, OSError) as err:
            raise LocalHiveError(f"cannot provide hive.yaml for nodes built with the original SDKs: {err}") from err
        self._file_sig = _sig(self.hive_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        router = self._start(plan.router)
        try:
            socket_path = await self._wait_router(router, stop)
            if socket_path is None:
                return 1 if not stop.is_set() else 0
            await self.reconcile(plan)
            print(f"hive {plan.hive_id!r}: router socket {socket_path}", flush=True)
            print(f"hive {plan.hive_id!r}: run dir {self.run_dir} (logs in {self.run_dir / 'logs'})", flush=True)
            async with contextlib.AsyncExitStack() as stack:
                for factory in self.services:
                    await stack.enter_async_context(factory(self))
                await self._report_ready(plan, stop)
                await self._watch(stop)
            return 0
        finally:
            await self.shutdown()

    async def _wait_router(self, router: Supervised, stop: asyncio.Event) -> Path | None:
        deadline = time.monotonic() + READY_TIMEOUT
        routers = self.run_dir / "routers"
        while time.monotonic() < deadline and not stop.is_set():
            if router.proc is not None and router.proc.returncode is None:
                for sock in routers.glob("*.sock") if routers.exists() else ():
                    if _router_of(sock) == router.proc.pid:
                        return sock
            elif router.restarts >= 3:
                break
            await asyncio.sleep(0.05)
        if not stop.is_set():
            tail = _tail(router.log_path)
            why = f" ({router.reason})" if router.reason else ""
            print(f"fluxbee up: the router did not come up{why}; its log ({router.log_path}) ends with:\n{tail}",
                  file=sys.stderr, flush=True)
        return None

    async def _report_ready(self, plan: HivePlan, stop: asyncio.Event) -> None:
        wanted = plan.node_names
        deadline = time.monotonic() + READY_TIMEOUT
        present: set[str] = set()
        while not stop.is_set():
            present = {r.name for r in read_node_table(self.run_dir)}
            if wanted <= present:
                names = ", ".join(sorted(wanted)) or "no nodes"
                print(f"hive {plan.hive_id!r} is ready: {names}. Try: fluxbee send WF.echo --payload "
                      f"'{{\"hello\": 1}}' --wait --run-dir {self.run_dir}   (Ctrl-C stops the hive)", flush=True)
                return
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(wanted - present))
                print(f"hive {plan.hive_id!r}: still waiting for {missing} (see {self.run_dir / 'logs'})",
                      file=sys.stderr, flush=True)
                return
            await asyncio.sleep(0.05)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Re-plan when the hive file changes; keep the state file fresh."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if stop.is_set():
                return
            sig = _sig(self.hive_file)
            if sig != self._file_sig:
                self._file_sig = sig
                # a bad edit (bad YAML or encoding, unreadable, gone) is refused: it never stops the hive
                try:
                    plan = self.load_plan()
                except (LocalHiveError, OSError, ValueError) as err:
                    log.error("hive file change refused; keeping the running hive: %s", err)
                else:
                    if self.plan is not None and plan.hive_id != self.plan.hive_id:
                        log.error("the hive id cannot change while the hive runs (%s -> %s); restart fluxbee up",
                                  self.plan.hive_id, plan.hive_id)
                    else:
                        log.info("hive file changed; reconciling")
                        try:
                            await self.reconcile(plan)
                        except OSError as err:
                            log.error("hive file change not applied (%s); the hive keeps running, edit the "
                                      "file again to retry", err)
            self._write_state()

    async def shutdown(self) -> None:
        """Nodes first, then the router (which removes its socket and shared memory)."""
        if self._stopping:
            return
        self._stopping = True
        nodes = [s for k, s in self.procs.items() if k != "router"]
        await asyncio.gather(*(self._stop(s) for s in nodes))
        router = self.procs.get("router")
        if router is not None:
            await self._stop(router)
        with contextlib.suppress(OSError):
            (self.run_dir / "state" / "supervisor.json").unlink()
        print("hive stopped", flush=True)


def _atomic_json(path: Path, doc: Any, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _config_identity(config: dict[str, Any]) -> str:
    body = dict(config)
    system = dict(body.get("_system") or {})
    for key in ("created_at_ms", "updated_at_ms"):
        system.pop(key, None)
    body["_system"] = system
    return json.dumps(body, sort_keys=True)


def _digest_of(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return _config_identity(data) if isinstance(data, dict) else None


def _sig(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _router_of(sock: Path) -> int | None:
    """Pid owning the node table of the router behind ``sock`` (None if there is none yet).

    Read from shared memory instead of connecting: no probe connection for the router to count,
    and a stale socket file of another router is never mistaken for ours.
    """
    try:
        name = shm.node_table_name(str(uuid.UUID(sock.stem)))
        with shm.NodeTableReader(name) as reader:
            return reader.header().owner_pid
    except (ValueError, shm.ShmError):
        return None


def _open_log(path: Path) -> BinaryIO:
    """The process's log file, opened for appending (creating its folder first); raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def run_local_hive(file: str | None, *, hive_id: str | None = None, run_dir: str | None = None,
                         services: Sequence[ServiceFactory] = (), wan: WanOptions | None = None) -> int:
    hive_file = Path(file) if file else default_hive_file()
    if not hive_file.exists():
        raise LocalHiveError(f"{hive_file}: no such file")
    hive = LocalHive(hive_file, hive_id=hive_id, run_dir=Path(run_dir) if run_dir else default_run_dir(),
                     services=services, wan=wan)
    return await hive.run()
