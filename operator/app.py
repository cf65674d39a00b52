"""The kopf application: handler registration and the operator's run loop.

Handlers are thin: each parses nothing itself, it hands the body to its kind's reconcile
function (``<kind>/handlers.py``) through a per-object :class:`Coalescer`.  The same reconcile
runs for create, update and resume, and again when a child changes or disappears (drift
repair) or when a resource it depends on changes (a Runtime becomes ready, a Hive appears).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from fluxbee.models import API_GROUP
from fluxbee.operator import labels as L
from fluxbee.operator.conditions import Outcome
from fluxbee.operator.context import Coalescer, OperatorContext
from fluxbee.operator.degree.handlers import degrees_pinning, nodes_running, reconcile_degree
from fluxbee.operator.fluxnode.handlers import (
    cleanup_fluxnode,
    nodes_referencing,
    reconcile_fluxnode,
)
from fluxbee.operator.hive.handlers import cleanup_hive, reconcile_hive
from fluxbee.operator.kube import ApiError, Kube, KubeConfig, connection_info
from fluxbee.operator.module.handlers import reconcile_module
from fluxbee.operator.policy.build import POLICY_LABEL
from fluxbee.operator.policy.handlers import reconcile_policy
from fluxbee.operator.runtime.handlers import dependants, reconcile_runtime
from fluxbee.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

VERSION = "v1alpha1"
Reconcile = Callable[[OperatorContext, Mapping[str, Any]], Awaitable[Outcome]]

RECONCILERS: dict[str, Reconcile] = {
    "hives": reconcile_hive,
    "fluxnodes": reconcile_fluxnode,
    "runtimes": reconcile_runtime,
    "modules": reconcile_module,
    "degrees": reconcile_degree,
    "policies": reconcile_policy,
}


def _ctx(memo: Any) -> OperatorContext:
    ctx = memo.get("fluxbee") if isinstance(memo, Mapping) else getattr(memo, "fluxbee", None)
    if not isinstance(ctx, OperatorContext):
        raise kopf.PermanentError("operator context missing from memo (bug)")
    return ctx


async def reconcile(ctx: OperatorContext, plural: str, body: Mapping[str, Any], *,
                    coalesce: bool = False) -> None:
    """Run ``plural``'s reconcile for ``body``, one at a time per object."""
    meta = body["metadata"]
    key = (plural, meta["namespace"], meta["name"])

    async def work() -> None:
        fresh = await ctx.kube.get(plural, key[1], key[2]) if coalesce else body
        if fresh is None:
            if plural == "hives":
                ctx.hives.discard((key[1], key[2]))
            return
        if plural == "hives":
            ctx.hives.add((key[1], key[2]))
        outcome = await RECONCILERS[plural](ctx, fresh)
        log.debug("%s %s/%s: %s %s", plural, key[1], key[2], outcome.phase, outcome.reason)

    await ctx.coalescer.run(key, work, coalesce=coalesce)


async def reconcile_by_name(ctx: OperatorContext, plural: str, namespace: str, name: str) -> None:
    await reconcile(ctx, plural, {"metadata": {"namespace": namespace, "name": name}},
                    coalesce=True)


KICK_CONCURRENCY = 16


async def _kick(ctx: OperatorContext, plural: str, items: list[dict[str, Any]]) -> None:
    """Reconcile dependants, a bounded number at a time (a Runtime may have 500 nodes)."""
    limit = asyncio.Semaphore(KICK_CONCURRENCY)

    async def one(item: dict[str, Any]) -> None:
        meta = item["metadata"]
        async with limit:
            await reconcile_by_name(ctx, plural, meta["namespace"], meta["name"])

    async with asyncio.TaskGroup() as group:
        for item in items:
            group.create_task(one(item), name=f"kick-{plural}-{item['metadata']['name']}")


