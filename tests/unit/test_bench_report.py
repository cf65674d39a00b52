"""The bench report: sections add JSON keys and report lines; the layout is table, ratios, notes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fluxbee.bench import run
from fluxbee.bench.report import Lines
from fluxbee.bench.results import Plan, Result
from fluxbee.bench.transports import TRANSPORTS, Transports, ratios


class _Fixed:
    """A section that measures nothing: returns what it was given."""

    def __init__(self, keys: dict[str, Any], lines: Lines) -> None:
        self.keys, self._lines = keys, lines

    async def measure(self, plan: Plan, tmp: Path) -> dict[str, Any]:
        assert tmp.is_dir()
        return self.keys

    def lines(self, result: dict[str, Any]) -> Lines:
        return self._lines


def test_sections_are_merged_in_order_and_their_lines_grouped_by_part() -> None:
    first = _Fixed({"a": 1}, Lines(table=("T1",), ratios=("R1",), notes=("N1",)))
    second = _Fixed({"b": 2}, Lines(ratios=("R2",), notes=("N2",)))
    result = asyncio.run(run.run_all(Plan(1, 1, 1, 1), (first, second)))
    assert result == {"a": 1, "b": 2}
    assert run.report(result, (first, second)).splitlines() == ["T1", "", "R1", "R2", "N1", "N2"]


def _transport_result() -> dict[str, Any]:
    figures = {"floor": 10.0, "relay": 20.0, "fluxbee": 25.0, "fluxbee_null": 27.5, "nats": 100.0}
    out: dict[str, Any] = {name: Result([figures[name]] * 5, 1000.0 * (2 if name == "fluxbee" else 1), {},
                                        [figures[name] * 2] * 5, 0.5).summary() for name in TRANSPORTS}
    out |= {"payload_bytes": 200, "router_fast_path": "c", "router_scheduling": "batch", "router_allocator": "tuned",
            "round_trips": 5, "messages": 30, "router_rss_mb_idle": 30.0, "router_rss_mb_1000_nodes": 45.5,
            "idle_nodes": 1000}
    out["ratios"] = ratios(out)
    return out


def test_the_transport_ratios_compare_the_routed_figures_with_the_floor_nats_and_the_relay() -> None:
    q = _transport_result()["ratios"]
    assert q["fluxbee_p50_over_floor_p50"] == 2.5 and q["fluxbee_p50_over_nats_p50"] == 0.25
    assert q["fluxbee_p50_over_relay_p50"] == 1.25 and q["relay_p50_over_floor_p50"] == 2.0
    assert q["fluxbee_msgs_over_nats_msgs"] == 2.0
    assert q["null_p50_over_fluxbee_p50"] == 1.1
    assert q["sustained_fluxbee_p50_over_floor_p50"] == 2.5 and q["sustained_fluxbee_p50_over_nats_p50"] == 0.25


_POLICY = {"identities": 10_000, "evaluations": 2_000,
           "wasm": {"p50_us": 18.0, "p99_us": 40.0, "abi": "1.3", "one_shot": True, "fast_calls": True,
                    "memory_mb": 15.0},
           "regorus": {"p50_us": 28.0, "p99_us": 60.0}, "load_ms": {"wasm": 300.0, "regorus": 80.0},
           "ratios": {"wasm_p50_over_regorus_p50": 0.64}, "compile_ms": {"opa": 120.0, "regorus": 2.0},
           "scan_p50_us": {"wasm": 9000.0},
           "cache_hit": {"lane": {"p50_us": 0.6, "p99_us": 1.1}, "general_cache_hit": {"p50_us": 0.25, "p99_us": 0.7},
                         "timer": {"p50_us": 0.09}, "metas": 2000, "senders": 50, "held_by_lane": 2000,
                         "engine": "wasm"}}


_CROSS = {"link": {"rtt_us": {"p50": 100.0, "p99": 170.0}, "msgs_per_s": 80_000},
          "link_poll": {"rtt_us": {"p50": 60.0, "p99": 400.0}, "msgs_per_s": 70_000},
          "nats2": {"rtt_us": {"p50": 220.0, "p99": 480.0}, "msgs_per_s": 140_000},
          "ratios": {"link_p50_over_nats2_p50": 0.45, "link_msgs_over_nats2_msgs": 0.57,
                     "link_poll_p50_over_nats2_p50": 0.27, "link_poll_msgs_over_nats2_msgs": 0.5},
          "busy_poll_us": 100,
          "link_failure": {"detect_s": 1.1, "reconverge_s": 0.6, "hello_s": 0.2, "dead_s": 1.0}}


def test_the_default_report_has_the_transport_table_then_the_targets_then_the_notes() -> None:
    lines = run.report({**_transport_result(), "policy": _POLICY, "cross_hive": _CROSS}).splitlines()
    assert lines[0].split() == ["transport", "p50", "µs", "p99", "µs", "msgs/s", "CPU", "moves/rtt"]
    assert [line.split()[0] for line in lines[1:6]] == list(TRANSPORTS)
    assert lines[6] == ""
    assert lines[7] == "routed p50 / floor p50   = 2.50   (target ≤ 3)"
    assert lines[12] == "router RSS: 30.0 MB idle, 45.5 MB with 1000 nodes   (target ≤ 100 MB)"
    assert lines[13].startswith("sustained (5 round trips back to back)")
    assert "policy decision, 10,000 identities" in lines[18]  # the policy section's notes come last
    assert lines[19].split()[:3] == ["wasm", "p50", "18.0"]
    assert "wasm p50 / regorus p50 = 0.64" in lines[21]
    assert lines[24].startswith("  cached dst:null decision, fast lane lookup as the router does it: p50 0.60 µs")
    assert lines[25].startswith("  the general path's cache hit (key tuple, dict lookup): p50 0.25 µs")
    assert lines[26] == ("  routed round trip in this run: explicit dst p50 25.0 µs, dst:null p50 27.5 µs, ratio 1.10 "
                         "(target ≤ 1.2); one-way 2,000 / 1,000 msgs/s")
    assert lines[28].startswith("cross-hive (hive A → WF.echo@B over the mTLS link")
    assert lines[31].split()[:2] == ["link_poll", "60.0"]
    assert lines[33] == "link p50 / NATS-pair p50 = 0.45   (target ≤ 0.5)"
    assert lines[35] == ("link_poll (routers with --busy-poll-us 100): p50 / NATS-pair p50 = 0.27, "
                         "msgs/s / NATS-pair = 0.50")
    assert len(lines) == 37
    assert isinstance(run.SECTIONS[0], Transports)


def test_the_memory_line_adds_the_linked_router_when_it_was_measured() -> None:
    result = {**_transport_result(), "router_rss_mb_links": 52.5, "policy": _POLICY, "cross_hive": _CROSS}
    assert run.report(result).splitlines()[12] == (
        "router RSS: 30.0 MB idle, 45.5 MB with 1000 nodes, 52.5 MB idle with a TLS link listener   (target ≤ 100 MB)")
