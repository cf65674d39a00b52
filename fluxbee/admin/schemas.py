"""Request parameters of the admin actions (pydantic: strict types, unknown fields refused).

One model per action describes its full ``params`` (what ``ADMIN_COMMAND`` carries); the HTTP layer
fills some fields from the path and the query string and takes the rest from the JSON body, and the
OpenAPI document shows the body as the model minus those fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fluxbee.dataplane.names import HIVE_ID_PATTERN, MODULE_NAME_PATTERN, MODULE_VERSION_PATTERN

MatchKindName = Literal["PREFIX", "EXACT", "GLOB"]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(Params):
    pass


class ActionHelpParams(Params):
    action_name: str = Field(min_length=1, max_length=128, description="Action to describe.")


class HistoryParams(Params):
    limit: int = Field(default=50, ge=1, le=500, description="Newest entries to return (1..500).")
    category: str | None = Field(default=None, max_length=64, description="Only this category.")
    severity: Literal["info", "warning", "critical"] | None = Field(default=None, description="Drift only.")
    kind: str | None = Field(default=None, max_length=64, description="Drift only: this kind.")


class AddHiveParams(Params):
    hive_id: str = Field(min_length=1, max_length=64,
                         description=f"New hive id: the rule the router and the Hive CRD apply, `{HIVE_ID_PATTERN}`.")
    address: str = Field(min_length=1, max_length=253, description="IP address or DNS name of the worker.")
    harden_ssh: bool = False
    restrict_ssh: bool | None = None
    require_dist_sync: bool = False
    dist_sync_probe_timeout_secs: int = Field(default=45, ge=5, le=600)


class HiveIdParams(Params):
    hive_id: str = Field(min_length=1, max_length=253)


class SpawnNodeParams(Params):
    node_name: str = Field(min_length=1, max_length=256, description="`TYPE.f2…fN[@hive]`.")
    runtime: str = Field(min_length=1, max_length=128, description="Runtime name in the hive's store.")
    runtime_version: str = Field(default="current", min_length=1, max_length=64,
                                 description="A published version or `current`.")
    tenant_id: str | None = Field(default=None, max_length=64, pattern=r"^tnt:[0-9a-fA-F-]{36}$",
                                  description="Tenant `tnt:<uuid>`.")
    config: dict[str, Any] = Field(default_factory=dict, description="Overrides of the template (no `_system`).")


class InventoryParams(Params):
    scope: Literal["global", "hive", "summary"] = Field(
        default="global", description="`global`: every hive with its nodes; `hive`: one hive (`filter_hive`); "
                                      "`summary`: counts per hive, kind and status.")
    filter_hive: str | None = Field(default=None, min_length=1, max_length=64,
                                    description="Only this hive (`?hive=`; makes the scope `hive`).")
    filter_type: str | None = Field(default=None, min_length=1, max_length=16,
                                    description="Only nodes of this kind: AI, IO, WF, SY, RT or UNKNOWN "
                                                "(`?type=`, upper-cased).")


class NodeParams(Params):
    node_name: str = Field(min_length=1, max_length=256)


class KillNodeParams(Params):
    node_name: str = Field(min_length=1, max_length=256)
    force: bool = Field(default=False, description="SIGKILL instead of `signal`.")
    signal: Literal["SIGTERM", "SIGINT", "SIGKILL"] = "SIGTERM"
    purge_instance: bool = Field(default=False, description="Also delete the node's config and state files.")


class SetNodeConfigParams(Params):
    node_name: str = Field(min_length=1, max_length=256)
    config: dict[str, Any] = Field(description="Top-level keys to set (shallow merge), never `_system`.")
    replace: bool = Field(default=False, description="Replace every key but `_system`.")
    notify: bool = Field(default=True, description="Tell the node with CONFIG_CHANGED (node_config).")


class SendMessageParams(Params):
    node_name: str = Field(min_length=1, max_length=256)
    msg_type: str = Field(default="user", min_length=1, max_length=32)
    msg: str | None = Field(default=None, max_length=128)
    payload: Any = Field(default_factory=dict)
    src_ilk: str | None = Field(default=None, max_length=64)
    scope: str | None = Field(default=None, max_length=64)
    meta_target: str | None = Field(default=None, max_length=256)
    meta_action: str | None = Field(default=None, max_length=128)
    priority: str | None = Field(default=None, max_length=32)
    context: dict[str, Any] | None = None
    ttl: int = Field(default=16, ge=1, le=255)


class NodeControlParams(Params):
    """CONFIG_GET/CONFIG_SET to a node: the body is forwarded (``ttl``/``src_ilk``/``scope``/``context`` go to meta)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    node_name: str = Field(min_length=1, max_length=256)
    ttl: int = Field(default=16, ge=1, le=255)
    src_ilk: str | None = Field(default=None, max_length=64)
    scope: str | None = Field(default=None, max_length=64)
    context: dict[str, Any] | None = None
    timeout_ms: int = Field(default=5000, ge=100, le=30000, description="How long to wait for CONFIG_RESPONSE.")


