"""``fluxbee bench``'s policy section: one routing decision, WebAssembly against regorus, 10,000 identities.

The policy is the seed's pair of rules (a message naming a capability goes to the first agent
holding it, looked up in ``data.by_capability``; ``system_status`` only from internal humans),
compiled by ``opa build -t wasm`` when ``opa`` is here (``$FLUXBEE_OPA`` or ``PATH``), and evaluated
by both engines on the same varied inputs in interleaved rounds, so both see the same machine
conditions. Reported: p50/p99 of one decision per engine and their ratio, the compile time (opa
and regorus), the load time (data parsed once), and, for the record, what a rule that scans every
identity instead of using the index costs per decision. Without ``opa`` only regorus is measured,
and the reason is reported.

The cost of a cached decision is measured on a router's own policy runtime (not started: no socket),
with the 10,000 identities in an identity region as SY.identity writes it: the ``dst: null`` fast
lane's lookup (:meth:`NullLane.lookup <fluxbee.dataplane.router.nullroute.NullLane.lookup>`, what the
router does per message once a decision is cached, the identity region's version check for a meta
with an ILK included) and, for comparison, the general path's cache hit
(:meth:`PolicyRuntime.evaluate`). The report also repeats the transports section's explicit and
``dst: null`` round trips and one-way rates, measured in the same run.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec

from fluxbee.bench.distribution import format_distribution, measure_distribution
from fluxbee.bench.report import Lines
from fluxbee.bench.results import Plan
from fluxbee.dataplane.policy import (
    Artefact,
    CompileError,
    IdentityRecord,
    OpaNotFound,
    build_identity_data,
    build_input,
    compile_policy,
    find_opa,
    load,
)
from fluxbee.dataplane.policy.wasm import FAST_PATH_REASON, WasmEngine
from fluxbee.dataplane.router import policy as router_policy
from fluxbee.dataplane.router.server import Router, RouterSettings

IDENTITIES = 10_000
CAPABILITIES = 2_000
ROUNDS = 10

POLICY = """package router

default allow := false

allow if input.meta.action != "system_status"

allow if {
	input.meta.action == "system_status"
	ident := data.identity[input.src_ilk]
	ident.type == "human"
	ident.human_subtype == "internal"
}

target := agents[0] if {
	cap := input.meta.context.required_capability
	agents := [ilk | some ilk in data.by_capability[cap]; data.identity[ilk].type == "agent"]
}
"""

# The same decision written as a scan over every identity: what the indexes save.
SCAN_POLICY = """package router

