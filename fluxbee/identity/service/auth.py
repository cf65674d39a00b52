"""Who may send SY.identity which action: the original's per-action allowlist, plus our own actions."""

from __future__ import annotations

from fluxbee.identity import model as m
from fluxbee.identity import sync


def matches_base(name: str, base: str) -> bool:
    """``name`` (``X@hive``) is ``base`` on any hive."""
    return name.split("@", 1)[0] == base


class Authorizer:
    """The per-action allowlist of the original (§2.2), plus our own actions."""

    def __init__(self, hive_id: str, frontdesk: str) -> None:
        self.hive_id = hive_id
        self.frontdesk = frontdesk.split("@", 1)[0]

    def _base(self, sender: str) -> str:
        base = sender.split("@", 1)[0]
        if base.startswith("SY.orchestrator.relay."):
            return "SY.orchestrator"
        return base

    def allowed(self, action: str, sender: str | None) -> bool:
        if not sender:
            return False
        base = self._base(sender)
        hive = sender.split("@", 1)[1] if "@" in sender else ""
        frontdesk = base in ("SY.frontdesk.gov", self.frontdesk)
        self_ = base == "SY.identity" and hive == self.hive_id
        orchestrator = base == "SY.orchestrator"
        admin = base == "SY.admin"
        if action == m.ILK_PROVISION:
            return base.startswith("IO.")
        if action == m.ILK_REGISTER:  # SY.admin: the node ILK it registers at spawn (it is the orchestrator here)
            return frontdesk or orchestrator or admin or self_
        if action == m.ILK_ADD_CHANNEL:
            return frontdesk
        if action == m.ILK_UPDATE:
            return orchestrator or self_
        if action == m.TNT_CREATE:
            return frontdesk or admin
        if action in (m.TNT_APPROVE, m.ILK_LIST, m.ILK_GET, m.MODULE_PUT, m.MODULE_LIST, m.MODULE_GET,
                      m.DEGREE_CREATE):
            return admin
        if action == m.ILK_GRADUATE:
            return admin or orchestrator
        if action == m.GRADUATION_GET:
            return base.startswith(("AI.", "SY."))
        if action == sync.SYNC_SUBSCRIBE:
            return base == "SY.identity" or base.startswith("SY.identity.")
        return action == m.IDENTITY_METRICS
