"""Both engines, with the real ``opa`` compiler: the seed's rules, agreement on a generated corpus,
evaluation errors, and what a loaded WebAssembly engine keeps (data once, a small memory)."""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

import pytest
from policy_corpus import POLICIES, generate_inputs

from fluxbee.dataplane.policy import (
    Artefact,
    Decision,
    EvaluationError,
    PolicyLoadError,
    compile_policy,
    load,
)
from fluxbee.dataplane.policy.wasm import FAST_PATH_REASON, WasmEngine

pytestmark = pytest.mark.integration


def _seed() -> int:
    value = os.environ.get("FLUXBEE_TEST_SEED")
    seed = int(value) if value else random.SystemRandom().randrange(2**32)
    print(f"policy corpus seed: {seed} (set FLUXBEE_TEST_SEED to replay)")
    return seed


def outcome(engine: Any, doc: dict[str, Any]) -> tuple[str, Any, Any]:
    try:
        decision: Decision = engine.evaluate(doc)
    except EvaluationError as err:
        return ("error", err.code, None)
    return ("decision", decision.target, decision.allow)


@pytest.fixture(scope="module")
def artefacts(opa: str) -> dict[str, Artefact]:
    return {name: compile_policy(source, opa=opa) for name, source in POLICIES.items()}


def message(**meta: Any) -> dict[str, Any]:
    src_ilk = meta.pop("src_ilk", None)
    return {"meta": meta, "routing": {"src": "6f1c", "src_l2_name": "IO.wa@hive0"}, "src_ilk": src_ilk}


def test_opa_compiles_the_seed_policy_to_a_module_with_both_entry_points(artefacts: dict[str, Artefact]) -> None:
    artefact = artefacts["seed"]
    assert artefact.engine == "wasm" and artefact.wasm is not None and artefact.wasm.startswith(b"\0asm")
    assert artefact.entrypoints == ("router/target", "router/allow")
    assert artefact.compiler.startswith("opa 1.")
    artefact.verify()


def test_a_policy_without_allow_is_compiled_with_the_target_entry_point_only(opa: str,
                                                                            hive_data: dict[str, Any]) -> None:
    artefact = compile_policy('package router\n\ntarget := "AI.support.l1@*"\n', opa=opa)
    assert artefact.allow_entrypoint is None
    for engine in ("wasm", "regorus"):
        decision = load(artefact, hive_data, engine=engine).evaluate(message(action="system_status"))
        assert decision == Decision(target="AI.support.l1@*", allow=None, engine=engine)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["wasm", "regorus"])
def test_a_capability_request_targets_the_agent_holding_it_among_10000_identities(
        engine: str, artefacts: dict[str, Artefact], hive_data: dict[str, Any]) -> None:
    policy = load(artefacts["seed"], hive_data, engine=engine)  # type: ignore[arg-type]
    assert policy.name == engine
    checked = 0
    for cap in ["cap.0000", "cap.0777", "cap.1999"]:
        holders = [i for i in hive_data["by_capability"][cap] if hive_data["identity"][i]["type"] == "agent"]
        decision = policy.evaluate(message(context={"required_capability": cap}))
        assert decision.target == holders[0]
        assert cap in hive_data["identity"][decision.target]["capabilities"]
        checked += 1
    assert policy.evaluate(message(context={"required_capability": "cap.nobody"})).target is None
    assert policy.evaluate(message(context={})).target is None
    assert checked == 3


