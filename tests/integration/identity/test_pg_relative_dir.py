"""`fluxbee identity postgres` (and so `fluxbee up --run-dir DIR`) given a data dir relative to where
the user stands: initdb and the server run from "/", and libpq reads a relative socket dir as a host
name, so the dir must be made absolute before either sees it (it once made initdb try to create
`/ra` and the hive's PostgreSQL restart forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from hive_harness import fluxbee_argv

from fluxbee.identity import pg


def test_a_relative_data_dir_is_resolved_against_the_callers_directory() -> None:
    base = Path(tempfile.mkdtemp(prefix="fbpgrel", dir="/tmp"))
    os.chmod(base, 0o755)  # PostgreSQL runs as an unprivileged account when we are root
    assert pg.Cluster(Path("rel/pgdata")).data_dir == Path.cwd() / "rel" / "pgdata"
    proc = subprocess.Popen([*fluxbee_argv("identity", "postgres", "--data", "rel/pgdata", "--port", "5491")],
                            cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("postgres ready: "), (line, proc.stderr.read() if proc.poll() is not None else "")
        assert f"host={base}/rel/pgdata&" in line  # an absolute socket dir in the DSN
        assert (base / "rel" / "pgdata" / "PG_VERSION").exists()
        assert not Path("/rel").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    assert proc.returncode == 0, err
