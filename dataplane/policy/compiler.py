"""Rego source → :class:`Artefact`, with OPA's own compiler when it is here, regorus otherwise.

With ``opa`` (found as ``$FLUXBEE_OPA`` or on ``PATH``): ``opa check --format json`` gives the
first error with its line and column; ``opa build -t wasm -e <target> [-e <allow>]`` writes a bundle
(a gzip tarball) from which only ``/policy.wasm`` is read — in memory, never extracted to disk, a
regular file of bounded size. The allow entry point is asked for only when the policy defines the
rule (regorus reads the rule names; if it cannot parse what opa accepts, opa's own answer to the
entry point decides).

Without ``opa`` the artefact carries the source alone, regorus evaluates it, and
``fallback_reason`` says why (the same text is logged as a warning). regorus still refuses bad
Rego with line and column.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import msgspec

from fluxbee.dataplane import env as env_table
from fluxbee.dataplane.policy.artefact import (
    ALLOW_ENTRYPOINT,
    SYSTEM_DATA_KEYS,
    TARGET_ENTRYPOINT,
    Artefact,
    canonical_json,
)
from fluxbee.dataplane.policy.errors import CompileError

log = logging.getLogger(__name__)

OPA_ENV: Final = env_table.OPA.name
MAX_SOURCE_BYTES: Final = 1024 * 1024
MAX_WASM_BYTES: Final = 64 * 1024 * 1024
_TEXT_LOCATION = re.compile(r"(?P<file>[\w.\-/]+\.rego):(?P<line>\d+)(?::(?P<col>\d+))?:\s*(?P<message>.+)")
_NOT_A_RULE = "does not refer to a rule"


class OpaNotFound(Exception):
    """No usable ``opa`` here; the message is the reason printed when compiling falls back.

    ``misconfigured`` is set when ``$FLUXBEE_OPA`` names something that is not an executable: that
    is the operator's mistake to fix, so compiling refuses instead of falling back."""

    def __init__(self, message: str, *, misconfigured: bool = False) -> None:
        super().__init__(message)
        self.misconfigured = misconfigured


def find_opa(environ: Mapping[str, str] | None = None) -> str:
    """The ``opa`` to compile with: ``$FLUXBEE_OPA`` (which must then be an executable file), else
    ``opa`` on ``PATH``. Raises :class:`OpaNotFound` with the reason."""
    env = os.environ if environ is None else environ
    configured = (env_table.OPA.read(env) or "").strip()
    if configured:
        path = Path(configured)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise OpaNotFound(f"{OPA_ENV}={configured} is not an executable file", misconfigured=True)
        return str(path)
    found = shutil.which("opa", path=env.get("PATH"))
    if found is None:
        raise OpaNotFound("opa is not on PATH (build it with hack/build-tools.sh, which needs Go, "
                          f"or set {OPA_ENV})")
    return found


