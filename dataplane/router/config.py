"""Hive routing configuration: static routes and VPN rules, and how names match them.

The router keeps one :class:`RouteTable` per config version.  Lookups are
cached per destination name, and the cache is thrown away with the table, so
the per-message cost is a dict hit: tables are rebuilt only when the config
changes, never per message.

Matching (ours, fixing the original's loose prefix rule):

* A pattern that contains ``@`` is matched against the full name
  (``AI.sales.l1@prod``); otherwise against the base name (``AI.sales.l1``).
* EXACT: equal.  PREFIX: ``AI.sales`` and ``AI.sales.*`` both match
  ``AI.sales`` itself and ``AI.sales.<more>`` — on a dot boundary, so
  ``AI.salesforce`` does not match.  GLOB: shell-style ``*``/``?``.
* Route precedence: more literal characters first, then EXACT > PREFIX >
  GLOB, then ``priority``, then ``metric``, then list order.  A matching DROP
  route wins over a connected node with that name (the original let the node
  win, so a DROP could not blackhole anything).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fluxbee.dataplane.names import RESERVED_PREFIXES
from fluxbee.models.routing import MatchKind, RouteSpec, VpnSpec

SYSTEM_PREFIXES = RESERVED_PREFIXES
ROUTE_CACHE_LIMIT = 65_536


class ConfigError(ValueError):
    """A hive config that cannot be applied; the previous config stays in force."""


class HiveConfigDoc(BaseModel):
    """The router's config file (a mounted ConfigMap in Kubernetes)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    hive_id: str | None = None
    router_name: str | None = None
    version: int = Field(default=0, ge=0)
    routes: list[RouteSpec] = Field(default_factory=list)
    vpns: list[VpnSpec] = Field(default_factory=list)


def _explain(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
    )


def parse_config(text: str, source: str = "<config>") -> HiveConfigDoc:
    """Parse YAML or JSON config text; raises :class:`ConfigError` naming the problem."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML/JSON: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return HiveConfigDoc.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_explain(err)}") from err


def load_config_file(path: Path) -> HiveConfigDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    return parse_config(text, str(path))


def parse_routes(value: Any) -> list[RouteSpec]:
    """Routes from a CONFIG_CHANGED payload: ``{routes: [...]}`` or a bare list."""
    items = value.get("routes") if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise ConfigError("routes: expected a list (or {routes: [...]})")
    try:
        return [RouteSpec.model_validate(item) for item in items]
    except ValidationError as err:
        raise ConfigError(f"routes: {_explain(err)}") from err


def parse_vpns(value: Any) -> list[VpnSpec]:
    items = value.get("vpns") if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise ConfigError("vpns: expected a list (or {vpns: [...]})")
    try:
        return [VpnSpec.model_validate(item) for item in items]
    except ValidationError as err:
        raise ConfigError(f"vpns: {_explain(err)}") from err


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled name pattern."""

    text: str
    kind: MatchKind
    full: bool  # match against the full name (pattern contains '@')
    literal: int  # literal characters, for specificity
    _stem: str
    _regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, text: str, kind: MatchKind) -> Pattern:
        full = "@" in text
        if kind is MatchKind.PREFIX:
            stem = text[:-2] if text.endswith(".*") else text.rstrip(".")
            return cls(text, kind, full, len(stem), stem, None)
        if kind is MatchKind.GLOB:
            regex = re.compile(fnmatch.translate(text))
            return cls(text, kind, full, sum(c not in "*?" for c in text), text, regex)
        return cls(text, kind, full, len(text), text, None)

    def matches(self, full_name: str, base_name: str) -> bool:
        name = full_name if self.full else base_name
        if self.kind is MatchKind.EXACT:
            return name == self._stem
        if self.kind is MatchKind.PREFIX:
            stem = self._stem
            return name == stem or (name.startswith(stem) and name[len(stem)] == ".")
        regex = self._regex
        return regex is not None and regex.match(name) is not None


_KIND_RANK = {MatchKind.EXACT: 0, MatchKind.PREFIX: 1, MatchKind.GLOB: 2}


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    spec: RouteSpec
    pattern: Pattern


@dataclass(frozen=True, slots=True)
class CompiledVpn:
    spec: VpnSpec
    pattern: Pattern


def split_name(name: str) -> tuple[str, str]:
    """``"AI.x@h"`` -> ``("AI.x", "h")``; the hive is the text after the *last* ``@``."""
    base, sep, hive = name.rpartition("@")
    return (base, hive) if sep else (name, "")


def is_system_name(name: str) -> bool:
    return name.startswith(SYSTEM_PREFIXES)


@dataclass(slots=True)
class RouteTable:
    """Routes and VPN rules of one config version, with a per-name decision cache."""

    version: int
    routes: tuple[CompiledRoute, ...]
    vpns: tuple[CompiledVpn, ...]
    route_specs: tuple[RouteSpec, ...] = ()
    vpn_specs: tuple[VpnSpec, ...] = ()
    _cache: dict[str, CompiledRoute | None] = field(default_factory=dict)

    @classmethod
    def build(cls, version: int, routes: Sequence[RouteSpec], vpns: Sequence[VpnSpec]) -> RouteTable:
        compiled = [
            (i, CompiledRoute(r, Pattern.compile(r.prefix, r.match_kind))) for i, r in enumerate(routes)
        ]
        compiled.sort(
            key=lambda item: (
                -item[1].pattern.literal,
                _KIND_RANK[item[1].pattern.kind],
                item[1].spec.priority,
                item[1].spec.metric,
                item[0],
            )
        )
        vpn_compiled = [
            (i, CompiledVpn(v, Pattern.compile(v.pattern, v.match_kind))) for i, v in enumerate(vpns)
        ]
        vpn_compiled.sort(key=lambda item: (item[1].spec.priority, item[0]))
        return cls(
            version=version,
            routes=tuple(c for _, c in compiled),
            vpns=tuple(c for _, c in vpn_compiled),
            route_specs=tuple(routes),
            vpn_specs=tuple(vpns),
        )

    def route_for(self, full_name: str) -> CompiledRoute | None:
        """The most specific route that decides ``full_name`` (DROP or FORWARD to a hive)."""
        try:
            return self._cache[full_name]
        except KeyError:
            pass
        base, _ = split_name(full_name)
        found: CompiledRoute | None = None
        for route in self.routes:
            if route.pattern.matches(full_name, base):
                found = route
                break
        if len(self._cache) >= ROUTE_CACHE_LIMIT:
            self._cache.clear()
        self._cache[full_name] = found
        return found

    def vpn_for(self, full_name: str) -> int:
        """VPN of a node: SY.* and RT.* are always 0; else the first matching rule's id."""
        if is_system_name(full_name):
            return 0
        base, _ = split_name(full_name)
        for rule in self.vpns:
            if rule.pattern.matches(full_name, base):
                return rule.spec.vpn_id
        return 0

    def to_json(self) -> bytes:
        """Canonical JSON of routes + VPNs (what the config shm region carries)."""
        doc = {
            "version": self.version,
            "routes": [r.model_dump(mode="json") for r in self.route_specs],
            "vpns": [v.model_dump(mode="json") for v in self.vpn_specs],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
