"""The general path: decode a frame, ask :mod:`~fluxbee.dataplane.router.decide`, carry the decision out.

Every frame the fast path (:mod:`fluxbee.dataplane.router.fastroute`) does not take comes here, one at a
time, HELLO included. Only ``routing`` and the few meta fields the rules read are decoded; ``meta`` and
``payload`` stay raw bytes and are written out unchanged (see :mod:`fluxbee.dataplane.wire`). Carrying
out means encoding, queueing on the destination's connection (holding the producer when that takes the
destination past its high-water mark), counting, and answering the sender
(:mod:`~fluxbee.dataplane.router.answers`): UNREACHABLE, TTL_EXCEEDED, or the answer a refused
privileged message waits for (:func:`~fluxbee.dataplane.router.control.refuse_privileged`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import control, decide, handshake
from fluxbee.dataplane.router.answers import dst_text, reply, unreachable
from fluxbee.dataplane.router.connection import Conn
from fluxbee.dataplane.router.l3 import with_src_ilk
from fluxbee.dataplane.router.policy import Verdict
from fluxbee.dataplane.router.remote import RemoteNode

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

_decode_raw = wire.raw_decoder.decode
_decode_meta = wire.meta_decoder.decode


def on_frame(router: Router, conn: Conn, body: bytes) -> None:
    """One frame of ``conn`` through the general path (its HELLO, if it has not said one yet)."""
    if conn.uuid is None:
        router.counters.frames_in += 1
        handshake.hello(router, conn, body)
        return
    try:
        env = _decode_raw(body)
        meta = _decode_meta(env.meta)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        malformed(router, conn, err)
        return
    router.counters.frames_in += 1
    route_decoded(router, conn, env, meta)


def malformed(router: Router, conn: Conn, err: Exception) -> None:
    """Close a connection that sent a frame that is not an envelope, saying why."""
    router.counters.frames_in += 1
    router.counters.rejected[wire.MALFORMED_FRAME] += 1
    conn.fail(wire.MALFORMED_FRAME, str(err))


def route_decoded(router: Router, conn: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
    """Every routing decision for a decoded frame of a registered connection, in the order of ``decide``."""
    routing = env.routing
    stopped = decide.screen(conn, routing.src, meta.msg)
    if isinstance(stopped, decide.Forbidden):
        control.refuse_privileged(router, conn, env, stopped.msg)
        return
    if stopped is not None:
        refuse(router, conn, routing, stopped)
        return
    if meta.type == wire.TYPE_SYSTEM and meta.msg is not None and control.handle_system(router, conn, env, meta):
        return
    if decide.expired(routing.ttl) is not None:
        router.counters.ttl_exceeded += 1
        reply(router, conn, routing, wire.TTL_EXCEEDED,
              wire.TtlExceededPayload(original_dst=dst_text(routing.dst), last_hop=f"router:{router.uuid}"))
        return
    routing.src_l2_name = conn.name
    dst = routing.dst
    if dst is None:
        route_null(router, conn, env, meta)
        return
    if dst == wire.BROADCAST:
        broadcast(router, conn, env, meta)
        return
    if router.policy.guards_actions and isinstance(meta.action, str):
        verdict = policy_verdict(router, conn, env, meta)
        if verdict is None:
            return
        router.policy.record(verdict, "allowed", f"action {meta.action!r} allowed", dst)
    decision = decide.to_node(dst, router.registry, router.links)
    if isinstance(decision, decide.Refuse) and router.links is not None and wire.is_uuid(dst) \
            and router.links.by_uuid(conn, dst, env, meta):
        return  # a node another router serves (mesh peer or another hive)
    carry_out(router, conn, env, meta, decision)


def policy_verdict(router: Router, conn: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> Verdict | None:
    """The running policy's verdict on a message, or None once it was refused (answered, audited):
    no policy, an evaluation error (OPA_ERROR), or an action the allow rule does not allow."""
    routing = env.routing
    policy = router.policy
    verdict = policy.evaluate(routing.src, conn.name, bytes(env.meta))
    if verdict is None:
        unreachable(router, conn, routing, wire.OPA_ERROR, "no routing policy is loaded for dst=null")
        return None
    if verdict.error is not None:
        policy.record(verdict, wire.OPA_ERROR, verdict.error, None)
        unreachable(router, conn, routing, wire.OPA_ERROR, f"policy evaluation failed: {verdict.error}")
        return None
    if isinstance(meta.action, str) and verdict.allow is False:
        detail = f"the policy does not allow action {meta.action!r} from {conn.name}"
        policy.record(verdict, wire.POLICY_DENIED, detail, None)
        unreachable(router, conn, routing, wire.POLICY_DENIED, detail)
        return None
    return verdict


def route_null(router: Router, conn: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
    """``dst: null``: the identity pre-resolve (router/l3.py), then the policy's target (and its allow
    rule for an action). Decided here, once: the destination is stamped into ``routing.dst``, so the
    routers after this one route it without deciding again."""
    routing = env.routing
    l3_decision = router.l3.resolve(meta.src_ilk, meta.dst_ilk)  # identity pre-resolve
    if l3_decision is not None and l3_decision.canonical_src_ilk is not None:
        env.meta = with_src_ilk(env.meta, l3_decision.canonical_src_ilk)  # the policy too sees the canonical ILK
    resolved = l3_decision if l3_decision is not None and l3_decision.target is not None else None
    verdict = None
    if resolved is None or (router.policy.guards_actions and isinstance(meta.action, str)):
        verdict = policy_verdict(router, conn, env, meta)
        if verdict is None:
            return
    decision: decide.Deliver[Conn] | decide.Refuse | decide.Drop | decide.Forward
    if resolved is not None and resolved.target is not None:
        decision = decide.by_name(resolved.target, router.registry, router.links)
        if isinstance(decision, decide.Forward) and decision.dst is None:
            decision = decide.Forward(decision.hive, resolved.target)
    else:
        current = router.policy.current
        if verdict is None or current is None:  # policy_verdict answered unless a policy ran
            raise RuntimeError("bug: dst:null without an identity decision reached the policy step without a verdict")
        if verdict.target is None:
            detail = "the policy's target rule is undefined for this message"
            router.policy.record(verdict, wire.OPA_NO_TARGET, detail, None)
            unreachable(router, conn, routing, wire.OPA_NO_TARGET, detail)
            return
        decision = decide.policy_target(verdict.target, router.registry, router.links, current,
                                        router.policy.turns)
    if isinstance(decision, decide.Deliver) and decision.target.uuid is not None:
        routing.dst = decision.target.uuid  # decided once: later hops route the UUID
    if verdict is not None:
        if isinstance(decision, decide.Deliver):
            router.policy.record(verdict, "routed", "", decision.target.name)
        elif isinstance(decision, decide.Forward):
            router.policy.record(verdict, "routed", f"to hive {decision.hive}", decision.dst)
        elif isinstance(decision, decide.Refuse):
            result = wire.OPA_NO_TARGET if decision.reason == wire.OPA_NO_TARGET else "refused"
            router.policy.record(verdict, result, f"{decision.reason}: {decision.detail}", None)
        else:
            router.policy.record(verdict, "refused", decision.counter, None)
    carry_out(router, conn, env, meta, decision)


def carry_out(router: Router, src: Conn, env: wire.RawEnvelope, meta: wire.MetaView,
              decision: decide.Deliver[Conn] | decide.Refuse | decide.Drop | decide.Forward) -> None:
    """Carry out a unicast decision (a node reached through a link is forwarded there: :mod:`.links`)."""
    links = router.links
    if isinstance(decision, decide.Deliver):
        deliver(router, src, decision.target, env, meta)
    elif isinstance(decision, decide.Forward):
        if links is None:  # decide only forwards when links reach the hive
            unreachable(router, src, env.routing, wire.WAN_UNAVAILABLE, f"hive {decision.hive!r}: no links")
            return
        if decision.dst is not None:
            env.routing.dst = decision.dst
        links.to_hive(src, decision.hive, env)
    else:
        refuse(router, src, env.routing, decision)


def deliver(router: Router, src: Conn, dst: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
    """Queue the frame for ``dst`` if the VPN rule lets ``src`` reach it and its buffer has room (a node
    another router serves: forwarded there by :mod:`.links`; the fast path hands those here too)."""
    if router.links is not None and isinstance(dst, RemoteNode):
        router.links.deliver_remote(src, dst, env, meta)
        return
    if src.vpn_id != dst.vpn_id:
        decision = decide.unicast(src, dst, meta)
        if isinstance(decision, decide.Refuse):
            refuse(router, src, env.routing, decision)
            return
    try:
        frame = wire.encode_frame(env)
    except wire.FrameTooLargeError as err:
        unreachable(router, src, env.routing, wire.FRAME_TOO_LARGE, str(err))
        return
    if dst.send(frame):
        router.counters.delivered += 1
        if dst is not src and (dst.congested_since is not None or dst.out_bytes >= router.settings.high_water):
            src.block(dst)
    else:
        router.counters.dropped[wire.DST_CONGESTED] += 1
        unreachable(router, src, env.routing, wire.DST_CONGESTED, f"{dst.name} is not reading; message dropped")


def refuse(router: Router, src: Conn, routing: wire.Routing, decision: decide.Refuse | decide.Drop) -> None:
    """Count a refusal, and answer UNREACHABLE unless it is a silent drop."""
    counters = router.counters
    if isinstance(decision, decide.Drop):
        counters.dropped[decision.counter] += 1
        return
    if decision.dropped is not None:
        counters.dropped[decision.dropped] += 1
    if decision.rejected is not None:
        counters.rejected[decision.rejected] += 1
    unreachable(router, src, routing, decision.reason, decision.detail)


def broadcast(router: Router, src: Conn, env: wire.RawEnvelope, meta: wire.MetaView) -> None:
    """Fan a broadcast out to the nodes :func:`decide.fan_out` names, once per trace id in the window."""
    routing = env.routing
    seen = router.seen_broadcasts
    refused = decide.broadcast(routing.trace_id, seen)
    if refused is not None:
        refuse(router, src, routing, refused)
        return
    seen[routing.trace_id] = time.monotonic() + router.settings.dedupe_window_s
    try:
        frame = wire.encode_frame(env)
    except wire.FrameTooLargeError as err:
        unreachable(router, src, routing, wire.FRAME_TOO_LARGE, str(err))
        return
    counters = router.counters
    counters.broadcasts += 1
    for conn in decide.fan_out(src, router.registry.nodes(), meta):
        if conn.send(frame):
            counters.delivered += 1
        else:
            counters.dropped[wire.DST_CONGESTED] += 1
    if router.links is not None:
        router.links.broadcast(src, env)
