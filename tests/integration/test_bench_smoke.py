"""`fluxbee bench` runs end to end (tiny sizes: this checks the command, not the numbers)."""

from __future__ import annotations

import json
import subprocess
import sys

from fluxbee.dataplane import fastpath


def test_fluxbee_bench_json_reports_every_transport_and_the_router_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fluxbee", "bench", "--json", "--round-trips", "300", "--messages", "3000",
         "--idle-nodes", "50"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for key in ("floor", "relay", "fluxbee", "nats"):
        assert result[key]["rtt_us"]["samples"] == 300
        assert result[key]["cpu_migrations_per_rtt"] >= 0
        assert 0 < result[key]["rtt_us"]["p50"] <= result[key]["rtt_us"]["p99"]
        assert result[key]["msgs_per_s"] > 0
        assert result[key]["sustained_rtt_us"]["samples"] == 300
    assert 0 < result["router_rss_mb_1000_nodes"] < 500
    assert set(result["ratios"]) == {"fluxbee_p50_over_floor_p50", "fluxbee_p50_over_nats_p50",
                                     "fluxbee_p50_over_relay_p50", "relay_p50_over_floor_p50",
                                     "fluxbee_msgs_over_nats_msgs", "sustained_fluxbee_p50_over_floor_p50",
                                     "sustained_fluxbee_p50_over_nats_p50"}
    assert result["router_fast_path"] == fastpath.IMPLEMENTATION  # the router said which one it runs
    assert result["router_scheduling"] in ("batch", "normal")  # batch unless the platform refused it


def test_fluxbee_bench_refuses_bad_sizes() -> None:
    done = subprocess.run([sys.executable, "-m", "fluxbee", "bench", "--round-trips", "0"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "positive whole number" in done.stderr