async def _after(ctx: OperatorContext, plural: str, body: Mapping[str, Any]) -> None:
    """Re-check resources that depend on the one just reconciled."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if plural == "hives":
        await _kick(ctx, "fluxnodes", await nodes_referencing(ctx, namespace, hive=name))
        await _kick(ctx, "policies", await ctx.kube.list("policies", namespace))  # a new hive gets its policy
    elif plural == "runtimes":
        await _kick(ctx, "runtimes", await dependants(ctx, namespace, name))
        await _kick(ctx, "fluxnodes", await nodes_referencing(ctx, namespace, runtime=name))
    elif plural == "modules":
        degrees = await degrees_pinning(ctx, namespace, name)
        await _kick(ctx, "degrees", degrees)
        for degree in degrees:  # a tampered module must stop the agents that run it
            await _kick(ctx, "fluxnodes",
                        await nodes_running(ctx, namespace, degree["metadata"]["name"]))
    elif plural == "degrees":
        await _kick(ctx, "fluxnodes", await nodes_running(ctx, namespace, name))
    elif plural == "fluxnodes":
        degree_name = ((body.get("spec") or {}).get("degree") or {}).get("name")
        if isinstance(degree_name, str):  # the Degree counts the graduations of its agents
            await reconcile_by_name(ctx, "degrees", namespace, degree_name)


async def _exclusive(ctx: OperatorContext, plural: str, body: Mapping[str, Any],
                     cleanup: Callable[[OperatorContext, Mapping[str, Any]], Awaitable[None]]) -> None:
    """Run a cleanup in the object's reconcile queue.

    A reconcile started by a child event just before the deletion would otherwise run beside
    the cleanup and put back what it removes (a DaemonSet, a node's claim).  Queued behind the
    cleanup instead, it reads the object again, sees it terminating and does nothing.
    """
    meta = body["metadata"]

    async def work() -> None:
        await cleanup(ctx, body)

    await ctx.coalescer.run((plural, meta["namespace"], meta["name"]), work, coalesce=False)


def _temporary(err: ApiError) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"API call failed; will retry in 5 s: {err}", delay=5)


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach every handler of the operator to ``registry``."""

    for plural in RECONCILERS:

        def make(plural: str) -> None:
            async def on_change(body: kopf.Body, memo: Any, **_: Any) -> None:
                ctx = _ctx(memo)
                try:
                    await reconcile(ctx, plural, body)
                    if plural in ("hives", "runtimes", "modules", "degrees", "fluxnodes"):
                        await _after(ctx, plural, body)
                except ApiError as err:
                    raise _temporary(err) from err

            for cause, decorator in (
                ("create", kopf.on.create),
                ("update", kopf.on.update),
                ("resume", kopf.on.resume),
            ):
                decorator(API_GROUP, VERSION, plural, registry=registry,
                          id=f"reconcile-{plural}-{cause}")(on_change)

        make(plural)

    # Hives carry no finalizer: everything a Hive makes is owned by it and goes with it through the
    # garbage collector. A finalizer would leave a Hive Terminating for good whenever the operator is
    # gone first (`helm uninstall` deletes the operator and the chart's Hive together). So the
    # operator reacts to the watch's DELETED event instead (no finalizer needed, and none added):
    # it deletes the children at once and stops the Hive's nodes (their Pods are the FluxNodes', not
    # the Hive's). An operator that was down at that moment does the same at its next start, when
    # each FluxNode is resumed and finds its Hive gone.
    @kopf.on.event(API_GROUP, VERSION, "hives", registry=registry, id="hive-gone")
    async def hive_deleted(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        if event.get("type") != "DELETED":
            return
        body = event.get("object") or {}
        if not (body.get("metadata") or {}).get("namespace"):
            return
        ctx = _ctx(memo)
        ctx.hives.discard((body["metadata"]["namespace"], body["metadata"].get("name")))
        try:
            await _exclusive(ctx, "hives", body, cleanup_hive)
            await _after(ctx, "hives", body)
        except ApiError as err:
            log.warning("hive %s/%s deleted; cleaning up failed, the garbage collector and the nodes' next "
                        "reconcile finish it: %s", body["metadata"]["namespace"], body["metadata"].get("name"), err)

    @kopf.on.delete(API_GROUP, VERSION, "fluxnodes", registry=registry, id="cleanup-fluxnode")
    async def fluxnode_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
        try:
            await _exclusive(_ctx(memo), "fluxnodes", body, cleanup_fluxnode)
        except ApiError as err:
            raise _temporary(err) from err

    @kopf.on.delete(API_GROUP, VERSION, "runtimes", registry=registry, id="runtime-gone",
                    optional=True)
    async def runtime_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
        await _after(_ctx(memo), "runtimes", body)

    @kopf.on.delete(API_GROUP, VERSION, "degrees", registry=registry, id="degree-gone",
                    optional=True)
    async def degree_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
        await _after(_ctx(memo), "degrees", body)

    @kopf.on.delete(API_GROUP, VERSION, "modules", registry=registry, id="module-gone",
                    optional=True)
    async def module_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
        await _after(_ctx(memo), "modules", body)

    # Drift repair: a child that is deleted or edited by hand brings its owner back to spec;
    # Pod status changes refresh the FluxNode's ready count.
    for group, version, plural in (
        ("", "v1", "pods"),
        ("", "v1", "configmaps"),
        ("", "v1", "services"),
        ("apps", "v1", "daemonsets"),
        ("apps", "v1", "deployments"),
        ("apps", "v1", "statefulsets"),
    ):
        resource = (group, version, plural) if group else (version, plural)

        @kopf.on.event(*resource, registry=registry, labels={L.MANAGED_BY: L.OPERATOR},
                       id=f"child-{plural}")
        async def child_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
            if event.get("type") not in ("MODIFIED", "DELETED"):
                return
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            child_labels = meta.get("labels") or {}
            namespace = meta.get("namespace")
            if not namespace:
                return
            ctx = _ctx(memo)
            try:
                if L.FLUXNODE in child_labels:
                    await reconcile_by_name(ctx, "fluxnodes", namespace, child_labels[L.FLUXNODE])
                elif L.HIVE in child_labels:
                    await reconcile_by_name(ctx, "hives", namespace, child_labels[L.HIVE])
                elif POLICY_LABEL in child_labels:  # a stored version or a hive's copy edited or deleted
                    await reconcile_by_name(ctx, "policies", namespace, child_labels[POLICY_LABEL])
            except (ApiError, kopf.TemporaryError) as err:  # e.g. a Hive waiting for a Secret
                log.warning("repairing after %s %s/%s failed; the next event retries: %s",
                            event.get("type"), namespace, meta.get("name"), err)


async def _renew_forever(ctx: OperatorContext) -> None:
    """Reconcile every Hive seen, one at a time, every ``resync_interval`` (until cancelled)."""
    while True:
        await asyncio.sleep(ctx.settings.resync_interval)
        for namespace, name in sorted(ctx.hives):
            try:
                await reconcile_by_name(ctx, "hives", namespace, name)
            except (ApiError, kopf.TemporaryError) as err:
                log.warning("hive %s/%s: periodic reconcile failed; the next event or round retries: %s",
                            namespace, name, err)


def configure(settings: kopf.OperatorSettings, operator: OperatorSettings) -> None:
    settings.persistence.finalizer = L.FINALIZER
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.queueing.worker_limit = operator.worker_limit
    settings.queueing.idle_timeout = operator.worker_idle_timeout
    # Watching one namespace, the operator has a Role there and nothing cluster-wide: kopf's scan
    # of namespaces and CRDs would be refused (logged as errors, retried for ~40 s) before it
    # fell back to the kinds it found at startup, which is all it needs.
    settings.scanning.disabled = operator.namespace is not None
    if operator.peering:
        settings.peering.name = operator.peering
        settings.peering.priority = operator.priority
        settings.peering.standalone = False
        settings.peering.clusterwide = operator.namespace is None
    else:
        settings.peering.standalone = True


def build_registry(operator: OperatorSettings, access: KubeConfig) -> kopf.OperatorRegistry:
    """Every handler, the startup settings, and the login from ``access`` (kopf has no other)."""
    registry = kopf.OperatorRegistry()
    register(registry)

    @kopf.on.startup(registry=registry, id="configure")
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, operator)

    # Generated link certificates are renewed by the reconcile that finds them close to expiry, and
    # a Secret the operator does not watch (it watches no Secrets: that would stream every Secret of
    # the cluster to it) is repaired by a reconcile too; so every Hive seen is reconciled again every
    # ``resync_interval``.  Not a kopf timer: timers put a finalizer on the Hive, which would strand
    # it Terminating whenever the operator is gone first (see ``hive-gone``).
    @kopf.on.startup(registry=registry, id="start-renewal")
    async def start_renewal(memo: Any, **_: Any) -> None:
        ctx = _ctx(memo)
        ctx.renewal = asyncio.create_task(_renew_forever(ctx), name="hive-certificate-renewal")

    @kopf.on.cleanup(registry=registry, id="stop-renewal")
    async def stop_renewal(memo: Any, **_: Any) -> None:
        task = _ctx(memo).renewal
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    @kopf.on.login(registry=registry, id="login")
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(access)

    return registry


async def run(
    operator: OperatorSettings,
    kube: Kube,
    access: KubeConfig,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (or forever).

    ``kube`` is the handlers' client; ``access`` is where it logs in, and kopf's watches log in
    the same way.
    """
    ctx = OperatorContext(kube=kube, settings=operator, coalescer=Coalescer())
    registry = build_registry(operator, access)
    namespaces = [operator.namespace] if operator.namespace else []
    await kopf.operator(
        registry=registry,
        memo=kopf.Memo(fluxbee=ctx),
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=operator.peering is None,
        priority=operator.priority,
        peering_name=operator.peering,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
