"""The distribution: the fixed folders land under the one `fluxbee` import name, data included."""

from __future__ import annotations

import subprocess
import sys
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