class RouteBody(Params):
    prefix: str = Field(min_length=1, max_length=256)
    action: Literal["FORWARD", "DROP"]
    match_kind: MatchKindName = "PREFIX"
    next_hop_hive: str | None = Field(default=None, max_length=64)
    metric: int = Field(default=0, ge=0, le=2**31 - 1)
    priority: int = Field(default=100, ge=0, le=2**31 - 1)


class VpnBody(Params):
    pattern: str = Field(min_length=1, max_length=256)
    vpn_id: int = Field(ge=0, le=2**31 - 1)
    match_kind: MatchKindName = "PREFIX"
    priority: int = Field(default=100, ge=0, le=2**31 - 1)


class DeleteRouteParams(Params):
    prefix: str = Field(min_length=1, max_length=256)


class DeleteVpnParams(Params):
    pattern: str = Field(min_length=1, max_length=256)


class ConfigRoutesParams(Params):
    routes: list[RouteBody] | None = Field(default=None, max_length=1024)
    vpns: list[VpnBody] | None = Field(default=None, max_length=1024)
    version: int | None = Field(default=None, ge=1, le=2**53, description="Must exceed the applied version.")


class ConfigVpnsParams(Params):
    vpns: list[VpnBody] | None = Field(default=None, max_length=1024)
    version: int | None = Field(default=None, ge=1, le=2**53)


class RuntimeParams(Params):
    runtime: str = Field(min_length=1, max_length=128)


class IlkListParams(Params):
    limit: int | None = Field(default=None, ge=1, le=1000,
                              description="One page of at most this many ILKs (fewer if they would not fit "
                                          "in one frame); without `limit` and `cursor`, every ILK.")
    cursor: str | None = Field(default=None, min_length=1, max_length=128,
                               description="`next_cursor` of the previous page.")


class IlkParams(Params):
    ilk_id: str = Field(min_length=1, max_length=64, description="`ilk:<uuid>` (an alias resolves to its ILK).")


_MODULE_TOKEN = MODULE_NAME_PATTERN


class ModuleParams(Params):
    name: str = Field(pattern=_MODULE_TOKEN, description="Module name.")


class ModuleVersionParams(Params):
    name: str = Field(pattern=_MODULE_TOKEN, description="Module name.")
    version: str = Field(pattern=MODULE_VERSION_PATTERN, description="Module version.")


class ModulePutParams(Params):
    name: str = Field(pattern=_MODULE_TOKEN, description="Module name.")
    version: str = Field(pattern=MODULE_VERSION_PATTERN, description="Module version.")
    prompt_text: str = Field(min_length=1, max_length=262144, description="The prompt fragment (UTF-8).")
    description: str = Field(default="", max_length=1024)
    category: str = Field(default="", max_length=32)


class SyncHintParams(Params):
    channel: Literal["blob", "dist"] = Field(default="blob", description="What to wait for: `dist` (runtime "
                                                                         "packages) or `blob`.")
    folder_id: str | None = Field(default=None, min_length=1, max_length=64,
                                  description="`fluxbee-dist` or `fluxbee-blob`; must match `channel`.")
    wait_for_idle: bool = Field(default=True, description="Wait until nothing is left to copy.")
    timeout_ms: int = Field(default=30000, ge=1, le=300000, description="How long to wait (1..300000 ms).")


class UpdateParams(Params):
    category: Literal["runtime", "core", "vendor"] = Field(default="runtime",
                                                           description="Only `runtime` is applied here.")
    manifest_hash: str = Field(min_length=1, max_length=128,
                               description="sha256 hex of the runtime manifest the caller published.")
    manifest_version: int = Field(default=0, ge=0, description="The manifest's `version`; 0 skips the check.")
    runtime: str | None = Field(default=None, min_length=1, max_length=128,
                                description="Check only this runtime (category runtime).")
    runtime_version: str | None = Field(default=None, min_length=1, max_length=64,
                                        description="Check only this version of `runtime` (default its current).")


class RuntimeVersionParams(Params):
    runtime: str = Field(min_length=1, max_length=128, description="Runtime name in the hive's store.")
    runtime_version: str = Field(min_length=1, max_length=64,
                                 description="The version to delete (not `current`: name it).")
