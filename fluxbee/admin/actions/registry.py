"""The action registry and the HTTP route table: one table serves HTTP, ``ADMIN_COMMAND`` and OpenAPI.

:data:`ACTIONS` is served by ``GET /admin/actions``; :data:`ROUTES` maps the original's HTTP paths
onto it; :func:`dispatch` validates an action's params with its model and calls its handler.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from fluxbee.admin import remote
from fluxbee.admin import schemas as s
from fluxbee.admin.actions.common import Call, Context
from fluxbee.admin.actions.deployments import get_deployments, get_drift_alerts, list_deployments, list_drift_alerts
from fluxbee.admin.actions.distribution import remove_runtime_version, sync_hint, update
from fluxbee.admin.actions.hives import add_hive, get_hive, hive_status, list_hives, relay_to, remove_hive
from fluxbee.admin.actions.identity import (
    get_ilk,
    get_module,
    get_module_version,
    list_ilks,
    list_modules,
    publish_module,
)
from fluxbee.admin.actions.inventory import inventory
from fluxbee.admin.actions.lifecycle import remove_node_instance, restart_node, start_node
from fluxbee.admin.actions.nodes import (
    get_node_config,
    get_node_state,
    get_node_status,
    kill_node,
    list_nodes,
    node_control_config_get,
    node_control_config_set,
    run_node,
    send_node_message,
    set_node_config,
)
from fluxbee.admin.actions.policy import (
    OpaCheckParams,
    OpaDecisionsParams,
    OpaWriteParams,
    opa_apply,
    opa_check,
    opa_compile,
    opa_compile_apply,
    opa_get_decisions,
    opa_get_policy,
    opa_get_status,
    opa_rollback,
)
from fluxbee.admin.actions.router_config import (
    add_route,
    add_vpn,
    delete_route,
    delete_vpn,
    list_routes,
    list_vpns,
    set_config_routes,
    set_config_vpns,
)
from fluxbee.admin.actions.versions import get_runtime, get_versions, list_runtimes, list_versions
from fluxbee.admin.errors import AdminError
from fluxbee.admin.global_config import GlobalConfigParams, apply_global_config, get_global_config
from fluxbee.dataplane.names import HIVE_ID_RE

log = logging.getLogger(__name__)

REGISTRY_VERSION = "9"

Handler = Callable[[Context, str, Any, Call], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    handler: Handler
    params: type[s.Params]
    summary: str
    read_only: bool
    requires_target: bool
    confirmation_required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP method+path and how its parts become the action's target and params."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    action: str
    path_params: dict[str, str] = field(default_factory=dict)
    """URL variable → params field (``hive`` always becomes the target)."""
    query: dict[str, type] = field(default_factory=dict)
    """Query parameter → type (str, int, bool)."""
    query_fields: dict[str, str] = field(default_factory=dict)
    """Query parameter → params field, where they differ (``?hive=`` is otherwise the target)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Params this path sets (``/inventory/summary`` is scope ``summary``)."""
    body: Literal["none", "fields", "config"] = "none"
    """``fields``: the JSON object's keys are params; ``config``: the object is ``params.config``."""
    body_required: bool = False


async def list_admin_actions(ctx: Context, target: str, p: s.NoParams, call: Call) -> dict[str, Any]:
    return {"status": "ok", "registry_version": REGISTRY_VERSION, "actions": [_describe(a) for a in ACTIONS.values()]}


async def get_admin_action_help(ctx: Context, target: str, p: s.ActionHelpParams, call: Call) -> dict[str, Any]:
    action = ACTIONS.get(p.action_name)
    if action is None:
        raise AdminError("ACTION_NOT_FOUND", f"no action {p.action_name!r}")
    return {"status": "ok", "registry_version": REGISTRY_VERSION, "entry": _describe(action)}


def _describe(action: Action) -> dict[str, Any]:
    routes = [r for r in ROUTES if r.action == action.name]
    schema = action.params.model_json_schema()
    required = list(schema.get("required", []))
    optional = [k for k in schema.get("properties", {}) if k not in required]
    return {"action": action.name, "handler": action.handler.__name__, "canonical_action": action.name,
            "requires_target": action.requires_target, "read_only": action.read_only,
            "confirmation_required": action.confirmation_required, "summary": action.summary,
            "path_patterns": [f"{r.method} {r.path}" for r in routes],
            "request_contract": {"transport": ["http", "admin_command"] if routes else ["admin_command"],
                                 "body": {"kind": "object", "required_fields": required,
                                          "optional_fields": optional}}}


