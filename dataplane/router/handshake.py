"""The handshake: a connection's first frame must be a HELLO, and trust decides whether it registers.

Name and hive rules, claimed names and their proofs (:mod:`fluxbee.dataplane.router.trust`), the node
table's limits (the slots reserved for claimed names; per-uid and per-pid allowances for undeclared
names and for connections that have not said HELLO yet) and UUID takeovers (a newcomer replaces a
connected UUID unless the name is claimed and unproven, or two live processes keep taking it from each
other). A refused HELLO closes only that connection, with INVALID_HELLO saying why.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec

from fluxbee.dataplane import fastpath, wire
from fluxbee.dataplane.router import trust
from fluxbee.dataplane.router.config import split_name
from fluxbee.dataplane.router.connection import Conn, who
from fluxbee.models import validate_node_name

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

log = logging.getLogger(__name__)


def hello(router: Router, conn: Conn, body: bytes) -> None:
    end_pending(router, conn)
    try:
        msg = wire.decode_message(body)
    except wire.ProtocolError as err:
        router.counters.rejected[wire.HELLO_REQUIRED] += 1
        conn.fail(wire.HELLO_REQUIRED, f"first frame must be a HELLO: {err.detail}")
        return
    if msg.meta.type != wire.TYPE_SYSTEM or msg.meta.msg != wire.HELLO:
        router.counters.rejected[wire.HELLO_REQUIRED] += 1
        conn.fail(wire.HELLO_REQUIRED, f"first frame must be a HELLO, got {msg.meta.type}/{msg.meta.msg}")
        return
    reason = None
    proof: str | None = None
    try:
        hello = msgspec.convert(msg.payload, wire.HelloPayload)
        credential = msg.payload.get("credential") if isinstance(msg.payload, dict) else None
        if credential is not None:
            if not isinstance(credential, str):
                raise ValueError("payload.credential must be a string")
            # Hashed at once: the router keeps no token, only what claims files hold.
            proof = trust.token_sha256(credential[:4096])
        node_uuid = wire.canonical_uuid(hello.uuid)
        if wire.canonical_uuid(msg.routing.src) != node_uuid:
            reason = "payload.uuid differs from routing.src"
        name = hello.name if "@" in hello.name else f"{hello.name}@{router.hive_id}"
        base, hive = split_name(name)
        if hive != router.hive_id:
            reason = f"node name {name!r} names hive {hive!r}, but this router serves {router.hive_id!r}"
        validate_node_name(name)
        if base.startswith("RT."):
            reason = "RT.* names are reserved for routers"
    except (msgspec.ValidationError, ValueError) as err:
        reason = str(err)
    if reason is not None:
        router.counters.rejected[wire.INVALID_HELLO] += 1
        conn.fail(wire.INVALID_HELLO, reason)
        return
    verdict = router.claims.check(base, conn.cred, proof)
    if not verdict.ok:
        refuse_hello(router, conn, trust.NAME_CLAIMED, verdict.detail)
        return
    old = router.registry.get(node_uuid)
    if old is not None:
        taken = takeover_refusal(router, old, conn, proof)
        if taken is not None:
            refuse_hello(router, conn, trust.UUID_IN_USE, taken)
            return
    else:
        full = limit_refusal(router, conn, verdict.claimed)
        if full is not None:
            refuse_hello(router, conn, *full)
            return
    if old is not None:
        router.unregister(old)
        conn.takeover_times = old.takeover_times
        conn.replacements = old.replacements + 1
        conn.takeovers_refused = old.takeovers_refused
        old.fail(wire.REPLACED, "a new connection said HELLO with this node's UUID")
    conn.claimed = verdict.claimed
    conn.grants = verdict.grants
    conn.proof = proof
    if conn.hello_timer is not None:
        conn.hello_timer.cancel()
        conn.hello_timer = None
    conn.uuid = node_uuid
    conn.uuid_bytes = node_uuid.encode()
    conn.name = name
    conn.stamp = fastpath.make_stamp(name)
    conn.base = base
    conn.connected_at_ms = int(time.time() * 1000)
    router.register(conn)  # and into the VPN the route table gives its name
    conn.send(
        wire.system_frame(
            router.uuid, node_uuid, wire.ANNOUNCE,
            wire.AnnouncePayload(uuid=node_uuid, name=name, status="registered",
                                 vpn_id=conn.vpn_id, router_name=router.name),
            trace_id=msg.routing.trace_id, ttl=1,
        )
    )
    log.info("node %s (%s) registered, vpn %d", name, node_uuid, conn.vpn_id)



def admit_pending(router: Router, conn: Conn) -> bool:
    """Count a fresh connection against its uid's pre-HELLO allowance; close it if over."""
    cred = conn.cred
    if cred is None:
        return True
    if router.pending_by_uid[cred.uid] >= router.settings.max_pending_per_uid:
        router.counters.hello_refused[trust.PEER_LIMIT] += 1
        conn.fail(wire.INVALID_HELLO, f"{trust.PEER_LIMIT}: uid {cred.uid} has "
                                      f"{router.settings.max_pending_per_uid} connections waiting for HELLO")
        return False
    router.pending_by_uid[cred.uid] += 1
    conn.pending = True
    return True

