"""Types of a local hive plan: what processes to keep running."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process to keep running."""

    key: str
    """Unique id: ``router`` or ``<node name@hive>#<replica>``."""
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    node_name: str | None = None
    config: dict[str, Any] | None = field(default=None, compare=False)
    digest: str = ""
    """Changes when the process must be restarted to pick up a change."""


@dataclass(frozen=True, slots=True)
class HivePlan:
    hive_id: str
    router_config: dict[str, Any]
    router: ProcessSpec
    nodes: tuple[ProcessSpec, ...]
    role: str = "motherbee"
    """The Hive's role, written to ``hive.yaml`` for nodes built with the original SDKs."""

    @property
    def node_names(self) -> set[str]:
        return {p.node_name for p in self.nodes if p.node_name}