def _a(handler: Handler, params: type[s.Params], summary: str, *, read_only: bool, target: bool,
       confirm: bool = False) -> Action:
    name = handler.__name__
    return Action(name, handler, params, summary, read_only, target, confirm)


ACTIONS: dict[str, Action] = {a.name: a for a in (
    _a(hive_status, s.NoParams, "The local hive: id, pid, uptime, router", read_only=True, target=False),
    _a(list_admin_actions, s.NoParams, "This catalogue", read_only=True, target=False),
    _a(get_admin_action_help, s.ActionHelpParams, "One catalogue entry", read_only=True, target=False),
    _a(list_hives, s.NoParams, "The local hive, the registered ones and the linked ones, with each link's state, "
       "last advert and RTT", read_only=True, target=False),
    _a(get_hive, s.HiveIdParams, "One hive's record", read_only=True, target=False),
    _a(add_hive, s.AddHiveParams, "Link a worker hive by its gateway address (HOST[:PORT]) and register it",
       read_only=False, target=False),
    _a(remove_hive, s.HiveIdParams, "Unlink a worker hive and forget it", read_only=False, target=False,
       confirm=True),
    _a(inventory, s.InventoryParams, "Nodes of this hive and of every hive the links reach (scope global, hive "
       "or summary; filter by hive and kind)", read_only=True, target=False),
    _a(list_nodes, s.NoParams, "Declared and connected nodes", read_only=True, target=True),
    _a(run_node, s.SpawnNodeParams, "Spawn a node from a runtime and register its ILK", read_only=False,
       target=True),
    _a(kill_node, s.KillNodeParams, "Stop and forget a spawned node", read_only=False, target=True, confirm=True),
    _a(start_node, s.NodeParams, "Start a stopped node's instance again (already_running if it runs)",
       read_only=False, target=True),
    _a(restart_node, s.NodeParams, "Replace a node's processes or Pods now (a stopped instance is started)",
       read_only=False, target=True),
    _a(remove_node_instance, s.NodeParams, "Delete a stopped node's instance (its config and state); "
       "NODE_INSTANCE_RUNNING while it runs", read_only=False, target=True, confirm=True),
    _a(get_node_status, s.NodeParams, "Lifecycle, health and runtime of a node", read_only=True, target=True),
    _a(get_node_config, s.NodeParams, "A node's effective config", read_only=True, target=True),
    _a(set_node_config, s.SetNodeConfigParams, "Patch a spawned node's config", read_only=False, target=True),
    _a(get_node_state, s.NodeParams, "A node's state file (null if none)", read_only=True, target=True),
    _a(send_node_message, s.SendMessageParams, "Send one message to a node; returns its trace id",
       read_only=False, target=True),
    _a(node_control_config_get, s.NodeControlParams, "CONFIG_GET to a node", read_only=True, target=True),
    _a(node_control_config_set, s.NodeControlParams, "CONFIG_SET to a node", read_only=False, target=True),
    _a(list_routes, s.NoParams, "The router's static routes", read_only=True, target=True),
    _a(add_route, s.RouteBody, "Add a static route", read_only=False, target=True),
    _a(delete_route, s.DeleteRouteParams, "Delete a static route", read_only=False, target=True),
    _a(list_vpns, s.NoParams, "The router's VPN rules", read_only=True, target=True),
    _a(add_vpn, s.VpnBody, "Add a VPN rule", read_only=False, target=True),
    _a(delete_vpn, s.DeleteVpnParams, "Delete a VPN rule", read_only=False, target=True),
    _a(set_config_routes, s.ConfigRoutesParams, "Replace routes (and VPNs)", read_only=False, target=False),
    _a(set_config_vpns, s.ConfigVpnsParams, "Replace VPN rules", read_only=False, target=False),
    _a(get_global_config, s.NoParams, "The global routes and VPN rules this hive holds, with their version",
       read_only=True, target=False),
    _a(apply_global_config, GlobalConfigParams, "Take the mother hive's global routes and VPN rules (only from "
       "SY.admin of this hive's mother)", read_only=False, target=False),
    _a(list_versions, s.NoParams, "Versions of every hive", read_only=True, target=False),
    _a(get_versions, s.NoParams, "Core and runtime versions of a hive, with readiness", read_only=True, target=True),
    _a(list_runtimes, s.NoParams, "Runtimes in a hive's store", read_only=True, target=True),
    _a(get_runtime, s.RuntimeParams, "One runtime, its versions and usage", read_only=True, target=True),
    _a(remove_runtime_version, s.RuntimeVersionParams, "Delete one version of a runtime from a hive's store "
       "(not current unless alone, not in use, no dependents)", read_only=False, target=True, confirm=True),
    _a(sync_hint, s.SyncHintParams, "Wait for a hive's dist/blob copy to be idle (here: nothing is copied, ok "
       "at once)", read_only=True, target=True),
    _a(update, s.UpdateParams, "Check a hive's runtime manifest and packages against a published manifest "
       "(ok, or sync_pending until they match and are launchable)", read_only=False, target=True),
    _a(list_deployments, s.HistoryParams, "Changes made through the admin API", read_only=True, target=False),
    _a(get_deployments, s.HistoryParams, "Changes made to one hive", read_only=True, target=True),
    _a(list_drift_alerts, s.HistoryParams, "Observed drift", read_only=True, target=False),
    _a(get_drift_alerts, s.HistoryParams, "Observed drift on one hive", read_only=True, target=True),
    _a(list_ilks, s.IlkListParams, "ILKs of a hive (compact rows), from SY.identity; paged with limit/cursor",
       read_only=True, target=True),
    _a(get_ilk, s.IlkParams, "One ILK with tenant and alias detail, from SY.identity", read_only=True, target=True),
    _a(list_modules, s.NoParams, "Prompt modules (names and every version)", read_only=True, target=False),
    _a(get_module, s.ModuleParams, "Versions of one prompt module", read_only=True, target=False),
    _a(get_module_version, s.ModuleVersionParams, "One module version with its text and sha256", read_only=True,
       target=False),
    _a(publish_module, s.ModulePutParams, "Publish a module version (immutable; same text again is a no-op)",
       read_only=False, target=False),
    _a(opa_compile_apply, OpaWriteParams, "Compile a routing policy and apply it (one hive, or every hive)",
       read_only=False, target=False),
    _a(opa_compile, OpaWriteParams, "Compile and stage a routing policy under a new version", read_only=False,
       target=False),
    _a(opa_apply, OpaWriteParams, "Apply the staged routing policy", read_only=False, target=False),
    _a(opa_rollback, OpaWriteParams, "Restore an earlier applied policy, as a new version", read_only=False,
       target=False, confirm=True),
    _a(opa_check, OpaCheckParams, "Validate Rego and evaluate an input (no version taken, nothing written)",
       read_only=True, target=True),
    _a(opa_get_policy, s.NoParams, "The current policy (with its Rego), the staged one, the versions kept",
       read_only=True, target=True),
    _a(opa_get_status, s.NoParams, "Policy versions, the last apply and what the router runs", read_only=True,
       target=True),
    _a(opa_get_decisions, OpaDecisionsParams, "The router's recent policy decisions (audit ring)",
       read_only=True, target=True),
)}

