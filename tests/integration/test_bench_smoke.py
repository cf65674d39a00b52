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

REPO = Path(__file__).resolve().parents[2]


def _opa_env() -> dict[str, str]:
    """The environment with the pinned opa (built with Go if missing), so the bench measures the
    WebAssembly engine; without Go, without any opa (the bench then measures regorus alone)."""
    env = {k: v for k, v in os.environ.items() if k != "FLUXBEE_OPA"}
    proc = subprocess.run(["bash", str(REPO / "hack" / "build-tools.sh"), "--opa"], capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode == 3:
        print(f"no opa for the bench's WebAssembly figures: {proc.stderr.strip()}")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not (Path(p) / "opa").exists())
        return env
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**env, "FLUXBEE_OPA": proc.stdout.strip().splitlines()[-1]}


def test_fluxbee_bench_json_reports_every_transport_and_the_router_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fluxbee", "bench", "--json", "--round-trips", "300", "--messages", "3000",
         "--idle-nodes", "50"], capture_output=True, text=True, timeout=240, env=(env := _opa_env()))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    policy = result["policy"]
    engines = ("wasm", "regorus") if "FLUXBEE_OPA" in env else ("regorus",)
    assert policy["identities"] == 10_000 and policy["compile_ms"]["regorus"] > 0
    for engine in engines:
        assert policy[engine]["samples"] == 300
        assert 0 < policy[engine]["p50_us"] <= policy[engine]["p99_us"]
        assert policy["load_ms"][engine] > 0 and policy["scan_p50_us"][engine] > 0
    if "wasm" in engines:
        assert policy["compiler"].startswith("opa ") and policy["compile_ms"]["opa"] > 0
        assert policy["wasm"]["abi"].startswith("1.") and policy["wasm"]["one_shot"] is True
        assert policy["ratios"]["wasm_p50_over_regorus_p50"] > 0
    else:
        assert "opa is not on PATH" in policy["wasm_unavailable"] and "wasm" not in policy
    hit = policy["cache_hit"]  # a cached dst:null decision on a router's runtime, the lane's lookup
    assert hit["lane"]["samples"] == 300 and 0 < hit["lane"]["p50_us"] <= hit["lane"]["p99_us"]
    assert hit["held_by_lane"] == hit["metas"] > 0 and hit["engine"] == engines[0]
    dist = policy["distribution"]  # three fluxbee up hives: compile and distribute to every router
    assert "error" not in dist, dist
    assert dist["routers"] == 3 and dist["runs"] == 7 and 0 < dist["wall_s"]["p50"] <= dist["wall_s"]["max"]
    assert dist["compiler"].startswith("opa ") if "wasm" in engines else dist["compiler"] == "regorus"
    for key in ("floor", "relay", "fluxbee", "fluxbee_null", "nats"):
        assert result[key]["rtt_us"]["samples"] == 300
        assert result[key]["cpu_migrations_per_rtt"] >= 0
        assert 0 < result[key]["rtt_us"]["p50"] <= result[key]["rtt_us"]["p99"]
        assert result[key]["msgs_per_s"] > 0
        assert result[key]["sustained_rtt_us"]["samples"] == 300
    assert 0 < result["router_rss_mb_1000_nodes"] < 500
    assert 0 < result["router_rss_mb_links"] < 500  # an idle router with a TLS WAN listener
    assert set(result["ratios"]) == {"fluxbee_p50_over_floor_p50", "fluxbee_p50_over_nats_p50",
                                     "fluxbee_p50_over_relay_p50", "relay_p50_over_floor_p50",
                                     "null_p50_over_fluxbee_p50",
                                     "fluxbee_msgs_over_nats_msgs", "sustained_fluxbee_p50_over_floor_p50",
                                     "sustained_fluxbee_p50_over_nats_p50"}
    assert result["router_fast_path"] == fastpath.IMPLEMENTATION  # the router said which one it runs
    assert result["router_scheduling"] in ("batch", "normal")  # batch unless the platform refused it
    assert result["router_allocator"] == (alloc.left_alone(os.environ) or "tuned")
    cross = result["cross_hive"]  # hive A to WF.echo@B over the link, against two routed NATS servers
    for key in ("link", "link_poll", "nats2"):  # link_poll: the same link, routers with --busy-poll-us
        assert 0 < cross[key]["rtt_us"]["p50"] <= cross[key]["rtt_us"]["p99"]
        assert cross[key]["msgs_per_s"] > 0
    assert set(cross["ratios"]) == {"link_p50_over_nats2_p50", "link_msgs_over_nats2_msgs",
                                    "link_poll_p50_over_nats2_p50", "link_poll_msgs_over_nats2_msgs"}
    assert cross["busy_poll_us"] > 0
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
    bench = subprocess.Popen([sys.executable, "-m", "fluxbee", "bench", "--round-trips", "1000000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The bench's own segments are those its processes map: other hives on a shared machine make theirs
        # at any moment, so a new name in /dev/shm says nothing about the bench.
        deadline = time.monotonic() + 60
        while True:
            children = _children(bench.pid)
            ours = _mapped_regions([bench.pid, *children])
            if ours and len(children) >= 4:
                break
            assert bench.poll() is None and time.monotonic() < deadline, "the bench did not start its peers"
            time.sleep(0.1)
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
        bench.communicate(timeout=60)  # reaps it and closes its pipes (no ResourceWarning in a later test)
