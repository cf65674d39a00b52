"""``fluxbee bench``'s policy section: one routing decision, WebAssembly against regorus, 10,000 identities.

The policy is the seed's pair of rules (a message naming a capability goes to the first agent
holding it, looked up in ``data.by_capability``; ``system_status`` only from internal humans),
compiled by ``opa build -t wasm`` when ``opa`` is here (``$FLUXBEE_OPA`` or ``PATH``), and evaluated
by both engines on the same varied inputs in interleaved rounds, so both see the same machine
conditions. Reported: p50/p99 of one decision per engine and their ratio, the compile time (opa
and regorus), the load time (data parsed once), and, for the record, what a rule that scans every
identity instead of using the index costs per decision. Without ``opa`` only regorus is measured,
and the reason is reported.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

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


def bench_policy(evaluations: int) -> dict[str, Any]:
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
    return rows