@pytest.mark.parametrize("engine", ["wasm", "regorus"])
def test_system_status_is_allowed_only_from_internal_humans(engine: str, artefacts: dict[str, Artefact],
                                                            hive_data: dict[str, Any]) -> None:
    policy = load(artefacts["seed"], hive_data, engine=engine)  # type: ignore[arg-type]
    by_kind: dict[tuple[str, str], str] = {}
    for ilk, ident in hive_data["identity"].items():
        by_kind.setdefault((ident["type"], ident["human_subtype"]), ilk)
    assert set(by_kind) == {("agent", ""), ("system", ""), ("human", "internal"), ("human", "external")}
    for (kind, subtype), ilk in by_kind.items():
        allowed = policy.evaluate(message(action="system_status", src_ilk=ilk)).allow
        assert allowed is (kind == "human" and subtype == "internal"), (kind, subtype)
        assert policy.evaluate(message(action="chat", src_ilk=ilk)).allow is True
    assert policy.evaluate(message(action="system_status", src_ilk="ilk:unknown")).allow is False
    assert policy.evaluate(message(action="system_status")).allow is False


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_both_engines_agree_on_a_generated_corpus(name: str, artefacts: dict[str, Artefact],
                                                  hive_data: dict[str, Any]) -> None:
    seed = _seed()
    inputs = generate_inputs(random.Random(seed), hive_data, 400)
    wasm = load(artefacts[name], hive_data)
    rego = load(artefacts[name], hive_data, engine="regorus")
    assert (wasm.name, rego.name) == ("wasm", "regorus")
    kinds: Counter[str] = Counter()
    for doc in inputs:
        got = outcome(wasm, doc)
        assert got == outcome(rego, doc), f"engines disagree (seed {seed}) on {doc}"
        kinds[got[0] if got[0] == "error" else ("target" if got[1] is not None else "no target")] += 1
    # The corpus must reach the interesting outcomes, or agreement would prove little.
    expected = {"seed": {"target", "no target"}, "roles": {"target", "no target"},
                "errors": {"target", "no target", "error"}, "builtins": {"target", "no target", "error"}}[name]
    assert expected <= set(kinds), f"seed {seed}: corpus reached only {dict(kinds)}"


def test_the_pre_1_2_evaluation_calls_and_the_public_call_path_agree_with_the_fast_one_shot(
        artefacts: dict[str, Artefact], hive_data: dict[str, Any]) -> None:
    seed = _seed()
    inputs = generate_inputs(random.Random(seed), hive_data, 150)
    artefact = artefacts["roles"]
    fast = WasmEngine(artefact, hive_data)
    assert fast.one_shot and fast.abi >= (1, 2)
    assert fast.fast_calls is (FAST_PATH_REASON is None)
    context = WasmEngine(artefact, hive_data, use_context_calls=True)
    public = WasmEngine(artefact, hive_data, force_slow_calls=True)
    assert not context.one_shot and not public.fast_calls
    for doc in inputs:
        expected = outcome(fast, doc)
        assert outcome(context, doc) == expected, f"seed {seed}: {doc}"
        assert outcome(public, doc) == expected, f"seed {seed}: {doc}"


@pytest.mark.parametrize("engine", ["wasm", "regorus"])
def test_a_policy_that_errors_at_evaluation_answers_opa_error_with_the_detail(
        engine: str, artefacts: dict[str, Artefact]) -> None:
    policy = load(artefacts["errors"], {}, engine=engine)  # type: ignore[arg-type]
    with pytest.raises(EvaluationError) as conflict:
        policy.evaluate(message(context={"priority": "high", "vip": True}))
    assert conflict.value.code == "OPA_ERROR" and conflict.value.engine == engine
    assert "policy.rego:5" in conflict.value.detail  # the second rule of the conflicting pair
    with pytest.raises(EvaluationError, match="target must be a string, the policy produced a number"):
        policy.evaluate(message(context={"count_target": True, "items": [1, 2]}))
    with pytest.raises(EvaluationError, match="allow must be a boolean, the policy produced a string"):
        policy.evaluate(message(context={"level": "x"}))
    # The engine is still good for the next message after each error.
    assert policy.evaluate(message(context={"priority": "high"})).target == "AI.urgent@*"


def test_after_many_evaluation_errors_the_webassembly_engine_still_decides_with_its_data(
        opa: str, hive_data: dict[str, Any]) -> None:
    source = ('package router\n\ntarget := "AI.urgent@*" if input.meta.context.priority == "high"\n\n'
              'target := "AI.vip@*" if input.meta.context.vip == true\n\n'
              'target := data.by_capability[input.meta.context.cap][0] if input.meta.context.cap\n')
    policy = WasmEngine(compile_policy(source, opa=opa), hive_data)
    for i in range(100):
        with pytest.raises(EvaluationError, match="conflict"):
            policy.evaluate(message(context={"priority": "high", "vip": True}))
        assert policy.evaluate(message(context={"vip": True})).target == "AI.vip@*"
        cap = f"cap.{i % 2000:04d}"
        assert policy.evaluate(message(context={"cap": cap})).target == hive_data["by_capability"][cap][0]
    assert policy.recoveries == 100


