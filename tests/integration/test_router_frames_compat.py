"""The exact JSON of every frame the router itself generates, read off a raw socket.

Nodes built with the original SDKs decode these frames; the original never puts
``routing.src_l2_name`` on a router-generated frame (its Go SDK documents the
field as empty there), so none of ours may carry it either: ``routing`` is
exactly ``{src: <router uuid>, dst: <node uuid>, ttl, trace_id}``.
"""

from __future__ import annotations

import uuid
from typing import Any

from hive_harness import RawPeer, RouterProc

from fluxbee.dataplane import wire


def _hello(peer: RawPeer, name: str) -> tuple[str, dict[str, Any]]:
    trace = str(uuid.uuid4())
    peer.send_raw(wire.system_frame(peer.uuid, None, wire.HELLO, wire.HelloPayload(uuid=peer.uuid, name=name),
                                    trace_id=trace, ttl=1))
    return trace, peer.recv()


def test_router_generated_frames_match_the_original_field_for_field(router: RouterProc,
                                                                     raw_peers: list[RawPeer]) -> None:
    rid = router.uuid
    peer = RawPeer(router.socket_path)
    raw_peers.append(peer)
    hello_trace, announce = _hello(peer, "WF.compat.frames")
    assert announce == {
        "routing": {"src": rid, "dst": peer.uuid, "ttl": 1, "trace_id": hello_trace},
        "meta": {"type": "system", "msg": "ANNOUNCE"},
        "payload": {"uuid": peer.uuid, "name": "WF.compat.frames@t", "status": "registered",
                    "vpn_id": announce["payload"]["vpn_id"], "router_name": announce["payload"]["router_name"]},
    }
    assert isinstance(announce["payload"]["vpn_id"], int)
    assert announce["payload"]["router_name"].startswith("RT.")

    trace = str(uuid.uuid4())
    peer.send({"routing": {"src": peer.uuid, "dst": "WF.nobody.here", "ttl": 16, "trace_id": trace},
               "meta": {"type": "user"}, "payload": {"x": 1}})
    unreachable = peer.recv()
    assert unreachable == {
        "routing": {"src": rid, "dst": peer.uuid, "ttl": 16, "trace_id": trace},
        "meta": {"type": "system", "msg": "UNREACHABLE"},
        "payload": {"original_dst": "WF.nobody.here", "reason": "NODE_NOT_FOUND",
                    "detail": unreachable["payload"]["detail"]},
    }
    assert isinstance(unreachable["payload"]["detail"], str)

    trace = str(uuid.uuid4())
    peer.send({"routing": {"src": peer.uuid, "dst": None, "ttl": 0, "trace_id": trace},
               "meta": {"type": "user"}, "payload": None})
    ttl_exceeded = peer.recv()
    assert ttl_exceeded == {
        "routing": {"src": rid, "dst": peer.uuid, "ttl": 16, "trace_id": trace},
        "meta": {"type": "system", "msg": "TTL_EXCEEDED"},
        "payload": {"original_dst": "null", "last_hop": f"router:{rid}"},
    }

    body = b"{not json"
    peer.send_raw(len(body).to_bytes(4, "big") + body)
    frames = peer.closed_by_peer()
    assert len(frames) == 1, frames
    error = frames[0]
    assert error == {
        "routing": {"src": rid, "dst": peer.uuid, "ttl": 1, "trace_id": error["routing"]["trace_id"]},
        "meta": {"type": "system", "msg": "PROTOCOL_ERROR"},
        "payload": {"reason": "MALFORMED_FRAME", "detail": error["payload"]["detail"]},
    }
    uuid.UUID(error["routing"]["trace_id"])
