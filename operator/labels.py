"""Label and annotation keys the operator puts on its children."""

from __future__ import annotations

from fluxbee.dataplane import names

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "fluxbee-operator"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"

HIVE = names.LABEL_HIVE
FLUXNODE = names.LABEL_FLUXNODE
REPLICA = names.LABEL_REPLICA
POLICY = names.LABEL_POLICY

CONFIG_DIGEST = names.ANNOTATION_CONFIG_DIGEST
SPEC_DIGEST = names.ANNOTATION_SPEC_DIGEST

FINALIZER = names.FINALIZER


def common(component: str, instance: str) -> dict[str, str]:
    """Labels every child carries; selectors use a subset that never changes."""
    return {
        MANAGED_BY: OPERATOR,
        PART_OF: "fluxbee",
        NAME: f"fluxbee-{component}",
        INSTANCE: instance,
        COMPONENT: component,
    }
