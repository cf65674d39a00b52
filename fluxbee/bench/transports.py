"""The transports section: every peer measured in interleaved, rested rounds, and their ratios.

All the peers (:mod:`fluxbee.bench.peers`) run at once and are measured in interleaved rounds (a
few thousand round trips of each in turn; three one-way bursts of each in turn, median rate),
every batch after a rest, so every transport sees the same machine conditions.  Results are ratios
measured in one run, never absolute targets: the machines are shared and noisy.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from pathlib import Path
from typing import Any

from fluxbee.bench.harness import cpu_migrations, processes
from fluxbee.bench.peers import PAYLOAD_BYTES, FloorPeer, FluxbeeNullPeer, FluxbeePeer, NatsPeer, Peer, RelayPeer
from fluxbee.bench.report import Lines
from fluxbee.bench.results import Plan, Result

REST_S = 1.0
"""Idle time before each measured batch (see :func:`measure`)."""

TRANSPORTS = ("floor", "relay", "fluxbee", "fluxbee_null", "nats")


async def measure(plan: Plan, tmp: Path) -> dict[str, Result]:
    """Start every peer, then measure them in interleaved rounds, each batch after a rest.

    On a small VM a batch's latency depends on what ran just before it: the floor's round trip is
    several times slower straight after another busy batch than after a second of idleness (vCPU
    wake-up behaviour, not our code).  Each batch therefore starts after :data:`REST_S` of
    idleness, in the regime where the floor is fastest — the conservative one for our ratios —
    and the transports take turns, so none gets a quieter or busier machine than the others.

    Then, for the record, each transport once more with all its round trips back to back
    ("sustained"): on such a VM every transport slows down after some tens of milliseconds of
    continuous ping-pong, and the ratios there are much smaller.  The targets are read from the
    rested figures.
    """
    with processes() as procs:
        peers: list[Peer] = []
        try:
            peers.append(await FloorPeer.start(tmp, procs))
            peers.append(await RelayPeer.start(tmp, procs))
            fluxbee = await FluxbeePeer.start(tmp, procs)
            peers += [fluxbee, FluxbeeNullPeer(fluxbee)]
            peers.append(await NatsPeer.start(tmp, procs))
            for peer in peers:
                await peer.rtt(plan.warmup)
            samples: dict[str, list[float]] = {p.name: [] for p in peers}
            migrations = dict.fromkeys(samples, 0)
            rounds = max(1, plan.round_trips // 2_000)
            for index in range(rounds):
                share = plan.round_trips // rounds + (1 if index < plan.round_trips % rounds else 0)
                for peer in peers:
                    await asyncio.sleep(REST_S)
                    pids = [os.getpid(), *peer.pids]
                    moved = cpu_migrations(pids)
                    samples[peer.name] += await peer.rtt(share)
                    migrations[peer.name] += cpu_migrations(pids) - moved
            sustained: dict[str, list[float]] = {}
            for peer in peers:
                await asyncio.sleep(REST_S)
                sustained[peer.name] = await peer.rtt(plan.round_trips)
            rates: dict[str, list[float]] = {p.name: [] for p in peers}
            notes = {p.name: await p.describe() for p in peers}
            for _ in range(3):
                for peer in peers:
                    await asyncio.sleep(REST_S)
                    rates[peer.name].append(await peer.one_way(plan.messages // 3))
        finally:
            for peer in peers:
                await peer.close()
    return {name: Result(samples[name], statistics.median(rates[name]), notes.get(name, {}), sustained[name],
                         migrations[name] / len(samples[name]))
            for name in samples}


def ratios(out: dict[str, Any]) -> dict[str, float]:
    f50 = out["fluxbee"]["rtt_us"]["p50"]
    return {
        "fluxbee_p50_over_floor_p50": round(f50 / out["floor"]["rtt_us"]["p50"], 2),
        "fluxbee_p50_over_nats_p50": round(f50 / out["nats"]["rtt_us"]["p50"], 2),
        "fluxbee_p50_over_relay_p50": round(f50 / out["relay"]["rtt_us"]["p50"], 2),
        "null_p50_over_fluxbee_p50": round(out["fluxbee_null"]["rtt_us"]["p50"] / f50, 2),
        "relay_p50_over_floor_p50": round(out["relay"]["rtt_us"]["p50"] / out["floor"]["rtt_us"]["p50"], 2),
        "fluxbee_msgs_over_nats_msgs": round(out["fluxbee"]["msgs_per_s"] / out["nats"]["msgs_per_s"], 2),
        "sustained_fluxbee_p50_over_floor_p50": round(
            out["fluxbee"]["sustained_rtt_us"]["p50"] / out["floor"]["sustained_rtt_us"]["p50"], 2),
        "sustained_fluxbee_p50_over_nats_p50": round(
            out["fluxbee"]["sustained_rtt_us"]["p50"] / out["nats"]["sustained_rtt_us"]["p50"], 2),
    }


class Transports:
    """Round trips and one-way rates of every transport; the routed ones as ratios to the floor and NATS."""

    async def measure(self, plan: Plan, tmp: Path) -> dict[str, Any]:
        results = await measure(plan, tmp)
        router = results["fluxbee"].notes
        out: dict[str, Any] = {name: results[name].summary() for name in TRANSPORTS}
        out |= {
            "payload_bytes": PAYLOAD_BYTES,
            "router_fast_path": router.get("fast_path", "?"),
            "router_scheduling": router.get("scheduling", "?"),
            "router_allocator": router.get("allocator", "?"),
            "round_trips": plan.round_trips,
            "messages": plan.messages,
        }
        out["ratios"] = ratios(out)
        return out

    def lines(self, r: dict[str, Any]) -> Lines:
        table = [f"{'transport':12} {'p50 µs':>9} {'p99 µs':>9} {'msgs/s':>11} {'CPU moves/rtt':>14}"]
        for key in TRANSPORTS:
            v = r[key]
            table.append(f"{key:12} {v['rtt_us']['p50']:>9.1f} {v['rtt_us']['p99']:>9.1f} {v['msgs_per_s']:>11,} "
                         f"{v['cpu_migrations_per_rtt']:>14.2f}")
        q, sustained = r["ratios"], {key: r[key]["sustained_rtt_us"]["p50"] for key in TRANSPORTS}
        return Lines(table=tuple(table), ratios=(
            f"routed p50 / floor p50   = {q['fluxbee_p50_over_floor_p50']:.2f}   (target ≤ 3)",
            f"routed p50 / NATS p50    = {q['fluxbee_p50_over_nats_p50']:.2f}   (target ≤ 0.4)",
            f"routed msgs/s / NATS     = {q['fluxbee_msgs_over_nats_msgs']:.2f}   (target ≥ 2)",
            f"dst:null p50 / routed p50 = {q['null_p50_over_fluxbee_p50']:.2f}  (target ≤ 1.2; the policy decides, "
            "repeated messages are cache hits)",
            f"routed p50 / relay p50   = {q['fluxbee_p50_over_relay_p50']:.2f}   (for the record: relay = the same "
            f"four hops through a process that only copies bytes; relay/floor = {q['relay_p50_over_floor_p50']:.2f})",
        ), notes=(
            f"sustained ({r['round_trips']:,} round trips back to back): p50 floor "
            f"{sustained['floor']:.1f} µs, fluxbee {sustained['fluxbee']:.1f} µs, "
            f"NATS {sustained['nats']:.1f} µs; routed/floor = "
            f"{q['sustained_fluxbee_p50_over_floor_p50']:.2f}, routed/NATS = "
            f"{q['sustained_fluxbee_p50_over_nats_p50']:.2f} (for the record; targets use the rested rounds)",
            f"router fast path: {r['router_fast_path']}; scheduling class: {r['router_scheduling']}; "
            f"allocator: {r['router_allocator']}",
            f"({r['round_trips']:,} round trips each after warm-up, interleaved in rested rounds; one-way: median "
            f"of 3 bursts of {r['messages'] // 3:,} messages of {r['payload_bytes']} B)",
            "(CPU moves/rtt: how often the transport's processes changed CPU per round trip in the rested rounds; "
            "a hop within one CPU costs a context switch, a hop to another CPU a cross-CPU wake-up)",
        ))