@lru_cache(maxsize=8)
def opa_version(opa: str) -> str:
    proc = subprocess.run([opa, "version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r"^Version:\s*(\S+)", proc.stdout, re.MULTILINE)
    return f"opa {match.group(1)}" if match else "opa"


def check_data(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The policy's own data as a JSON object without the system's keys, or :class:`CompileError`."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise CompileError(f"policy data must be a JSON object, not {type(data).__name__}")
    clash = sorted(SYSTEM_DATA_KEYS & set(data))
    if clash:
        raise CompileError(f"policy data may not define {', '.join(clash)}: the system fills those in")
    try:
        return dict(msgspec.json.decode(canonical_json(dict(data))))
    except (msgspec.EncodeError, TypeError) as err:
        raise CompileError(f"policy data is not JSON: {err}") from err


def _split(entrypoint: str) -> tuple[str, str]:
    package, _, rule = entrypoint.rpartition("/")
    if not package or not rule:
        raise CompileError(f"entry point {entrypoint!r} is not of the form package/rule")
    return package, rule


def _check_source(source: str) -> None:
    if not isinstance(source, str) or not source.strip():
        raise CompileError("the policy is empty")
    if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise CompileError(f"the policy is larger than {MAX_SOURCE_BYTES} bytes")


def compile_policy(source: str, *, data: Mapping[str, Any] | None = None,
                   target_entrypoint: str = TARGET_ENTRYPOINT, allow_entrypoint: str = ALLOW_ENTRYPOINT,
                   opa: str | None = None, use_opa: bool = True, timeout: float = 120.0) -> Artefact:
    """Validate and compile a policy. ``opa`` names the binary (found with :func:`find_opa` when
    ``None``); ``use_opa=False`` skips it (a regorus-only artefact). Raises :class:`CompileError`
    for bad Rego (with line/column), a missing target rule, bad data, or an ``opa`` failure."""
    _check_source(source)
    own_data = check_data(data)
    target_pkg, target_rule = _split(target_entrypoint)
    allow_pkg, allow_rule = _split(allow_entrypoint)
    reason: str | None = None
    if use_opa:
        try:
            opa = opa or find_opa()
        except OpaNotFound as err:
            if err.misconfigured:
                raise CompileError(str(err), compiler="opa") from err
            reason = str(err)
    else:
        reason = "compiling with opa was not asked for"
    if reason is None and opa is not None:
        return _compile_with_opa(source, own_data, opa, target_entrypoint, allow_entrypoint, timeout)
    if use_opa:  # wanted, not found: say so (a caller that chose regorus knows)
        log.warning("policy compiled for regorus evaluation, without WebAssembly: %s", reason)
    from fluxbee.dataplane.policy.regorus_engine import parse_policy, rule_names  # noqa: PLC0415 - the policy extra

    names = rule_names(parse_policy(source))
    if target_rule not in names.get(target_pkg, set()):
        raise CompileError(f"the policy defines no {target_rule} rule in package "
                           f"{target_pkg.replace('/', '.')} (entry point {target_entrypoint})", compiler="regorus")
    has_allow = allow_rule in names.get(allow_pkg, set())
    return Artefact(source=source, wasm=None, sha256=Artefact.digest(source, None),
                    target_entrypoint=target_entrypoint, allow_entrypoint=allow_entrypoint if has_allow else None,
                    data=own_data, compiler="regorus", fallback_reason=reason)


def _json_errors(*streams: str) -> Any:
    for text in streams:
        if text.strip().startswith("{"):
            try:
                return msgspec.json.decode(text)
            except msgspec.DecodeError:
                continue
    return None


def _opa_error(stderr: str, stdout: str) -> CompileError:
    """A :class:`CompileError` from opa's JSON errors (``opa check --format json``, written to
    either stream depending on the version) or its text."""
    doc = _json_errors(stdout, stderr)
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"]:
        first = doc["errors"][0]
        loc = first.get("location") or {}
        code = first.get("code", "")
        message = f"{code}: {first.get('message', '')}" if code else str(first.get("message", ""))
        row, col = loc.get("row"), loc.get("col")
        return CompileError(message, line=row if isinstance(row, int) else None,
                            column=col if isinstance(col, int) else None,
                            file=loc.get("file") or None, compiler="opa")
    text = stderr.strip() or stdout.strip() or "opa failed without a message"
    match = _TEXT_LOCATION.search(text)
    if match:
        col = match.group("col")
        return CompileError(match.group("message").splitlines()[0].strip(), line=int(match.group("line")),
                            column=int(col) if col else None, file=match.group("file"), compiler="opa")
    return CompileError(text.splitlines()[0].removeprefix("error: "), compiler="opa")


def _run(argv: list[str], cwd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise CompileError(f"{argv[0]} {argv[1]} did not finish within {timeout:g} s", compiler="opa") from err
    except OSError as err:
        raise CompileError(f"could not run {argv[0]}: {err}", compiler="opa") from err


def _compile_with_opa(source: str, own_data: dict[str, Any], opa: str, target: str, allow: str,
                      timeout: float) -> Artefact:
    from fluxbee.dataplane.policy.regorus_engine import POLICY_FILE, parse_policy, rule_names  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="fluxbee-policy-") as tmp:
        Path(tmp, POLICY_FILE).write_text(source, encoding="utf-8")
        check = _run([opa, "check", "--format", "json", POLICY_FILE], tmp, timeout)
        if check.returncode != 0:
            raise _opa_error(check.stderr, check.stdout)
        try:
            names = rule_names(parse_policy(source))
            allow_pkg, allow_rule = _split(allow)
            wanted: list[str] = [target, allow] if allow_rule in names.get(allow_pkg, set()) else [target]
        except CompileError:
            wanted = [target, allow]  # regorus cannot read what opa accepted: let opa say
        while True:
            argv = [opa, "build", "-t", "wasm", "-o", "bundle.tar.gz"]
            for entrypoint in wanted:
                argv += ["-e", entrypoint]
            build = _run([*argv, POLICY_FILE], tmp, timeout)
            if build.returncode == 0:
                break
            said = build.stdout + build.stderr
            if len(wanted) == 2 and _NOT_A_RULE in said and f'"{allow}"' in said:
                wanted = [target]
                continue
            if _NOT_A_RULE in said:
                raise CompileError(f"the policy defines no rule for the entry point {target}", compiler="opa")
            raise _opa_error(build.stderr, build.stdout)
        wasm = read_bundle_wasm(Path(tmp, "bundle.tar.gz").read_bytes())
    return Artefact(source=source, wasm=wasm, sha256=Artefact.digest(source, wasm), target_entrypoint=target,
                    allow_entrypoint=allow if len(wanted) == 2 else None, data=own_data,
                    compiler=opa_version(opa))


def read_bundle_wasm(bundle: bytes) -> bytes:
    """``/policy.wasm`` out of an ``opa build -t wasm`` bundle, read in memory: the member must be a
    regular file no larger than :data:`MAX_WASM_BYTES` and start with the WebAssembly magic."""
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            for member in tar:
                if member.name.lstrip("/") != "policy.wasm":
                    continue
                if not member.isfile():
                    raise CompileError("the bundle's policy.wasm is not a regular file", compiler="opa")
                if member.size > MAX_WASM_BYTES:
                    raise CompileError(f"the bundle's policy.wasm is larger than {MAX_WASM_BYTES} bytes",
                                       compiler="opa")
                handle = tar.extractfile(member)
                if handle is None:
                    raise CompileError("the bundle's policy.wasm cannot be read", compiler="opa")
                wasm = handle.read(MAX_WASM_BYTES + 1)
                if not wasm.startswith(b"\0asm"):
                    raise CompileError("the bundle's policy.wasm is not a WebAssembly module", compiler="opa")
                return wasm
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CompileError(f"the bundle opa wrote is not a readable tarball: {err}", compiler="opa") from err
    raise CompileError("the bundle opa wrote has no policy.wasm", compiler="opa")
