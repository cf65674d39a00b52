"""The command line refuses bad input with a message and exit status 2, before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from shm_leaks import SessionSegments, fluxbee_segments


def fluxbee(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxbee", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (("router", "--hive-id", "bad id!"), "hive id 'bad id!' must match"),
    (("router", "--hive-id", "h", "--router-name", "WF.not.a.router"), "must be an RT.* name"),
    (("router", "--hive-id", "h", "--metrics-addr", "nowhere"), "expected HOST:PORT"),
    (("router", "--hive-id", "h", "--scheduling", "fifo"), "invalid choice: 'fifo' (choose from 'batch', 'inherit')"),
    (("router", "--hive-id", "h", "--busy-poll-us", "20000"), "expected microseconds from 0 to 10000"),
    (("router", "--hive-id", "h", "--busy-poll-us", "-1"), "expected microseconds from 0 to 10000"),
    (("send", "WF.echo", "--payload", "{bad"), "--payload is not valid JSON"),
    (("up", "--hive-id", "no spaces"), "must match"),
])
def test_bad_arguments_exit_2_with_the_reason(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    done = fluxbee(*args, *(("--run-dir", str(tmp_path)) if args[0] == "router" else ()))
    assert done.returncode == 2, done
    assert message in done.stderr
    assert not (tmp_path / "routers").exists() or not list((tmp_path / "routers").glob("*.sock"))


def test_a_bad_router_config_file_names_the_file_and_the_field(run_dir: Path) -> None:
    config = run_dir / "hive.yaml"
    config.write_text("routes: [{prefix: AI.x, action: EXPLODE}]\n")
    done = fluxbee("router", "--hive-id", "h", "--run-dir", str(run_dir), "--config", str(config))
    assert done.returncode == 2
    assert str(config) in done.stderr and "routes.0.action" in done.stderr


def test_a_run_dir_too_long_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 120)
    done = fluxbee("router", "--hive-id", "h", "--run-dir", str(long_dir))
    assert done.returncode == 2 and "use a shorter --run-dir" in done.stderr


def test_a_router_that_cannot_start_leaves_no_socket_or_shared_memory(run_dir: Path) -> None:
    import socket

    config = run_dir / "hive.yaml"
    config.write_text("vpns: [{pattern: WF.x}]\n")  # vpn_id missing
    segments = SessionSegments(fluxbee_segments())  # other hives on the machine make segments too
    done = fluxbee("router", "--hive-id", "h", "--run-dir", str(run_dir), "--config", str(config))
    assert done.returncode == 2 and "vpn" in done.stderr.lower()
    with socket.socket() as taken:  # a metrics port already in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = fluxbee("router", "--hive-id", "h", "--run-dir", str(run_dir), "--metrics-addr", f"127.0.0.1:{port}")
    assert done.returncode == 2 and f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert not list((run_dir / "routers").glob("*.sock"))
    segments.note_run_dir(run_dir)  # this router's uuid is kept there: its region names follow from it
    assert segments.router_hexes, "the router kept no uuid in its run dir"
    assert segments.leftovers() == []