_HIST = {"limit": int, "category": str, "severity": str, "kind": str}
_N = "/hives/{hive}/nodes/{name}"
_NAME = {"name": "node_name"}
ROUTES: tuple[Route, ...] = (
    Route("GET", "/admin/actions", "list_admin_actions"),
    Route("GET", "/admin/actions/{action}", "get_admin_action_help", {"action": "action_name"}),
    Route("GET", "/hive/status", "hive_status"),
    Route("GET", "/inventory", "inventory", query={"type": str, "hive": str},
          query_fields={"type": "filter_type", "hive": "filter_hive"}),
    Route("GET", "/inventory/summary", "inventory", query={"type": str}, query_fields={"type": "filter_type"},
          fixed={"scope": "summary"}),
    Route("GET", "/inventory/nodes", "inventory", query={"type": str}, query_fields={"type": "filter_type"}),
    Route("GET", "/inventory/{hive}", "inventory", {"hive": "filter_hive"}, query={"type": str},
          query_fields={"type": "filter_type"}),
    Route("GET", "/hives/{hive}/status", "inventory", {"hive": "filter_hive"}, query={"type": str},
          query_fields={"type": "filter_type"}),
    Route("GET", "/hives", "list_hives"),
    Route("POST", "/hives", "add_hive", body="fields", body_required=True),
    Route("GET", "/hives/{hive}", "get_hive", {"hive": "hive_id"}),
    Route("DELETE", "/hives/{hive}", "remove_hive", {"hive": "hive_id"}),
    Route("GET", "/hives/{hive}/nodes", "list_nodes"),
    Route("POST", "/hives/{hive}/nodes", "run_node", body="fields", body_required=True),
    Route("DELETE", _N, "kill_node", _NAME, body="fields"),
    Route("POST", _N + "/start", "start_node", _NAME),
    Route("POST", _N + "/restart", "restart_node", _NAME),
    Route("DELETE", _N + "/instance", "remove_node_instance", _NAME),
    Route("GET", _N + "/status", "get_node_status", _NAME),
    Route("GET", _N + "/config", "get_node_config", _NAME),
    Route("PUT", _N + "/config", "set_node_config", _NAME, {"replace": bool, "notify": bool}, body="config",
          body_required=True),
    Route("GET", _N + "/state", "get_node_state", _NAME),
    Route("POST", _N + "/messages", "send_node_message", _NAME, body="fields"),
    Route("POST", _N + "/control/config-get", "node_control_config_get", _NAME, body="fields"),
    Route("POST", _N + "/control/config-set", "node_control_config_set", _NAME, body="fields"),
    Route("GET", "/routes", "list_routes", query={"hive": str}),
    Route("POST", "/routes", "add_route", query={"hive": str}, body="fields", body_required=True),
    Route("DELETE", "/routes", "delete_route", query={"hive": str, "prefix": str}),
    Route("GET", "/vpns", "list_vpns", query={"hive": str}),
    Route("POST", "/vpns", "add_vpn", query={"hive": str}, body="fields", body_required=True),
    Route("DELETE", "/vpns", "delete_vpn", query={"hive": str, "pattern": str}),
    Route("GET", "/hives/{hive}/routes", "list_routes"),
    Route("POST", "/hives/{hive}/routes", "add_route", body="fields", body_required=True),
    Route("DELETE", "/hives/{hive}/routes/{prefix}", "delete_route", {"prefix": "prefix"}),
    Route("GET", "/hives/{hive}/vpns", "list_vpns"),
    Route("POST", "/hives/{hive}/vpns", "add_vpn", body="fields", body_required=True),
    Route("DELETE", "/hives/{hive}/vpns/{pattern}", "delete_vpn", {"pattern": "pattern"}),
    Route("PUT", "/config/routes", "set_config_routes", body="fields"),
    Route("PUT", "/config/vpns", "set_config_vpns", body="fields"),
    Route("GET", "/versions", "list_versions", query={"hive": str}),
    Route("GET", "/hives/{hive}/versions", "get_versions"),
    Route("GET", "/hives/{hive}/runtimes", "list_runtimes"),
    Route("GET", "/hives/{hive}/runtimes/{runtime}", "get_runtime", {"runtime": "runtime"}),
    Route("DELETE", "/hives/{hive}/runtimes/{runtime}/versions/{version}", "remove_runtime_version",
          {"runtime": "runtime", "version": "runtime_version"}),
    Route("POST", "/hives/{hive}/sync-hint", "sync_hint", body="fields"),
    Route("POST", "/hives/{hive}/update", "update", body="fields", body_required=True),
    Route("GET", "/deployments", "list_deployments", query={"hive": str, **_HIST}),
    Route("GET", "/hives/{hive}/deployments", "get_deployments", query=_HIST),
    Route("GET", "/drift-alerts", "list_drift_alerts", query={"hive": str, **_HIST}),
    Route("GET", "/hives/{hive}/drift-alerts", "get_drift_alerts", query=_HIST),
    Route("GET", "/hives/{hive}/identity/ilks", "list_ilks", query={"limit": int, "cursor": str}),
    Route("GET", "/hives/{hive}/identity/ilks/{ilk_id}", "get_ilk", {"ilk_id": "ilk_id"}),
    Route("GET", "/modules", "list_modules"),
    Route("GET", "/modules/{name}", "get_module", {"name": "name"}),
    Route("GET", "/modules/{name}/{version}", "get_module_version", {"name": "name", "version": "version"}),
    Route("POST", "/modules/{name}/{version}", "publish_module", {"name": "name", "version": "version"},
          body="fields", body_required=True),
)
_OPA_WRITES = (("/opa/policy", "opa_compile_apply"), ("/opa/policy/compile", "opa_compile"),
               ("/opa/policy/apply", "opa_apply"), ("/opa/policy/rollback", "opa_rollback"))
