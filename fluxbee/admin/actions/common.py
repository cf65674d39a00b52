"""What every admin action shares: the context it runs in, who calls, and the checks and history
entry around a change.

:func:`record_change` is the one way a handler makes a change: it reserves the history entry first and
writes it whatever the outcome; :func:`check_hive` and :func:`full_node_name` turn a request's target
and node name into the local hive's terms or a specific error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fluxbee.admin.backend import Backend, NodeObservation, RouteConfig, RouterLink
from fluxbee.admin.errors import AdminError
from fluxbee.admin.global_config import GlobalConfig
from fluxbee.admin.history import DEPLOYMENTS, History, HistoryUnavailable, Journal
from fluxbee.admin.link import RouterRoutes
from fluxbee.models import validate_node_name

if TYPE_CHECKING:
    from fluxbee.admin.kube_policy import KubePolicies

log = logging.getLogger(__name__)



@dataclass(slots=True)
class Context:
    backend: Backend
    link: RouterLink
    history: History
    routes: RouteConfig | None = None
    """Where routes/VPNs live; default: the router's live config through ``link``."""
    started_at: float = field(default_factory=time.time)
    route_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    global_config: GlobalConfig | None = None
    """The global routes and VPN rules this hive sets (mother) or follows (worker); None: not kept
    (the Kubernetes backend), and ``PUT /config/*`` changes this hive only."""
    policies: KubePolicies | None = None
    """In a cluster: the ``/opa/*`` routes act on the hive's Policy resource (no SY.policy runs there)."""

    def route_lock(self, hive: str) -> asyncio.Lock:
        return self.route_locks.setdefault(hive, asyncio.Lock())

    def route_config(self) -> RouteConfig:
        return self.routes if self.routes is not None else RouterRoutes(self.link)


@dataclass(frozen=True, slots=True)
class Call:
    """Who asks: ``trigger`` is ``admin_api`` (HTTP) or ``admin_command`` (socket)."""

    trigger: str
    actor: str


# helpers ---------------------------------------------------------------------
def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def check_hive(ctx: Context, hive: str) -> None:
    """Refuse a target that is not this hive: HIVE_NOT_CONNECTED if registered, else NOT_FOUND."""
    if hive == ctx.backend.hive_id:
        return
    if hive in await ctx.backend.remote_hives():
        raise AdminError("HIVE_NOT_CONNECTED", f"hive {hive!r} is registered but not connected: "
                                               "this hive has no WAN gateway link to it")
    raise AdminError("NOT_FOUND", f"hive {hive!r} is not known (this hive is {ctx.backend.hive_id!r})")


def full_node_name(ctx: Context, hive: str, raw: str) -> str:
    """``raw`` as ``name@hive`` (the suffix, if given, must be the target hive), checked against the L2 grammar."""
    local, sep, suffix = raw.rpartition("@")
    if sep and suffix != hive:
        raise AdminError("INVALID_REQUEST", f"node {raw!r} names hive {suffix!r}, but the request targets {hive!r}")
    name = raw if sep else f"{raw}@{hive}"
    try:
        validate_node_name(name)
    except ValueError as err:
        raise AdminError("INVALID_REQUEST", str(err)) from err
    return name


async def router_visible(ctx: Context) -> tuple[set[str], dict[str, Any] | None]:
    """The node names the router sees and its status; an empty set and None when it is out of reach."""
    try:
        status = await ctx.link.router_status()
    except AdminError:
        return set(), None
    return {n["name"] for n in status.get("nodes", [])}, status


async def observe(ctx: Context, only: str | None = None) -> tuple[set[str], list[NodeObservation]]:
    """The router-visible names and the backend's nodes (told when the router is out of reach)."""
    visible, status = await router_visible(ctx)
    return visible, await ctx.backend.observe(visible if status is not None else None, only)


def find_node(observations: list[NodeObservation], name: str) -> NodeObservation | None:
    return next((o for o in observations if o.node_name == name), None)


async def record_change(ctx: Context, call: Call, category: str, action: str, started: float,
                  work: Awaitable[dict[str, Any]], detail: dict[str, Any]) -> dict[str, Any]:
    """Run a change and write its deployment entry, whatever the outcome.

    The history is reserved first: a change that could not be recorded is not made (it was
    made, then answered 500, when the history was written after it). A change that fails on a
    write of its own answers ``STATE_WRITE_FAILED``; the backends leave nothing half-applied."""
    try:
        journal = await ctx.history.open(DEPLOYMENTS)
    except HistoryUnavailable as err:
        if isinstance(work, Coroutine):
            work.close()  # never started
        raise AdminError("STATE_WRITE_FAILED", f"the change cannot be recorded in {err.where}: "
                                               f"{err.detail}; nothing was changed") from err
    try:
        try:
            result = await work
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise AdminError("STATE_WRITE_FAILED", f"the change could not be written{where}: {err.strerror or err}"
                             ) from err
    except AdminError as err:
        await _write_entry(ctx, journal, category=category, action=action, actor=call.actor, trigger=call.trigger,
                           started=started, result="error",
                           detail={**detail, "error_code": err.code, "error_detail": err.detail})
        raise
    else:
        await _write_entry(ctx, journal, category=category, action=action, actor=call.actor, trigger=call.trigger,
                           started=started, result="ok", detail=detail)
        return result
    finally:
        journal.close()


async def _write_entry(ctx: Context, journal: Journal, **entry: Any) -> None:
    """The change is decided (made or refused): its answer must say so even if the entry is lost."""
    try:
        await ctx.history.deployment(journal=journal, **entry)
    except HistoryUnavailable as err:
        log.error("the %s change is done (%s) but its history entry could not be written: %s", entry["action"],
                  entry["result"], err)

