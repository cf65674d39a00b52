"""Compiling with the real ``opa``: errors with line and column, and modules this host refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime
import yaml

from fluxbee.dataplane.policy import Artefact, CompileError, PolicyLoadError, compile_policy, load
from fluxbee.dataplane.policy import regorus_engine as regorus_engine_mod

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("source", "line", "column", "code"), [
    ("package router\n\ntarget := x if {\n  x := 1 +\n}\n", 5, 1, "rego_parse_error"),
    ("package router\n\ntarget := \"a\"\n\nallow if {\n  input.x ==\n}\n", 7, 1, "rego_parse_error"),
    ("package router\n\ntarget := y\n", 3, 11, "rego_unsafe_var_error"),
    ("package router\n\ntarget := upper(1)\n", 3, 11, "rego_type_error"),
])
def test_bad_rego_is_a_compile_error_with_opas_line_and_column(opa: str, source: str, line: int, column: int,
                                                               code: str) -> None:
    with pytest.raises(CompileError) as err:
        compile_policy(source, opa=opa)
    assert (err.value.code, err.value.compiler, err.value.line, err.value.column) == (
        "COMPILE_ERROR", "opa", line, column)
    assert err.value.message.startswith(code) and err.value.file == "policy.rego"


def test_the_same_bad_rego_is_refused_by_regorus_on_the_same_line() -> None:
    with pytest.raises(CompileError) as err:
        compile_policy("package router\n\ntarget := \"a\"\n\nallow if {\n  input.x ==\n}\n", use_opa=False)
    assert (err.value.line, err.value.column, err.value.compiler) == (7, 1, "regorus")


def test_a_policy_without_a_target_rule_is_refused_by_opa(opa: str) -> None:
    with pytest.raises(CompileError, match="defines no rule for the entry point router/target"):
        compile_policy("package router\n\nallow := true\n", opa=opa)


@pytest.mark.parametrize(("allow", "entrypoints"), [("", ("router/target",)),
                                                    ("allow if input.x\n", ("router/target", "router/allow"))])
def test_when_regorus_cannot_read_what_opa_accepts_opa_settles_the_entry_points(
        opa: str, monkeypatch: pytest.MonkeyPatch, allow: str, entrypoints: tuple[str, ...]) -> None:
    def unreadable(source: str) -> None:
        raise CompileError("regorus does not know this construct", line=1, column=1, compiler="regorus")
    # The compiler imports regorus's parser when it compiles (the policy extra), so patch it at its source.
    monkeypatch.setattr(regorus_engine_mod, "parse_policy", unreadable)
    artefact = compile_policy(f'package router\n\ntarget := "AI.x@*"\n\n{allow}', opa=opa)
    assert artefact.engine == "wasm" and artefact.entrypoints == entrypoints
    assert load(artefact, {}).evaluate({"x": True}).target == "AI.x@*"


def abi_module(major: int, minor: int, dump: int = 0, tail: str = "") -> bytes:
    """A module with the exports of OPA's ABI and the given version, whose functions do nothing
    (``opa_json_dump`` answers ``dump``; ``tail`` fills the last bytes of its two pages)."""
    answers = {"opa_malloc": 0, "opa_json_dump": dump, "opa_eval_ctx_set_input": 0}
    funcs = "".join(f'(func (export "{name}") (param i32) (result i32) (i32.const {value}))'
                    for name, value in answers.items())
    segment = f'(data (i32.const {2 * 65536 - len(tail)}) "{tail}")' if tail else ""
    return wasmtime.wat2wasm(f"""(module
      (import "env" "memory" (memory 2))
      {segment}
      (global (export "opa_wasm_abi_version") i32 (i32.const {major}))
      (global (export "opa_wasm_abi_minor_version") i32 (i32.const {minor}))
      {funcs}
      (func (export "opa_json_parse") (param i32 i32) (result i32) (i32.const 0))
      (func (export "opa_heap_ptr_get") (result i32) (i32.const 0))
      (func (export "opa_heap_ptr_set") (param i32))
      (func (export "builtins") (result i32) (i32.const 0))
      (func (export "entrypoints") (result i32) (i32.const 0))
      (func (export "opa_eval") (param i32 i32 i32 i32 i32 i32 i32) (result i32) (i32.const 0)))""")


def test_a_module_of_another_abi_major_version_is_refused() -> None:
    wasm = abi_module(2, 0)
    artefact = Artefact(source="package router", wasm=wasm, sha256=Artefact.digest("", wasm))
    with pytest.raises(PolicyLoadError, match="ABI 2.0 is not supported"):
        load(artefact, {})


def test_a_1_1_module_without_the_context_calls_is_refused_naming_them() -> None:
    wasm = abi_module(1, 1)
    artefact = Artefact(source="package router", wasm=wasm, sha256=Artefact.digest("", wasm))
    with pytest.raises(PolicyLoadError, match="ABI 1.1 module lacks opa_eval_ctx_new"):
        load(artefact, {})


def test_bytes_that_are_not_a_module_are_refused() -> None:
    artefact = Artefact(source="package router", wasm=b"\0asm garbage", sha256=Artefact.digest("", b"\0asm garbage"))
    with pytest.raises(PolicyLoadError, match="not a valid WebAssembly module"):
        load(artefact, {})


def test_a_string_running_to_the_end_of_memory_is_refused_without_reading_past_it() -> None:
    wasm = abi_module(1, 3, dump=2 * 65536 - 16, tail="x" * 16)
    artefact = Artefact(source="package router", wasm=wasm, sha256=Artefact.digest("", wasm))
    with pytest.raises(PolicyLoadError, match="runs to the end of its memory"):
        load(artefact, {})


def test_the_example_policy_resource_compiles_and_both_engines_route_by_intent(opa: str) -> None:
    doc = yaml.safe_load((Path(__file__).resolve().parents[3] / "examples" / "policy.yaml").read_text())
    artefact = compile_policy(doc["spec"]["rego"], opa=opa)
    assert doc["spec"]["entrypoint"] == "data." + artefact.target_entrypoint.replace("/", ".")
    for engine in ("wasm", "regorus"):
        policy = load(artefact, {}, engine=engine)  # type: ignore[arg-type]
        assert policy.evaluate({"meta": {"intent": "buy"}}).target == "AI.sales.l1"
        assert policy.evaluate({"meta": {}}).target == "AI.support.l1"