ROUTES += tuple(Route("POST", path, action, body="fields", body_required=action != "opa_rollback")
                for path, action in _OPA_WRITES)
ROUTES += tuple(Route("POST", "/hives/{hive}" + path, action, {"hive": "hive"}, body="fields",
                      body_required=action != "opa_rollback") for path, action in _OPA_WRITES)
ROUTES += (
    Route("POST", "/opa/policy/check", "opa_check", query={"hive": str}, body="fields", body_required=True),
    Route("POST", "/hives/{hive}/opa/policy/check", "opa_check", body="fields", body_required=True),
    Route("GET", "/opa/policy", "opa_get_policy", query={"hive": str}),
    Route("GET", "/hives/{hive}/opa/policy", "opa_get_policy"),
    Route("GET", "/opa/status", "opa_get_status", query={"hive": str}),
    Route("GET", "/hives/{hive}/opa/status", "opa_get_status"),
    Route("GET", "/opa/decisions", "opa_get_decisions", query={"hive": str, "limit": int, "after": int}),
    Route("GET", "/hives/{hive}/opa/decisions", "opa_get_decisions", query={"limit": int, "after": int}),
)
HIVE_QUERY_SWITCH = {"list_versions": "get_versions", "list_deployments": "get_deployments",
                     "list_drift_alerts": "get_drift_alerts"}
