"""`fluxbee bench` runs end to end (tiny sizes: this checks the command, not the numbers)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluxbee.dataplane import alloc, fastpath


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
    assert result["router_allocator"] == (alloc.left_alone(os.environ) or "tuned")
    cross = result["cross_hive"]  # hive A to WF.echo@B over the link, against two routed NATS servers
    for key in ("link", "nats2"):
        assert 0 < cross[key]["rtt_us"]["p50"] <= cross[key]["rtt_us"]["p99"]
        assert cross[key]["msgs_per_s"] > 0
    assert set(cross["ratios"]) == {"link_p50_over_nats2_p50", "link_msgs_over_nats2_msgs"}
    failure = cross["link_failure"]
    assert failure["detect_s"] > 0 and failure["reconverge_s"] > 0 and failure["dead_s"] > failure["hello_s"]


def test_fluxbee_bench_refuses_bad_sizes() -> None:
    done = subprocess.run([sys.executable, "-m", "fluxbee", "bench", "--round-trips", "0"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "positive whole number" in done.stderr


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _bench_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("fluxbee-*")}


def _mapped_regions(pids: list[int]) -> set[str]:
    """The fluxbee segments these processes have mapped (read from /proc/<pid>/maps)."""
    names: set[str] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names.update(Path(word).name for line in maps.splitlines() for word in line.split()
                     if word.startswith("/dev/shm/fluxbee-"))
    return names


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_bench_stopped_by_a_signal_leaves_no_process_or_shared_memory(sig: signal.Signals) -> None:
    regions_before = _bench_regions()
    bench = subprocess.Popen([sys.executable, "-m", "fluxbee", "bench", "--round-trips", "1000000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        # The bench's own segments: those its processes map (other hives on the machine make theirs, so a
        # new segment in /dev/shm alone does not say the bench's router has made its own yet).
        while not (ours := _mapped_regions([bench.pid, *(children := _children(bench.pid))])) or len(children) < 4:
            assert bench.poll() is None and time.monotonic() < deadline, (
                "the bench did not start its peers, or its processes map no fluxbee segment")
            time.sleep(0.1)
        assert ours <= _bench_regions() - regions_before
        bench.send_signal(sig)
        _, stderr = bench.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert bench.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in stderr
        deadline = time.monotonic() + 20
        while any(_alive(c) for c in children) or _bench_regions() & ours:
            assert time.monotonic() < deadline, (
                f"left behind: {[c for c in children if _alive(c)]}, {_bench_regions() & ours}")
            time.sleep(0.1)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
