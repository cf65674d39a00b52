"""Label and annotation keys the operator puts on its children."""

from __future__ import annotations

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "fluxbee-operator"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"

HIVE = "fluxbee.io/hive"
FLUXNODE = "fluxbee.io/fluxnode"
REPLICA = "fluxbee.io/replica"

CONFIG_DIGEST = "fluxbee.io/config-digest"
SPEC_DIGEST = "fluxbee.io/spec-digest"

FINALIZER = "fluxbee.io/cleanup"


def common(component: str, instance: str) -> dict[str, str]:
    """Labels every child carries; selectors use a subset that never changes."""
    return {
        MANAGED_BY: OPERATOR,
        PART_OF: "fluxbee",
        NAME: f"fluxbee-{component}",
        INSTANCE: instance,
        COMPONENT: component,
    }