"""Global history/versions routes become the hive-scoped action when ``?hive=`` is given (as upstream)."""


async def dispatch(ctx: Context, action_name: str, target: str | None, params: dict[str, Any],
                   call: Call) -> dict[str, Any]:
    """Run one action: validate params, resolve the target hive, call the handler — or, for a
    hive-scoped action aimed at another hive, relay it to that hive's admin API over the links."""
    action = ACTIONS.get(action_name)
    if action is None:
        raise AdminError("UNKNOWN_ACTION", f"unknown action {action_name!r}")
    if action.requires_target and not target:
        raise AdminError("INVALID_REQUEST", "missing target (payload.target required for this action)")
    target = _node_name_target(ctx, action_name, target, params, call)
    try:
        parsed = action.params.model_validate(params)
    except ValidationError as err:
        raise AdminError("INVALID_REQUEST", describe_validation(err)) from err
    if action.requires_target and target and target != ctx.backend.hive_id:
        return await relay_to(ctx, target, action_name, params)  # validated here, run there
    return await action.handler(ctx, target or ctx.backend.hive_id, parsed, call)


NODE_NAME_TARGETS = frozenset(("run_node", "kill_node", "start_node", "restart_node", "remove_node_instance",
                               "get_node_status", "get_node_config", "set_node_config", "get_node_state",
                               "send_node_message"))
"""Actions whose ``node_name@hive`` chooses the hive, over the path's (the original's precedence rule;
its ``control/config-*`` routes refuse a mismatch instead, and so do these for another hive's command)."""


def _node_name_target(ctx: Context, action: str, target: str | None, params: dict[str, Any],
                      call: Call) -> str | None:
    raw = params.get("node_name")
    if action not in NODE_NAME_TARGETS or not target or not isinstance(raw, str) or "@" not in raw:
        return target
    hive = raw.rpartition("@")[2]
    if hive == target or remote.is_remote(call.actor, ctx.backend.hive_id):
        return target  # a command from another hive stays on this hive: full_node_name refuses the mismatch
    if not HIVE_ID_RE.match(hive):
        raise AdminError("INVALID_HIVE_ID", f"node {raw!r} names hive {hive!r}, which must match "
                                            f"{HIVE_ID_RE.pattern}")
    log.info("%s: node %s names hive %s; the request is for that hive, not %s", action, raw, hive, target)
    return hive


def describe_validation(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(x) for x in item["loc"]) or "body"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
