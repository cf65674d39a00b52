"""Bad settings stop a command with exit status 2 and one line naming the variable, flag or file,
before anything starts; a token is never printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOKEN = "0123456789abcdef-not-to-be-printed"


def fluxbee(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLUXBEE_")}
    return subprocess.run([sys.executable, "-m", "fluxbee", *args], capture_output=True, text=True, timeout=60,
                          env={**environ, "FLUXBEE_UP_IDENTITY": "0", **(env or {})})


def _token_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "empty").write_text("")
    (tmp_path / "blank").write_text("  \n")
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    return {"missing": (tmp_path / "absent", "no such file"),
            "directory": (tmp_path, "is a directory, not a token file"),
            "empty": (tmp_path / "empty", "the file is empty"),
            "blank": (tmp_path / "blank", "the file holds only whitespace"),
            "latin1": (tmp_path / "latin1", "not UTF-8 text")}


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "blank", "latin1"])
def test_fluxbee_up_refuses_an_unusable_admin_token_file(tmp_path: Path, case: str) -> None:
    path, reason = _token_files(tmp_path)[case]
    run_dir = tmp_path / "run"
    done = fluxbee("up", "--run-dir", str(run_dir), "--admin-listen", "127.0.0.1:0", "--admin-token-file", str(path),
                   env={"FLUXBEE_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 2, done
    assert f"--admin-token-file {path}: {reason}" in done.stderr
    assert TOKEN not in done.stderr + done.stdout
    assert not (run_dir / "routers").exists() or not list((run_dir / "routers").glob("*.sock"))


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "blank", "latin1"])
def test_fluxbee_admin_refuses_an_unusable_token_file_the_same_way(tmp_path: Path, case: str) -> None:
    path, reason = _token_files(tmp_path)[case]
    done = fluxbee("admin", "--backend", "kubernetes", "--hive", "h", "--token-file", str(path))
    assert done.returncode == 2, done
    assert done.stderr.strip() == f"fluxbee admin: --token-file {path}: {reason}"


def test_a_whitespace_admin_token_variable_is_refused_without_printing_it(tmp_path: Path) -> None:
    done = fluxbee("up", "--run-dir", str(tmp_path), "--admin-listen", "127.0.0.1:0",
                   env={"FLUXBEE_ADMIN_TOKEN": "   "})
    assert done.returncode == 2
    assert "FLUXBEE_ADMIN_TOKEN: is set but holds only whitespace" in done.stderr


def test_fluxbee_ctl_refuses_an_empty_token_flag() -> None:
    done = fluxbee("ctl", "--token", " ", "health")
    assert done.returncode == 2 and "fluxbee ctl: --token: the token is empty or only whitespace" in done.stderr


@pytest.mark.parametrize(("command", "env", "message"), [
    (("status",), {"FLUXBEE_LOG": "loud"}, "fluxbee: FLUXBEE_LOG='loud': expected a log level"),
    (("up", "--admin-listen", "127.0.0.1:0"), {"FLUXBEE_ADMIN_MAX_CONNECTIONS": "many"},
     "FLUXBEE_ADMIN_MAX_CONNECTIONS='many': expected a positive int"),
    (("admin", "--backend", "kubernetes", "--hive", "h"), {"FLUXBEE_ADMIN_BODY_TIMEOUT": "nan"},
     "FLUXBEE_ADMIN_BODY_TIMEOUT='nan': expected a positive float"),
    (("operator",), {"FLUXBEE_OPERATOR_WORKER_LIMIT": "0"},
     "FLUXBEE_OPERATOR_WORKER_LIMIT='0': expected a positive int"),
])
def test_a_bad_variable_is_one_line_naming_it(tmp_path: Path, command: tuple[str, ...], env: dict[str, str],
                                              message: str) -> None:
    extra = ("--run-dir", str(tmp_path)) if command[0] in ("up", "status") else ()
    done = fluxbee(*command, *extra, env=env)
    assert done.returncode == 2, done
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [("identity", "serve", "--hive-id=_lead"),
                                  ("identity", "serve", "--hive-id", "h", "--primary-hive", "a.b"),
                                  ("identity", "lookup", "--hive-id", "x" * 64, "--channel", "wa:1"),
                                  ("up", "--hive-id=-lead")])
def test_every_command_that_takes_a_hive_id_applies_the_one_rule(args: tuple[str, ...]) -> None:
    done = fluxbee(*args)
    assert done.returncode == 2, done
    assert "must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$" in done.stderr
