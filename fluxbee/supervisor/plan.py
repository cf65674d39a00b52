"""From resource documents to the processes a local hive runs (pure: no I/O).

The same documents drive the Kubernetes operator; only the placement differs
(processes here, Pods there).  Built-in runtimes are the SDK's example nodes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fluxbee import __version__
from fluxbee.dataplane import env as E
from fluxbee.dataplane.names import ANNOTATION_CONFIG_VERSION, ANNOTATION_CREATED_AT_MS
from fluxbee.models import FluxNode, Hive, ObjectMeta, Runtime, RuntimeSpec
from fluxbee.models.effective import effective_config, qualified_node_name
from fluxbee.supervisor import hive_yaml
from fluxbee.supervisor.credentials import CREDENTIAL_FILE_ENV, claims_dir, credential_path
from fluxbee.supervisor.plan_types import HivePlan, ProcessSpec
from fluxbee.supervisor.store import RuntimeStore, StoreError

MANAGED_BY_LOCAL = "fluxbee-up"
CONFIG_VERSION_ANNOTATION = ANNOTATION_CONFIG_VERSION
"""Set by the admin API on FluxNodes it manages: the node config's ``_system.config_version``."""
CREATED_AT_ANNOTATION = ANNOTATION_CREATED_AT_MS


class PlanError(ValueError):
    """The documents do not describe a runnable hive; the message says why."""


def builtin_runtimes() -> dict[str, Runtime]:
    """The runtimes every hive has: the SDK's example nodes."""
    out: dict[str, Runtime] = {}
    for name, kind in (("fluxbee.echo", "echo"), ("fluxbee.listener", "listener")):
        out[name] = Runtime(
            metadata=ObjectMeta(name=name),
            spec=RuntimeSpec(version=__version__, type="full_runtime", command=["fluxbee", "node", kind]),
        )
    return out


def _argv(command: Sequence[str]) -> tuple[str, ...]:
    """``fluxbee …`` runs with this interpreter (the venv's), anything else as given."""
    if command and command[0] == "fluxbee":
        return (sys.executable, "-m", "fluxbee", *command[1:])
    return tuple(command)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_hive(
    resources: Sequence[object], *, run_dir: Path, hive_id: str | None = None, now_ms: int = 0,
    store: RuntimeStore | None = None, link_args: Sequence[str] = (),
) -> HivePlan:
    """Processes for ``resources``.  Runtimes come from Runtime documents, then ``store``
    (``runtimes/<name>/<version>/``), then the built-in example nodes.  ``link_args`` are the router's
    link flags (:func:`fluxbee.supervisor.wan.link_args`)."""
    hives = [r for r in resources if isinstance(r, Hive)]
    if len(hives) != 1:
        raise PlanError(f"expected exactly one Hive document, found {len(hives)}")
    hive = hives[0]
    hid = hive_id or hive.hive_id
    runtimes = builtin_runtimes()
    for r in resources:
        if isinstance(r, Runtime):
            runtimes[r.metadata.name] = r
    router_config = {
        "hive_id": hid,
        "router_name": hive.spec.router_name,
        "routes": [x.model_dump(mode="json") for x in hive.spec.routes],
        "vpns": [x.model_dump(mode="json") for x in hive.spec.vpns],
    }
    busy_poll = ("--busy-poll-us", str(hive.spec.router_busy_poll_us)) if hive.spec.router_busy_poll_us else ()
    router = ProcessSpec(
        key="router",
        argv=(sys.executable, "-m", "fluxbee", "router", "--hive-id", hid, "--run-dir", str(run_dir),
              "--router-name", hive.spec.router_name, "--scheduling", hive.spec.router_scheduling,
              *busy_poll,
              "--config", str(run_dir / "hive" / "config.json"), "--claims-dir", str(claims_dir(run_dir)),
              *link_args),
        digest=_digest(hid, hive.spec.router_name, hive.spec.router_scheduling, list(link_args), *busy_poll),
    )
    nodes: list[ProcessSpec] = []
    seen: set[str] = set()
    for doc in resources:
        if not isinstance(doc, FluxNode):
            continue
        if doc.spec.hive != hive.metadata.name:
            raise PlanError(f"FluxNode {doc.metadata.name!r} names hive {doc.spec.hive!r}, "
                            f"but this file's Hive is {hive.metadata.name!r}")
        name = qualified_node_name(doc.spec.node_name, hid)
        if name in seen:
            raise PlanError(f"two FluxNodes declare the node name {name}")
        seen.add(name)
        runtime = _lookup(doc.spec.runtime, doc.spec.runtime_version, runtimes, resources, store)
        if runtime is None:
            known = sorted(set(runtimes) | set(store.names() if store else ()))
            raise PlanError(f"FluxNode {doc.metadata.name!r}: unknown runtime {doc.spec.runtime!r} "
                            f"(known: {', '.join(known)})")
        base = None
        if runtime.spec.type != "full_runtime":
            base = _lookup(runtime.spec.runtime_base or "", "current", runtimes, resources, store)
            if base is None:
                raise PlanError(f"runtime {runtime.metadata.name!r} needs base runtime "
                                f"{runtime.spec.runtime_base!r}, which is not declared")
        command = (base or runtime).spec.command
        if not command:
            raise PlanError(f"runtime {(base or runtime).metadata.name!r} has no command to run locally")
        annotations = doc.metadata.annotations
        try:
            config_version = int(annotations.get(CONFIG_VERSION_ANNOTATION, "1"))
            created = annotations.get(CREATED_AT_ANNOTATION)
            config = effective_config(runtime, doc, hid, now_ms, managed_by=MANAGED_BY_LOCAL, base=base,
                                      config_version=config_version,
                                      created_at_ms=int(created) if created else None)
        except ValueError as err:
            raise PlanError(f"FluxNode {doc.metadata.name!r}: {err}") from err
        config_path = run_dir / "nodes" / name / "config.json"
        env = ((E.NODE_CONFIG.name, str(config_path)), (E.RUN_DIR.name, str(run_dir)),
               (hive_yaml.CONFIG_DIR_ENV, str(hive_yaml.config_dir(run_dir))),
               (CREDENTIAL_FILE_ENV, str(credential_path(run_dir, name))))
        digest = _digest(command, env, {k: v for k, v in config.items() if k != "_system"},
                         {k: v for k, v in config["_system"].items() if not k.endswith("_at_ms")})
        for replica in range(doc.spec.replicas):
            nodes.append(ProcessSpec(key=f"{name}#{replica}", argv=_argv(command), env=env, node_name=name,
                                     config=config, digest=digest))
    from fluxbee.supervisor.services import system_services

    services = system_services(hive, hid, run_dir)
    return HivePlan(hive_id=hid, router_config=router_config, router=router, nodes=tuple(services + nodes),
                    role=hive.spec.role)


def _lookup(name: str, requested: str, builtin: dict[str, Runtime], resources: Sequence[object],
            store: RuntimeStore | None) -> Runtime | None:
    for r in resources:
        if isinstance(r, Runtime) and r.metadata.name == name:
            return r
    if store is not None:
        try:
            return store.runtime_model(store.resolve(name, requested))
        except StoreError as err:
            if name not in builtin:
                raise PlanError(f"runtime {name!r}: {err.detail}") from err
    return builtin.get(name)
