"""Static routes and VPN rules: the part of the resource models the router itself reads.

A ``Hive``'s ``spec.routes`` and ``spec.vpns`` are these models, and so are the router's config file
and the routes and VPNs a CONFIG_CHANGED carries.  They live apart from the other resources so that a
router loads pydantic and these few classes only, not every resource model, YAML loader and status
schema (about 2 MB of its resident memory, measured on a router started with no config).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from fluxbee.dataplane.names import HIVE_ID_RE

__all__ = ["MatchKind", "RouteAction", "RouteSpec", "VpnSpec"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class MatchKind(StrEnum):
    EXACT = "EXACT"
    PREFIX = "PREFIX"
    GLOB = "GLOB"


class RouteAction(StrEnum):
    FORWARD = "FORWARD"
    DROP = "DROP"


class RouteSpec(_Model):
    """A static route: names matching ``prefix`` are forwarded to a hive or dropped."""

    prefix: str = Field(
        min_length=1, max_length=256, description="Name, prefix (`AI.sales.*`) or glob."
    )
    match_kind: MatchKind = Field(default=MatchKind.PREFIX, description="How `prefix` is matched.")
    action: RouteAction = Field(default=RouteAction.FORWARD, description="FORWARD or DROP.")
    next_hop_hive: str | None = Field(
        default=None,
        description="Hive to forward to (FORWARD only).",
        json_schema_extra={"pattern": HIVE_ID_RE.pattern},
    )
    metric: int = Field(default=0, ge=0, description="Lower wins among equally specific routes.")
    priority: int = Field(
        default=100, ge=0, description="Lower wins among equally specific routes."
    )

    @field_validator("next_hop_hive")
    @classmethod
    def _hive(cls, value: str | None) -> str | None:
        if value is not None and not HIVE_ID_RE.match(value):
            raise ValueError(f"next_hop_hive {value!r} is not a hive id")
        return value


class VpnSpec(_Model):
    """A VPN rule: nodes whose name matches ``pattern`` join VPN ``vpn_id``."""

    pattern: str = Field(min_length=1, max_length=256, description="Name pattern.")
    match_kind: MatchKind = Field(default=MatchKind.PREFIX, description="How `pattern` is matched.")
    vpn_id: int = Field(ge=0, le=2**31 - 1, description="VPN number; 0 is the default VPN.")
    priority: int = Field(default=100, ge=0, description="Rules are tried by ascending priority.")
