"""The distribution: the fixed folders land under the one `fluxbee` import name, data included."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_maps_dataplane_and_operator_under_fluxbee_and_ships_its_data(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("fluxbee-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("fluxbee/cli.py", "fluxbee/dataplane/wire.py", "fluxbee/dataplane/router/server.py",
                     "fluxbee/operator/app.py", "fluxbee/data/hive.yaml", "fluxbee/py.typed"):
        assert expected in names, expected
    # The C fast path is compiled into the wheel (gcc and the Python headers are on this kind of machine).
    assert any(n.startswith("fluxbee/dataplane/_speedups.") and n.endswith(".so") for n in names), sorted(names)
    # Nothing may install as a top-level `operator` (it would shadow the stdlib) or `dataplane`.
    assert not {n for n in names if n.split("/")[0] in ("operator", "dataplane", "tests", "hack")}
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fluxbee = fluxbee.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_without_a_c_compiler_the_wheel_still_builds_and_runs_the_python_path(tmp_path: Path) -> None:
    """The C fast path is optional: a failing compiler leaves it out and the router uses pure Python."""
    src = tmp_path / "src"
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], capture_output=True,
                             check=True, timeout=60).stdout  # a clean tree: no build/ left from earlier builds
    src.mkdir()
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True, timeout=60)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "CC": "/bin/false"})
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("fluxbee-*.whl")
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    assert not list(unpacked.rglob("*.so"))
    site = sysconfig.get_paths()["purelib"]
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "from fluxbee.dataplane import fastpath, wire;"
         " import fluxbee.dataplane.router.server; print(fastpath.IMPLEMENTATION); print(wire._split)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{unpacked}:{site}", "PYTHONSAFEPATH": "1"})
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.splitlines()[1:] == ["None"]  # and frames are split in Python too
    assert probe.stdout.startswith("python (C extension not built"), probe.stdout
