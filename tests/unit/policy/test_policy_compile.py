"""Compiling without opa (regorus), reading opa's bundle safely, finding opa, the policy's own data."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import pytest

from fluxbee.dataplane.policy import CompileError, EvaluationError, OpaNotFound, compile_policy, find_opa, load
from fluxbee.dataplane.policy import compiler as compiler_mod
from fluxbee.dataplane.policy.compiler import read_bundle_wasm

POLICY = 'package router\n\ndefault allow := false\n\nallow if input.meta.action == "chat"\n\ntarget := "AI.a@*"\n'
WASM = b"\0asm\x01\0\0\0"


def bundle(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


def regular(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def test_without_opa_the_artefact_is_for_regorus_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("FLUXBEE_OPA", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="fluxbee.dataplane.policy.compiler"):
        artefact = compile_policy(POLICY)
    assert artefact.engine == "regorus" and artefact.wasm is None and artefact.compiler == "regorus"
    assert artefact.fallback_reason is not None and "opa is not on PATH" in artefact.fallback_reason
    assert artefact.fallback_reason in caplog.text
    assert artefact.entrypoints == ("router/target", "router/allow")
    policy = load(artefact, {})
    assert policy.name == "regorus"
    decision = policy.evaluate({"meta": {"action": "chat"}})
    assert (decision.target, decision.allow, decision.engine) == ("AI.a@*", True, "regorus")


@pytest.mark.parametrize(("source", "line", "column"), [
    ("package router\n\ntarget := x if {\n  x := 1 +\n}\n", 4, 5),
    ("package router\n\ntarget := \"a\"\nallow if {\n  input.x ==\n}\n", 6, 1),
    ("package router\n\ntarget := [\n", 4, 1),  # end of input
])
def test_bad_rego_without_opa_is_a_compile_error_with_line_and_column(source: str, line: int, column: int) -> None:
    with pytest.raises(CompileError) as err:
        compile_policy(source, use_opa=False)
    assert (err.value.code, err.value.line, err.value.column, err.value.compiler) == (
        "COMPILE_ERROR", line, column, "regorus")
    assert "Stack backtrace" not in str(err.value) and str(err.value).startswith(f"policy.rego:{line}:{column}: ")


def test_a_policy_without_its_target_rule_or_in_another_package_is_refused() -> None:
    with pytest.raises(CompileError, match="defines no target rule in package router"):
        compile_policy("package router\n\nallow := true\n", use_opa=False)
    with pytest.raises(CompileError, match="defines no target rule in package router"):
        compile_policy('package other\n\ntarget := "x"\n', use_opa=False)
    artefact = compile_policy('package acme.routing\n\ntarget := "x"\n', use_opa=False,
                              target_entrypoint="acme/routing/target", allow_entrypoint="acme/routing/allow")
    assert artefact.entrypoints == ("acme/routing/target",)
    assert load(artefact, {}).evaluate({}).target == "x"


@pytest.mark.parametrize(("source", "message"), [("", "empty"), ("  \n", "empty"),
                                                 ("package router\n" + "#" * (1024 * 1024), "larger than")])
def test_empty_or_oversized_sources_are_refused(source: str, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        compile_policy(source, use_opa=False)


def test_the_policys_own_data_must_be_a_json_object_without_system_keys() -> None:
    artefact = compile_policy(POLICY, use_opa=False, data={"tiers": {"gold": [1, 2]}})
    assert artefact.data == {"tiers": {"gold": [1, 2]}}
    with pytest.raises(CompileError, match="may not define by_capability, identity"):
        compile_policy(POLICY, use_opa=False, data={"identity": {}, "by_capability": {}})
    with pytest.raises(CompileError, match="must be a JSON object"):
        compile_policy(POLICY, use_opa=False, data=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(CompileError, match="not JSON"):
        compile_policy(POLICY, use_opa=False, data={"x": object()})


def test_a_bad_entry_point_is_refused() -> None:
    with pytest.raises(CompileError, match="not of the form package/rule"):
        compile_policy(POLICY, use_opa=False, target_entrypoint="target")


def test_find_opa_prefers_the_variable_and_names_it_when_it_is_wrong(tmp_path: Path) -> None:
    fake = tmp_path / "opa"
    fake.write_text("#!/bin/sh\n")
    with pytest.raises(OpaNotFound, match="FLUXBEE_OPA=.* is not an executable file"):
        find_opa({"FLUXBEE_OPA": str(fake), "PATH": ""})
    fake.chmod(0o755)
    assert find_opa({"FLUXBEE_OPA": str(fake), "PATH": ""}) == str(fake)
    assert find_opa({"PATH": str(tmp_path)}) == str(fake)
    with pytest.raises(OpaNotFound, match="not on PATH"):
        find_opa({"PATH": str(tmp_path / "nowhere")})


def test_a_misconfigured_opa_variable_is_an_error_not_a_silent_fallback(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("FLUXBEE_OPA", str(tmp_path / "missing-opa"))
    with pytest.raises(CompileError, match="FLUXBEE_OPA="):
        compile_policy(POLICY)


def test_the_module_is_read_from_the_bundle_in_memory() -> None:
    data = bundle(regular("/data.json", b"{}"), regular("/policy.wasm", WASM), regular("/.manifest", b"{}"))
    assert read_bundle_wasm(data) == WASM
    assert read_bundle_wasm(bundle(regular("policy.wasm", WASM))) == WASM


def test_a_bundle_whose_module_is_a_link_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("/policy.wasm")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(CompileError, match="not a regular file"):
        read_bundle_wasm(bundle((link, None)))
    assert not (tmp_path / "etc").exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize(("data", "message"), [
    (b"not a tarball", "not a readable tarball"),
    (bundle(regular("/data.json", b"{}")), "has no policy.wasm"),
    (bundle(regular("/policy.wasm", b"MZ\x90\0")), "not a WebAssembly module"),
    (bundle(regular("/policy.wasm", WASM))[:40], "not a readable tarball"),
])
def test_a_broken_bundle_is_a_compile_error(data: bytes, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        read_bundle_wasm(data)


def test_an_oversized_module_is_refused_before_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiler_mod, "MAX_WASM_BYTES", 16)
    with pytest.raises(CompileError, match="larger than 16 bytes"):
        read_bundle_wasm(bundle(regular("/policy.wasm", WASM + bytes(32))))


def test_a_builtin_regorus_lacks_is_an_opa_error_naming_it_at_evaluation() -> None:
    artefact = compile_policy('package router\n\ntarget := crypto.sha256(input.x)\n', use_opa=False)
    policy = load(artefact, {})
    with pytest.raises(EvaluationError) as err:
        policy.evaluate({"x": "a"})
    assert err.value.code == "OPA_ERROR" and err.value.engine == "regorus"
    assert err.value.detail == "policy.rego:3:24: could not find function crypto.sha256"


def test_print_in_a_policy_goes_to_the_log_not_to_stdout(capfd: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    artefact = compile_policy('package router\n\ntarget := x if {\n  x := input.t\n  print("deciding", x)\n}\n',
                              use_opa=False)
    policy = load(artefact, {})
    with caplog.at_level(logging.DEBUG, logger="fluxbee.dataplane.policy.regorus_engine"):
        for _ in range(3):
            assert policy.evaluate({"t": "AI.a@*"}).target == "AI.a@*"
    assert "deciding" not in capfd.readouterr().out
    assert caplog.text.count("policy.rego:5: deciding AI.a@*") == 3  # taken per evaluation, not accumulated