def test_data_is_parsed_once_and_every_evaluation_rewinds_to_the_heap_after_it(
        artefacts: dict[str, Artefact], hive_data: dict[str, Any]) -> None:
    policy = WasmEngine(artefacts["seed"], hive_data)
    instance = policy._instance
    data_addr, base = instance.data_addr, instance.base
    policy.evaluate(message(context={"required_capability": "cap.0001"}, action="chat"))
    size = instance.size
    for i in range(3000):
        policy.evaluate(message(context={"required_capability": f"cap.{i % 2000:04d}"}, action="chat",
                                src_ilk=f"ilk:{i}"))
    assert (policy._instance is instance, instance.data_addr, instance.base) == (True, data_addr, base)
    assert instance.size == size  # no per-message growth: the heap is rewound


def test_linear_memory_starts_at_what_the_module_asks_not_a_fixed_126_mib(artefacts: dict[str, Artefact],
                                                                          hive_data: dict[str, Any]) -> None:
    small = WasmEngine(artefacts["seed"], {})
    assert small._instance.size <= 1024 * 1024
    large = WasmEngine(artefacts["seed"], hive_data)
    assert large._instance.size < 64 * 1024 * 1024  # 10,000 identities with their indexes fit well below


def test_data_larger_than_the_memory_ceiling_is_refused_at_load(artefacts: dict[str, Artefact],
                                                                hive_data: dict[str, Any]) -> None:
    with pytest.raises(PolicyLoadError):
        WasmEngine(artefacts["seed"], hive_data, max_memory=1024 * 1024)


def test_builtins_the_host_lacks_are_listed_when_the_policy_is_loaded(opa: str) -> None:
    source = ('package router\n\ntarget := uuid.rfc4122(input.x)\n\n'
              'allow if http.send({"method": "get", "url": input.u}).status_code == 200\n')
    artefact = compile_policy(source, opa=opa)
    with pytest.raises(PolicyLoadError) as err:
        load(artefact, {})
    assert err.value.unsupported_builtins == ("http.send", "uuid.rfc4122")
    assert "http.send, uuid.rfc4122" in str(err.value)


def test_an_artefact_whose_module_changed_is_refused(artefacts: dict[str, Artefact]) -> None:
    good = artefacts["seed"]
    assert good.wasm is not None
    tampered = Artefact(source=good.source, wasm=good.wasm[:-1] + bytes([good.wasm[-1] ^ 1]), sha256=good.sha256,
                        target_entrypoint=good.target_entrypoint, allow_entrypoint=good.allow_entrypoint)
    for engine in ("wasm", "regorus"):
        with pytest.raises(PolicyLoadError, match="hash mismatch"):
            load(tampered, {}, engine=engine)  # type: ignore[arg-type]


def test_an_input_that_is_not_json_is_an_evaluation_error_in_both_engines(artefacts: dict[str, Artefact]) -> None:
    for engine in ("wasm", "regorus"):
        policy = load(artefacts["seed"], {}, engine=engine)  # type: ignore[arg-type]
        with pytest.raises(EvaluationError, match="input is not JSON"):
            policy.evaluate({"meta": {"context": object()}})



def test_a_failing_host_builtin_is_an_opa_error_naming_it_and_the_next_input_is_decided(opa: str) -> None:
    artefact = compile_policy("package router\n\ntarget := sprintf(\"at %d\", [time.parse_rfc3339_ns(input.t)])\n",
                              opa=opa)
    policy = WasmEngine(artefact, {})
    with pytest.raises(EvaluationError, match="builtin time.parse_rfc3339_ns: .*not an RFC 3339"):
        policy.evaluate({"t": "yesterday"})
    assert policy.evaluate({"t": "1970-01-01T00:00:01Z"}).target == "at 1000000000"


def test_time_now_ns_is_one_instant_within_an_evaluation(opa: str) -> None:
    artefact = compile_policy("package router\n\ntarget := \"same\" if time.now_ns() == time.now_ns()\n", opa=opa)
    policy = WasmEngine(artefact, {})
    assert policy.evaluate({}).target == "same"
    assert policy.host_builtins == ("time.now_ns",)  # what a decision cache needs to know


def test_an_input_larger_than_the_memory_ceiling_is_an_evaluation_error(artefacts: dict[str, Artefact]) -> None:
    policy = WasmEngine(artefacts["seed"], {}, max_memory=2 * 1024 * 1024)
    with pytest.raises(EvaluationError, match="does not fit the policy's memory ceiling"):
        policy.evaluate({"meta": {"context": {"blob": "x" * (4 * 1024 * 1024)}}})
    assert policy.evaluate(message(action="chat")).allow is True