target := min(agents) if {
	cap := input.meta.context.required_capability
	agents := {ilk | some ilk, ident in data.identity; ident.type == "agent"; cap in ident.capabilities}
	count(agents) > 0
}
"""


def identities(count: int = IDENTITIES) -> list[IdentityRecord]:
    """Half agents with two capabilities each, a quarter humans (one in two internal), a quarter system."""
    out: list[IdentityRecord] = []
    for i in range(count):
        ilk = f"ilk:{i:08d}-0000-4000-8000-000000000000"
        if i % 2 == 0:
            caps = (f"cap.{i % CAPABILITIES:04d}", f"cap.{(i * 7 + 3) % CAPABILITIES:04d}")
            out.append(IdentityRecord(ilk=ilk, type="agent", tenant=f"tnt:{i % 5}", capabilities=caps,
                                      handler_node=f"AI.agent{i}@hive0"))
        elif i % 4 == 1:
            out.append(IdentityRecord(ilk=ilk, type="human", tenant=f"tnt:{i % 5}",
                                      human_subtype="internal" if i % 8 == 1 else "external"))
        else:
            out.append(IdentityRecord(ilk=ilk, type="system", tenant="tnt:0"))
    return out


def inputs(records: list[IdentityRecord], count: int, seed: int = 15) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        meta: dict[str, Any] = {"context": {"required_capability": f"cap.{rng.randrange(CAPABILITIES):04d}"},
                                "action": rng.choice(["system_status", "chat", "ticket.open"])}
        out.append(build_input(meta, src=f"{rng.getrandbits(128):032x}", src_l2_name="IO.wa@hive0",
                               src_ilk=rng.choice(records).ilk))
    return out


def _pct(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {"p50_us": round(_pct(ordered, 50), 2), "p99_us": round(_pct(ordered, 99), 2), "samples": len(ordered)}


def _time_ms(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls in ms, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1), result


def _measure(engines: dict[str, Any], docs: list[dict[str, Any]], evaluations: int) -> dict[str, list[float]]:
    """Per-decision times, engines interleaved round by round over the same inputs."""
    samples: dict[str, list[float]] = {name: [] for name in engines}
    per_round = max(1, evaluations // ROUNDS)
    clock = time.perf_counter_ns
    for engine in engines.values():  # warm-up
        for doc in docs[:200]:
            engine.evaluate(doc)
    for r in range(ROUNDS):
        chunk = [docs[(r * per_round + i) % len(docs)] for i in range(per_round)]
        for name, engine in engines.items():
            out = samples[name]
            evaluate = engine.evaluate
            for doc in chunk:
                start = clock()
                evaluate(doc)
                out.append((clock() - start) / 1000)
    return samples


DISTRIBUTION_RUNS = 7
LANE_SENDERS = 50
LANE_METAS = 2_000
HIVE = "hive0"


def _metas(records: list[IdentityRecord], count: int, seed: int = 16) -> list[bytes]:
    """Meta bytes as nodes send them with ``dst: null``: a source ILK, a capability, an action."""
    rng = random.Random(seed)
    senders = [r.ilk for r in records if r.type == "human"]
    return [msgspec.json.encode({"type": "user", "src_ilk": rng.choice(senders), "action": "chat",
                                 "context": {"required_capability": f"cap.{rng.randrange(CAPABILITIES):04d}"}})
            for _ in range(count)]


def bench_cache_hit(artefact: Artefact, engine: Any, data: dict[str, Any], records: list[IdentityRecord],
                    samples: int, tmp: Path) -> dict[str, Any]:
    """A cached ``dst: null`` decision on a router's policy runtime (see the module docstring)."""
    from fluxbee.dataplane.fastpath import make_stamp
    from fluxbee.dataplane.shm.identity import Capacity, IdentityRegionWriter

    run_dir = tmp / "policy-lane"
    run_dir.mkdir(parents=True, exist_ok=True)
    tenant = f"tnt:{uuid.UUID(int=1)}"
    writer = IdentityRegionWriter(HIVE, capacity=Capacity.for_ilks(len(records)), run_dir=run_dir)
    router: Router | None = None
    try:
        with writer.batch():
            for r in records:
                writer.put_ilk(r.ilk, tenant_id=tenant, ilk_type=r.type, registration_status="complete",
                               handler_node=r.handler_node or "", human_subtype=r.human_subtype or "",
                               capabilities=r.capabilities)
        router = Router(RouterSettings(hive_id=HIVE, run_dir=run_dir), router_uuid=str(uuid.uuid4()))
        policy = router.policy
        handlers = {r.ilk: r.handler_node for r in records if r.handler_node}
        policy.install(router_policy.Loaded(1, artefact.sha256, artefact, engine, router.l3.identity_version(),
                                            handlers, {}))
        conns: list[Any] = []  # what the lane reads of a connection
        for i in range(LANE_SENDERS):
            node = str(uuid.UUID(int=i + 1))
            name = f"IO.web{i}@{HIVE}"
            conns.append(SimpleNamespace(uuid=node, uuid_bytes=node.encode(), name=name, stamp=make_stamp(name)))
        pairs: list[tuple[Any, bytes]] = []
        for i, meta in enumerate(_metas(records, LANE_METAS)):
            conn = conns[i % len(conns)]
            policy.evaluate(conn.uuid, conn.name, meta)  # the first message: the general path evaluates
            if policy.lane.lookup(conn, meta) is not None:  # the second: the lane learns it
                pairs.append((conn, meta))
        if not pairs:
            raise RuntimeError("the fast lane took none of the bench's decisions")
        lookup, evaluate, clock = policy.lane.lookup, policy.evaluate, time.perf_counter_ns
        lane, general, timer = [], [], []
        for i in range(samples):
            conn, meta = pairs[i % len(pairs)]
            t0 = clock()
            lookup(conn, meta)
            t1 = clock()
            evaluate(conn.uuid, conn.name, meta)
            t2 = clock()
            clock()
            t3 = clock()
            lane.append((t1 - t0) / 1000)
            general.append((t2 - t1) / 1000)
            timer.append((t3 - t2) / 1000)
        return {"lane": _summary(lane), "general_cache_hit": _summary(general), "timer": _summary(timer),
                "metas": LANE_METAS, "senders": LANE_SENDERS, "held_by_lane": len(pairs),
                "identity_region": list(router.l3.identity_version())}
    finally:
        if router is not None:
            router.l3.close()
        writer.close()


