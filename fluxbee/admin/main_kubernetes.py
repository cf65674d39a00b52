"""``fluxbee admin --backend kubernetes``: the admin API of one hive in a cluster.

It runs as the hive's admin Deployment (``operator/hive/build.py``), its pods beside hive pods: it
reads and changes the hive through the Kubernetes API, and reaches the router of its host through
the hive's socket directory (a hostPath) with host IPC.  Its deployment and drift history is the
hive's history ConfigMap (:mod:`fluxbee.admin.kube_history`), shared by every replica, and so
is its global config (:mod:`fluxbee.admin.kube_global`): on a mother, ``PUT /config/routes|vpns``
numbers a global version, applies it to the Hive's spec and pushes it to every known hive; on a
worker one replica at a time follows the mother, as a local hive does
(:mod:`fluxbee.admin.global_config`).

The router link is optional: a connector task looks for a router socket every
:data:`ROUTER_RETRY` seconds; while there is none, actions that need the router answer
``ROUTER_UNREACHABLE`` (503) and ``ADMIN_COMMAND`` is not served.  When the router is there, the
admin node is ``SY.admin`` on it, exactly as in a local hive (:mod:`fluxbee.admin.main_supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from fluxbee.admin.actions import Context
from fluxbee.admin.drift import DriftMonitor
from fluxbee.admin.errors import AdminError
from fluxbee.admin.gateway import serve_admin_commands
from fluxbee.admin.global_config import PULL_INTERVAL, GlobalConfig, follow_mother
from fluxbee.admin.history import History
from fluxbee.admin.http import AdminSettings, admin_site, build_app
from fluxbee.admin.k8s import HiveSpecRoutes, KubernetesBackend, mark_global_version
from fluxbee.admin.kube_global import ConfigMapGlobalStore
from fluxbee.admin.kube_history import ConfigMapHistory
from fluxbee.admin.kube_policy import KubePolicies
from fluxbee.admin.link import SdkRouterLink, SwitchableRouterLink, UnreachableRouterLink
from fluxbee.dataplane.names import ADMIN_NODE
from fluxbee.dataplane.sdk import NodeConfig, SdkError, connect
from fluxbee.kube import KubeClient, KubeConfig

log = logging.getLogger(__name__)
ADMIN_NODE_NAME = ADMIN_NODE
ROUTER_RETRY = 2.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    namespace: str
    """Namespace of the Hive and its FluxNodes."""
    hive_resource: str
    """Name of the Hive resource this admin API serves."""
    run_dir: Path
    """The hive's socket directory (``routers/*.sock``), shared with the router of this host."""
    kube: KubeConfig
    drift_interval: float = 1.0
    pull_interval: float = PULL_INTERVAL
    """Seconds between a worker's asks for its mother's global config."""
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """This admin process among the hive's replicas (its pod name in a Deployment)."""


@dataclass(slots=True)
class RunningAdmin:
    ctx: Context
    url: str | None
    link: SwitchableRouterLink


def _router_sockets(run_dir: Path) -> list[Path]:
    routers = run_dir / "routers"
    return sorted(routers.glob("*.sock")) if routers.is_dir() else []


async def _router_connector(ctx: Context, link: SwitchableRouterLink, run_dir: Path) -> None:
    """Keep ``link`` pointed at the router when one is in reach; serve ADMIN_COMMAND while it is."""
    unreachable = link.current
    while True:
        if not _router_sockets(run_dir):
            await asyncio.sleep(ROUTER_RETRY)
            continue
        try:
            sender, receiver = await connect(NodeConfig(name=ADMIN_NODE_NAME, run_dir=run_dir, connect_timeout=2.0))
        except (SdkError, OSError) as err:
            log.info("router in %s not reachable (%s); will retry in %.0f s", run_dir, err, ROUTER_RETRY)
            await asyncio.sleep(ROUTER_RETRY)
            continue
        log.info("connected to the router as %s", ADMIN_NODE_NAME)
        sdk_link = SdkRouterLink(sender)
        link.current = sdk_link
        try:
            await serve_admin_commands(ctx, sender, receiver)
        finally:
            link.current = unreachable
            await sdk_link.close()
            await sender.close()
        log.warning("router connection ended; looking for the router again in %.0f s", ROUTER_RETRY)
        await asyncio.sleep(ROUTER_RETRY)


@contextlib.asynccontextmanager
async def cluster_admin(settings: AdminSettings, cluster: ClusterSettings) -> AsyncIterator[RunningAdmin]:
    """Serve the admin API of ``cluster.hive_resource`` until the context exits."""
    async with KubeClient(cluster.kube, timeout=10.0, user_agent="fluxbee-admin") as api:
        backend = KubernetesBackend(api, cluster.namespace, cluster.hive_resource)
        await backend.start()
        link = SwitchableRouterLink(UnreachableRouterLink(
            f"no router reachable through {cluster.run_dir / 'routers'} from the admin API (it must run on a "
            "host of the hive, with its socket directory)"))
        store = ConfigMapHistory(api, cluster.namespace, cluster.hive_resource)
        global_store = ConfigMapGlobalStore(store, cluster.instance)
        gc = GlobalConfig(global_store, applied=functools.partial(mark_global_version, backend))
        policies = KubePolicies(api, cluster.namespace, cluster.hive_resource, backend.hive_id, cluster.instance)
        ctx = Context(backend=backend, link=link, history=History(store, backend.hive_id),
                      routes=HiveSpecRoutes(backend), global_config=gc, policies=policies)
        monitor = DriftMonitor(ctx, interval=cluster.drift_interval,
                               leader=functools.partial(store.lead_drift_monitor, cluster.instance))
        tasks = [asyncio.create_task(_router_connector(ctx, link, cluster.run_dir), name="admin-router-connector"),
                 asyncio.create_task(monitor.run(), name="admin-drift-monitor"),
                 asyncio.create_task(policies.report_forever(link), name="admin-policy-report")]
        mother = (await backend.hive_info()).get("mother_hive")

        async def follows() -> bool:
            """A replica without its router cannot ask the mother: it leaves the lease to one that can."""
            return not isinstance(link.current, UnreachableRouterLink) and await global_store.lead_follower()

        if isinstance(mother, str) and mother:  # a worker follows its mother's global routes and VPNs
            tasks.append(asyncio.create_task(
                follow_mother(ctx, gc, mother, interval=cluster.pull_interval, leader=follows),
                name="admin-global-config-follower"))
        runner = web.AppRunner(build_app(ctx, settings), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = admin_site(runner, settings)
            await site.start()
            port = runner.addresses[0][1] if runner.addresses else settings.port
            url = f"http://{settings.host}:{port}"
            log.info("hive %r (Hive %s/%s): admin API on %s", backend.hive_id, cluster.namespace,
                     cluster.hive_resource, url)
            yield RunningAdmin(ctx=ctx, url=url, link=link)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.shield(runner.cleanup())
            policies.checker.close()


async def run_cluster_admin(settings: AdminSettings, cluster: ClusterSettings, stop: asyncio.Event) -> int:
    try:
        async with cluster_admin(settings, cluster) as running:
            print(f"hive {running.ctx.backend.hive_id!r}: admin API on {running.url}", flush=True)
            await stop.wait()
    except AdminError as err:
        print(f"fluxbee admin: {err.detail}", flush=True)
        return 2
    except OSError as err:
        print(f"fluxbee admin: cannot listen on {settings.host}:{settings.port}: {err}", flush=True)
        return 2
    return 0
