"""What a policy sees: the input built from a message and the system half of ``data`` (pure).

Input (:func:`build_input`)::

    {"meta": {...the message's meta: context, action, target, ...},
     "routing": {"src": <uuid>, "src_l2_name": <name@hive>},
     "src_ilk": <canonical ILK or null>}

System data (:func:`build_identity_data`), merged over the policy's own data when it is loaded::

    identity:          {ilk: {type, human_subtype, tenant, capabilities, roles, handler_node}}
    identity_aliases:  {old ilk: canonical ilk}      (chains followed to their end)
    by_capability:     {capability: [ilk, ...]}      (sorted, so [0] is stable)
    by_role:           {role: [ilk, ...]}

The indexes exist so that a rule answers "who holds capability X" with one lookup: a ``some``
scan over 10,000 identities costs milliseconds per message in either engine, the lookup a few
microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

ILK_TYPES: Final = ("human", "agent", "system")
HUMAN_SUBTYPES: Final = ("internal", "external")


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """One identity as the identity region publishes it.

    ``human_subtype`` is ``"internal"`` or ``"external"`` for humans whose subtype is known (empty
    for a human no one classified yet: a policy treats it as neither) and empty otherwise;
    ``handler_node`` may be empty (an identity no node handles).
    """

    ilk: str
    type: str
    tenant: str
    human_subtype: str = ""
    capabilities: tuple[str, ...] = field(default_factory=tuple)
    roles: tuple[str, ...] = field(default_factory=tuple)
    handler_node: str = ""


def _check(record: IdentityRecord) -> None:
    if not record.ilk:
        raise ValueError("identity record without an ILK")
    if record.type not in ILK_TYPES:
        raise ValueError(f"identity {record.ilk}: unknown type {record.type!r}; expected one of "
                         f"{', '.join(ILK_TYPES)}")
    if record.type == "human":
        if record.human_subtype and record.human_subtype not in HUMAN_SUBTYPES:
            raise ValueError(f"identity {record.ilk}: human subtype {record.human_subtype!r}; expected one of "
                             f"{', '.join(HUMAN_SUBTYPES)}")
    elif record.human_subtype:
        raise ValueError(f"identity {record.ilk}: a human subtype on a {record.type} identity")
    for kind, values in (("capability", record.capabilities), ("role", record.roles)):
        if any(not isinstance(v, str) or not v for v in values):
            raise ValueError(f"identity {record.ilk}: empty or non-string {kind} in {list(values)!r}")


def _resolve_aliases(aliases: Mapping[str, str]) -> dict[str, str]:
    """Follow every alias chain to its end; a cycle has no canonical ILK and is refused."""
    resolved: dict[str, str] = {}
    for old in aliases:
        seen = [old]
        current = aliases[old]
        while current in aliases:
            if current in seen:
                raise ValueError(f"alias cycle: {' -> '.join([*seen, current])}")
            seen.append(current)
            current = aliases[current]
        resolved[old] = current
    return resolved


def build_identity_data(identities: Iterable[IdentityRecord],
                        aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The system half of a policy's ``data`` from the identity records and aliases.

    Raises ``ValueError`` (naming the ILK) for a duplicate ILK, an unknown type, a human without a
    valid subtype, a subtype on a non-human, an empty capability or role, or an alias cycle. Lists
    are sorted and de-duplicated so the same records always give the same document.
    """
    identity: dict[str, dict[str, Any]] = {}
    by_capability: dict[str, list[str]] = {}
    by_role: dict[str, list[str]] = {}
    for record in identities:
        _check(record)
        if record.ilk in identity:
            raise ValueError(f"identity {record.ilk} appears twice")
        caps = sorted(set(record.capabilities))
        roles = sorted(set(record.roles))
        identity[record.ilk] = {
            "type": record.type,
            "human_subtype": record.human_subtype,
            "tenant": record.tenant,
            "capabilities": caps,
            "roles": roles,
            "handler_node": record.handler_node,
        }
        for cap in caps:
            by_capability.setdefault(cap, []).append(record.ilk)
        for role in roles:
            by_role.setdefault(role, []).append(record.ilk)
    for index in (by_capability, by_role):
        for holders in index.values():
            holders.sort()
    return {
        "identity": identity,
        "identity_aliases": _resolve_aliases(aliases or {}),
        "by_capability": by_capability,
        "by_role": by_role,
    }


def build_input(meta: Mapping[str, Any], *, src: str, src_l2_name: str, src_ilk: str | None) -> dict[str, Any]:
    """The input document for one message (``meta`` as the message carries it)."""
    return {"meta": dict(meta), "routing": {"src": src, "src_l2_name": src_l2_name}, "src_ilk": src_ilk}
