"""The FLUXBEE_* table: every variable read through it, documented in the README, parsed one way."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from fluxbee.admin.http import AdminSettings
from fluxbee.dataplane import env
from fluxbee.dataplane.env import SettingsError
from fluxbee.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for folder in ("dataplane", "fluxbee", "operator") for p in (ROOT / folder).rglob("*.py")]
TOKEN = "s3cret-token-value"


def _readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("| variable | read by | default | meaning |")
    end = text.index("\n\n", start)
    return text[start:end]


def test_the_readme_table_is_the_settings_table() -> None:
    assert _readme_table() == env.markdown_table(), "update README.md from fluxbee.dataplane.env.markdown_table()"


def test_every_variable_the_code_or_the_chart_names_is_in_the_table() -> None:
    known = {var.name for var in env.VARIABLES}
    assert len(known) == len(env.VARIABLES), "a variable is listed twice"
    files = [*SOURCES, *(ROOT / "charts" / "fluxbee" / "templates").rglob("*.yaml")]
    named = {m for path in files for m in re.findall(r"\bFLUXBEE_[A-Z0-9_]+", path.read_text())}
    assert named - known == set(), "add these variables to fluxbee.dataplane.env.VARIABLES"
    assert known - named == set(), "these table entries are named nowhere in the code"


def test_no_module_reads_a_fluxbee_variable_around_the_table() -> None:
    reads = re.compile(r"""(environ|env)\s*(\.get\(|\[)\s*["']FLUXBEE_|getenv\(\s*["']FLUXBEE_""")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES if p.name != "env.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if reads.search(line)]
    assert offenders == []


def test_unset_or_empty_means_the_default() -> None:
    for var in env.VARIABLES:
        assert var.read({}) == var.default
        assert var.read({var.name: ""}) == var.default


@pytest.mark.parametrize(("var", "raw", "reason"), [
    (env.LOG, "loud", "expected a log level"),
    (env.ADMIN_HEADER_TIMEOUT, "soon", "expected a positive float"),
    (env.ADMIN_BODY_TIMEOUT, "-1", "expected a positive float"),
    (env.ADMIN_MAX_CONNECTIONS, "1.5", "expected a positive int"),
    (env.OPERATOR_PRIORITY, "high", "expected an integer"),
    (env.OPERATOR_WORKER_LIMIT, "0", "expected a positive int"),
    (env.IMAGE_PULL_POLICY, "Sometimes", "expected Always, IfNotPresent or Never"),
    (env.HIVE_ID, "_lead", "must match"),
    (env.REPLICA, "first", "expected an integer"),
])
def test_a_bad_value_is_one_error_naming_the_variable_and_the_value(var: env.Var[object], raw: str,
                                                                   reason: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"{var.name}={raw!r}: ") + ".*" + re.escape(reason)) as caught:
        var.read({var.name: raw})
    assert caught.value.source == var.name


def test_values_parse_to_their_types() -> None:
    assert env.LOG.read({"FLUXBEE_LOG": "debug"}) == logging.DEBUG
    assert env.LOG.read({"FLUXBEE_LOG": "Warning"}) == logging.WARNING
    assert env.RUN_DIR.read({"FLUXBEE_RUN_DIR": "/x/y"}) == Path("/x/y")
    assert env.UP_IDENTITY.read({"FLUXBEE_UP_IDENTITY": "0"}) is False
    assert env.UP_IDENTITY.read({"FLUXBEE_UP_IDENTITY": "1"}) is True
    assert env.PURE_PYTHON.read({"FLUXBEE_PURE_PYTHON": "1"}) is True
    assert env.OPERATOR_PRIORITY.read({"FLUXBEE_OPERATOR_PRIORITY": "-3"}) == -3


def test_the_components_build_their_settings_from_the_table() -> None:
    op = OperatorSettings.from_env({"FLUXBEE_IMAGE": "img:1", "FLUXBEE_OPERATOR_PRIORITY": "7",
                                    "FLUXBEE_WATCH_NAMESPACE": "ns", "FLUXBEE_OPERATOR_WORKER_LIMIT": "9"})
    assert (op.image, op.priority, op.namespace, op.worker_limit, op.image_pull_policy) == (
        "img:1", 7, "ns", 9, "IfNotPresent")
    with pytest.raises(SettingsError, match="FLUXBEE_IMAGE_PULL_POLICY='Sometimes'"):
        OperatorSettings.from_env({"FLUXBEE_IMAGE_PULL_POLICY": "Sometimes"})
    admin = AdminSettings.from_env({"FLUXBEE_ADMIN_TOKEN": TOKEN, "FLUXBEE_ADMIN_MAX_CONNECTIONS": "3"}, port=0)
    assert (admin.token, admin.max_connections, admin.header_timeout) == (TOKEN, 3, 10.0)


# --- the admin token -------------------------------------------------------------------------------

def test_the_token_comes_from_the_flag_then_the_file_then_the_variable(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text(f"  {TOKEN}-file\n")
    environ = {"FLUXBEE_ADMIN_TOKEN": f"{TOKEN}-env"}
    assert env.admin_token(environ, token=f"{TOKEN}-flag", token_file=file) == f"{TOKEN}-flag"
    assert env.admin_token(environ, token_file=file) == f"{TOKEN}-file"
    assert env.admin_token(environ) == f"{TOKEN}-env"
    assert env.admin_token({}) is None
    assert env.admin_token({"FLUXBEE_ADMIN_TOKEN": ""}) is None


def _file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _under_a_file(tmp_path: Path) -> Path:
    """A path the system cannot open even for root: its parent is a regular file (ENOTDIR)."""
    (tmp_path / "plain").write_text(TOKEN)
    return tmp_path / "plain" / "token"


@pytest.mark.parametrize(("make", "reason"), [
    (lambda d: d / "absent", "no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: _file(d / "empty", b""), "the file is empty"),
    (lambda d: _file(d / "blank", b" \n\t\n"), "the file holds only whitespace"),
    (lambda d: _file(d / "latin1", b"caf\xe9"), "not UTF-8"),
    (_under_a_file, "cannot read it"),
])
def test_a_token_file_that_cannot_be_used_is_refused_naming_the_flag_and_the_file(
        tmp_path: Path, make: object, reason: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(SettingsError) as caught:
        env.admin_token({"FLUXBEE_ADMIN_TOKEN": TOKEN}, token_file=path, file_flag="--admin-token-file")
    message = str(caught.value)
    assert message.startswith(f"--admin-token-file {path}: ") and reason in message
    assert caught.value.source == "--admin-token-file"
    assert TOKEN not in message


def test_an_empty_token_file_flag_names_no_file() -> None:
    with pytest.raises(SettingsError, match=r"^--token-file: names no file$"):
        env.admin_token({"FLUXBEE_ADMIN_TOKEN": TOKEN}, token_file="")


def test_a_whitespace_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError, match=r"^FLUXBEE_ADMIN_TOKEN: is set but holds only whitespace$"):
        env.admin_token({"FLUXBEE_ADMIN_TOKEN": "   "})
    with pytest.raises(SettingsError, match=r"^--token: "):
        env.admin_token({}, token=" ")


def test_the_names_and_the_table_load_nothing_beyond_the_standard_library() -> None:
    """A node with only the base install (and tools that only need a name) can import both."""
    import subprocess
    import sys

    code = ("import json, sys, fluxbee.dataplane.names, fluxbee.dataplane.env\n"
            "std = sys.stdlib_module_names\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} - std - {'fluxbee'})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    # Underscore names are the interpreter's own start-up hooks (e.g. setuptools' path hook).
    loaded = [m for m in json.loads(done.stdout) if not m.startswith("_")]
    assert loaded == [], f"third-party modules loaded: {loaded}"
