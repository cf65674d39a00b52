"""A node another router serves, as the router's rules see it (the link side: :mod:`.links`).

Kept apart from :mod:`.links` so that the general path can tell a remote node from a local connection
without importing the link machinery (TLS sessions, certificates, the link manager): a router with no
links configured never loads it, and never meets a :class:`RemoteNode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fluxbee.dataplane.router.config import is_system_name, split_name

if TYPE_CHECKING:
    from fluxbee.dataplane.link.protocol import NodeAd
    from fluxbee.dataplane.link.session import LinkSession

__all__ = ["RemoteNode"]


class RemoteNode:
    """A node reached through a link: the fields the rules read, and a ``send`` that forwards.

    ``transport`` is None, so the fast path steps aside for it (to the general path, which forwards).
    """

    __slots__ = ("base", "claimed", "closing", "connected_at_ms", "grants", "hive", "name", "out_bytes", "session",
                 "transport", "uuid", "vpn_id")

    def __init__(self, ad: NodeAd, session: LinkSession) -> None:
        self.uuid = ad.uuid
        self.name = ad.name
        self.base, self.hive = split_name(ad.name)
        self.vpn_id = ad.vpn_id
        self.session = session
        self.transport = None
        self.closing = False
        self.out_bytes = 0
        self.connected_at_ms = 0
        self.claimed = is_system_name(self.base) and self.base.startswith("SY.")
        self.grants: frozenset[str] = frozenset()

    @property
    def congested_since(self) -> float | None:
        return 0.0 if self.session.congested else None

    def send(self, frame: bytes) -> bool:
        """Frames the router generates for this node (answers): sent on the link it came over."""
        return self.session.send(frame)

    def block(self, dst: object) -> None:
        """Links do not hold producers: a full link drops (counted) instead."""
