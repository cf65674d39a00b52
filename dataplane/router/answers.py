"""What the router itself says to a node: answers to its requests and UNREACHABLE / TTL_EXCEEDED replies.

Router-generated frames never carry ``src_l2_name``, as in the original; their ``routing.src`` is the
router's UUID and their ``trace_id`` the one of the frame they answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fluxbee.dataplane import wire
from fluxbee.dataplane.router.connection import Conn

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

log = logging.getLogger(__name__)


def reply(router: Router, conn: Conn, routing: wire.Routing, msg: str, payload: Any) -> None:
    """Answer ``conn``; an answer that outgrows a frame becomes UNREACHABLE ``FRAME_TOO_LARGE``.

    Without the fallback the error would escape ``data_received`` and asyncio would drop the
    asker's connection (and everything it had in flight) over a reply it never saw.
    """
    try:
        frame = wire.system_frame(router.uuid, conn.uuid, msg, payload, trace_id=routing.trace_id)
    except wire.FrameTooLargeError as err:
        log.error("%s to %s does not fit in a frame: %s", msg, conn.name, err)
        unreachable(router, conn, routing, wire.FRAME_TOO_LARGE,
                    f"the {msg} answer does not fit in a frame: {err.detail}")
        return
    conn.send(frame)


def unreachable(router: Router, conn: Conn, routing: wire.Routing, reason: str, detail: str) -> None:
    router.counters.unreachable[reason] += 1
    reply(router, conn, routing, wire.UNREACHABLE,
          wire.UnreachablePayload(original_dst=dst_text(routing.dst), reason=reason, detail=detail))


def dst_text(dst: str | None) -> str:
    return "null" if dst is None else dst