def bench_policy(evaluations: int, tmp: Path | None = None) -> dict[str, Any]:
    """The policy section's figures (``evaluations`` decisions per engine)."""
    records = identities()
    data = build_identity_data(records)
    docs = inputs(records, 2_000)
    result: dict[str, Any] = {"identities": len(records), "evaluations": evaluations}
    regorus_ms, _ = _time_ms(lambda: compile_policy(POLICY, use_opa=False))
    result["compile_ms"] = {"regorus": regorus_ms}
    opa: str | None = None
    try:
        opa = find_opa()
        result["compile_ms"]["opa"], artefact = _time_ms(lambda: compile_policy(POLICY, opa=opa))
        result["compiler"] = artefact.compiler
    except (OpaNotFound, CompileError) as err:
        opa = None
        result["wasm_unavailable"] = str(err)
        artefact = compile_policy(POLICY, use_opa=False)
    engines: dict[str, Any] = {}
    load_ms: dict[str, float] = {}
    if artefact.wasm is not None:
        load_ms["wasm"], engines["wasm"] = _time_ms(lambda: load(artefact, data), repeat=1)
    load_ms["regorus"], engines["regorus"] = _time_ms(lambda: load(artefact, data, engine="regorus"), repeat=1)
    result["load_ms"] = load_ms
    for name, samples in _measure(engines, docs, evaluations).items():
        result[name] = _summary(samples)
    wasm = engines.get("wasm")
    if isinstance(wasm, WasmEngine):
        result["wasm"].update(abi=f"{wasm.abi[0]}.{wasm.abi[1]}", one_shot=wasm.one_shot,
                              fast_calls=wasm.fast_calls or f"no: {FAST_PATH_REASON}",
                              memory_mb=round(wasm._instance.size / 2**20, 1))
        result["ratios"] = {"wasm_p50_over_regorus_p50": round(result["wasm"]["p50_us"] / result["regorus"]["p50_us"],
                                                                 2)}
    if tmp is not None:
        name = "wasm" if "wasm" in engines else "regorus"
        result["cache_hit"] = bench_cache_hit(artefact, engines[name], data, records, evaluations, tmp)
        result["cache_hit"]["engine"] = name
    scan: Artefact = compile_policy(SCAN_POLICY, opa=opa, use_opa=opa is not None)
    scan_engines = {name: load(scan, data, engine=name) for name in engines}  # type: ignore[arg-type]
    scan_samples = _measure(scan_engines, docs[:20], 20)  # a scan costs milliseconds: a few samples say it
    result["scan_p50_us"] = {name: round(statistics.median(s), 1) for name, s in scan_samples.items()}
    return result


