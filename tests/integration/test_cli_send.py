"""`fluxbee send` as a user runs it: meta fields from `--meta`, and no destination (dst null: the
hive's routing policy chooses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hive_harness import RouterProc


def send(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxbee", "send", *args, "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("meta, message", [
    ("[1]", "Expected `object`, got `array`"),
    ('{"context": 5}', "at `$.context`"),
    ('{"thread_seq": "one"}', "at `$.thread_seq`"),
    ("{not json", "--meta must be a JSON object"),
])
def test_bad_meta_is_refused_before_connecting(meta: str, message: str, tmp_path: Path) -> None:
    done = send(tmp_path, "WF.echo", "--meta", meta)
    assert done.returncode == 2, done
    assert message in done.stderr and "--meta must be a JSON object of meta fields" in done.stderr


def test_without_a_destination_the_message_goes_to_the_routing_policy(router: RouterProc, spawn: object,
                                                                      run_dir: Path) -> None:
    spawn("echo", "WF.echo")  # type: ignore[operator]
    done = send(run_dir, "--meta", '{"context": {"required_capability": "billing"}}', "--wait", "--timeout", "5")
    assert done.returncode == 3, done  # UNREACHABLE: no policy decides here
    assert "for null" in done.stderr and "OPA_" in done.stderr, done.stderr
    explicit = send(run_dir, "WF.echo", "--meta", '{"context": {"k": 1}}', "--payload", '{"a": 1}', "--wait")
    assert explicit.returncode == 0, explicit
    assert '"payload":{"a":1}' in explicit.stdout