def end_pending(router: Router, conn: Conn) -> None:
    if conn.pending and conn.cred is not None:
        conn.pending = False
        left = router.pending_by_uid[conn.cred.uid] - 1
        if left > 0:
            router.pending_by_uid[conn.cred.uid] = left
        else:
            del router.pending_by_uid[conn.cred.uid]

def refuse_hello(router: Router, conn: Conn, reason: str, detail: str) -> None:
    router.counters.hello_refused[reason] += 1
    conn.fail(wire.INVALID_HELLO, detail if detail.startswith(reason) else f"{reason}: {detail}")

def limit_refusal(router: Router, conn: Conn, claimed: bool) -> tuple[str, str] | None:
    """Why a new node may not take a table slot (None: it may)."""
    s = router.settings
    count = len(router.registry)
    if count >= s.max_nodes:
        router.counters.rejected["NODE_TABLE_FULL"] += 1
        return "NODE_TABLE_FULL", f"the router is full ({s.max_nodes} nodes)"
    if claimed:
        return None  # the reserve is theirs
    if count >= s.max_nodes - s.claimed_reserve:
        return trust.PEER_LIMIT, (f"the last {s.claimed_reserve} of {s.max_nodes} node slots are reserved "
                                  "for the hive's claimed names")
    cred = conn.cred
    if cred is not None:
        if router.unclaimed_by_uid[cred.uid] >= s.max_unclaimed_per_uid:
            return trust.PEER_LIMIT, f"uid {cred.uid} already has {s.max_unclaimed_per_uid} undeclared nodes"
        if router.unclaimed_by_pid[cred.pid] >= s.max_unclaimed_per_pid:
            return trust.PEER_LIMIT, f"pid {cred.pid} already has {s.max_unclaimed_per_pid} undeclared nodes"
    return None

def takeover_refusal(router: Router, old: Conn, new: Conn, proof: str | None) -> str | None:
    """Why ``new`` may not take ``old``'s UUID (None: it may, and the takeover is recorded).

    A UUID bound to a claimed name is only taken over by a connection that proves that claim.
    Two live processes with one UUID (two nodes sharing a UUID file; the original SDKs
    reconnect 500 ms after any close) would evict each other forever: after
    ``takeover_limit`` takeovers in ``takeover_window_s`` the incumbent keeps the UUID for as
    long as it stays connected.  A process taking over its own connection does not count.
    """
    s = router.settings
    if old.claimed and not router.claims.check(old.base, new.cred, proof).ok:
        old.takeovers_refused += 1
        router.counters.takeovers["refused"] += 1
        return (f"{old.uuid} belongs to {old.name} ({who(old)}), a claimed name this connection "
                "has not proven; the incumbent stays")
    if old.cred is not None and new.cred is not None and old.cred.pid == new.cred.pid:
        router.counters.takeovers["replaced"] += 1  # the same process again: not two processes fighting
        return None
    now = time.monotonic()
    recent = [t for t in old.takeover_times if now - t < s.takeover_window_s]
    old.takeover_times = recent
    if old.holds_uuid or len(recent) >= s.takeover_limit:
        old.takeovers_refused += 1
        router.counters.takeovers["refused"] += 1
        if not old.holds_uuid or _power_of_ten(old.takeovers_refused):
            log.warning("node %s (%s): two live processes use one UUID (%s now, %s before); after %d takeovers "
                        "in %.0f s the incumbent keeps it (%d refused so far)", old.name, old.uuid, who(new),
                        who(old), len(recent), s.takeover_window_s, old.takeovers_refused)
        old.holds_uuid = True
        return (f"{old.uuid} is in use by {old.name} ({who(old)}) and was taken over {len(recent)} times in "
                f"{s.takeover_window_s:g} s; the incumbent keeps it")
    recent.append(now)
    router.counters.takeovers["replaced"] += 1
    log.warning("node %s (%s) taken over: %s replaces %s (%d in %.0f s)", old.name, old.uuid, who(new),
                who(old), len(recent), s.takeover_window_s)
    return None

def tally(router: Router, conn: Conn, delta: int) -> None:
    """Per-uid and per-pid counts of registered unclaimed nodes (the limits of _limit_refusal)."""
    cred = conn.cred
    if conn.claimed or cred is None:
        return
    for tally, key in ((router.unclaimed_by_uid, cred.uid), (router.unclaimed_by_pid, cred.pid)):
        value = tally[key] + delta
        if value > 0:
            tally[key] = value
        else:
            tally.pop(key, None)


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