def format_policy(r: dict[str, Any]) -> list[str]:
    rows = ["", f"policy decision, {r['identities']:,} identities, {r['evaluations']:,} evaluations per engine "
                f"(interleaved rounds):"]
    for name in ("wasm", "regorus"):
        if name in r:
            extra = (f"   (ABI {r['wasm']['abi']}, one-shot {r['wasm']['one_shot']}, raw calls "
                     f"{r['wasm']['fast_calls']}, memory {r['wasm']['memory_mb']} MB)") if name == "wasm" else ""
            rows.append(f"  {name:8} p50 {r[name]['p50_us']:>7.1f} µs   p99 {r[name]['p99_us']:>7.1f} µs"
                        f"   load {r['load_ms'][name]:>6.1f} ms{extra}")
    if "ratios" in r:
        rows.append(f"  wasm p50 / regorus p50 = {r['ratios']['wasm_p50_over_regorus_p50']:.2f}"
                    f"   (WebAssembly target: p50 ≤ 50 µs)")
    else:
        rows.append(f"  WebAssembly not measured: {r['wasm_unavailable']}")
    compile_ms = r["compile_ms"]
    opa_ms = f"{compile_ms['opa']:.1f} ms" if "opa" in compile_ms else "not measured"
    rows.append(f"  compile (median of 3): opa build -t wasm {opa_ms}, regorus parse {compile_ms['regorus']:.1f} ms")
    rows.append("  for the record, the same rule scanning every identity instead of the index: "
                + ", ".join(f"{k} p50 {v:,.0f} µs" for k, v in r["scan_p50_us"].items()))
    hit = r.get("cache_hit")
    if hit is not None:
        lane, general = hit["lane"], hit["general_cache_hit"]
        rows.append(f"  cached dst:null decision, fast lane lookup as the router does it: p50 {lane['p50_us']:.2f} µs"
                    f"   p99 {lane['p99_us']:.2f} µs   (target ≤ 1 µs; timer overhead p50 "
                    f"{hit['timer']['p50_us']:.2f} µs included)")
        rows.append(f"  the general path's cache hit (key tuple, dict lookup): p50 {general['p50_us']:.2f} µs"
                    f"   p99 {general['p99_us']:.2f} µs   ({hit['held_by_lane']:,} of {hit['metas']:,}"
                    f" metas with a src_ilk from {hit['senders']} senders held by the lane; {hit['engine']} verdicts)")
    return rows


def format_routed(r: dict[str, Any]) -> list[str]:
    """The transports section's explicit and dst:null figures, repeated next to the policy figures."""
    if "fluxbee" not in r or "fluxbee_null" not in r:
        return []
    f, n = r["fluxbee"], r["fluxbee_null"]
    return [f"  routed round trip in this run: explicit dst p50 {f['rtt_us']['p50']:.1f} µs, dst:null p50 "
            f"{n['rtt_us']['p50']:.1f} µs, ratio {n['rtt_us']['p50'] / f['rtt_us']['p50']:.2f} (target ≤ 1.2); "
            f"one-way {f['msgs_per_s']:,} / {n['msgs_per_s']:,} msgs/s"]


class PolicyDecisions:
    """The policy section: one decision by each engine over 10,000 identities (:func:`bench_policy`)."""

    async def measure(self, plan: Plan, tmp: Path) -> dict[str, Any]:
        # Blocking calls in-process: the bench runs one section at a time, nothing else is on the loop.
        result = bench_policy(plan.round_trips, tmp)
        try:
            result["distribution"] = measure_distribution(tmp, DISTRIBUTION_RUNS)
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            result["distribution"] = {"error": f"{type(err).__name__}: {err}"}
        return {"policy": result}

    def lines(self, r: dict[str, Any]) -> Lines:
        dist = r["policy"].get("distribution")
        rows = [] if dist is None else [f"  compile and distribute not measured: {dist['error']}"] if "error" in dist \
            else format_distribution(dist)
        return Lines(notes=tuple(format_policy(r["policy"]) + rows + format_routed(r)))
