"""``fluxbee bench``'s policy section, continued: compile and distribute a policy to every router of three hives.

Three hives started as a user starts them (``fluxbee up`` each with its own run directory,
``--hive-id``, ``--admin-listen``, ``--wan-listen`` and ``--wan-ca`` of one CA made for the run;
identity off, as it plays no part), the mother linked to both workers through its admin API
(``POST /hives``). Each run sends a new policy to the mother (``POST /opa/policy``: compile with
``opa`` when ``$FLUXBEE_OPA`` or ``PATH`` has it, else regorus; publish; OPA_RELOAD; the workers'
SY.policy over the links) and then asks every hive's admin API (``GET /opa/status``) until the
router of each reports the new version. Measured: the wall time from the POST to the last router
reporting it, the time the POST alone took to answer (it waits for every hive's answer), and the
mother's compile time in each run (only the mother compiles; the workers' SY.policy fetch its
compiled artefact in chunks and verify it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fluxbee.bench.harness import fluxbee, free_port, wait_for
from fluxbee.dataplane.names import API_VERSION
from fluxbee.procs import die_with_parent

HIVES = (("M", None), ("W1", "M"), ("W2", "M"))
START_TIMEOUT_S = 120.0


class _Hive:
    """One ``fluxbee up`` process and its admin API."""

    def __init__(self, root: Path, hive_id: str, mother: str | None, ca: Path) -> None:
        self.hive_id, self.mother, self.ca = hive_id, mother, ca
        self.dir = root / hive_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.admin_port, self.wan_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def wan(self) -> str:
        return f"127.0.0.1:{self.wan_port}"

    def start(self) -> None:
        spec = {"role": "worker", "motherHive": self.mother} if self.mother else {"role": "motherbee"}
        doc = {"apiVersion": API_VERSION, "kind": "Hive", "metadata": {"name": self.hive_id}, "spec": spec}
        (self.dir / "hive.yaml").write_text(json.dumps(doc))
        argv = fluxbee("up", "-f", str(self.dir / "hive.yaml"), "--hive-id", self.hive_id,
                       "--run-dir", str(self.dir / "run"), "--admin-listen", f"127.0.0.1:{self.admin_port}",
                       "--wan-listen", self.wan, "--wan-ca", str(self.ca))
        with open(self.dir / "up.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "FLUXBEE_UP_IDENTITY": "0", "PYTHONUNBUFFERED": "1"},
                                         preexec_fn=die_with_parent if sys.platform == "linux" else None)

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.dir / "up.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"fluxbee up of hive {self.hive_id} exited {self.proc.returncode}: {log}")
        return self.call("GET", "/opa/status")[0] == 200

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: the hive stops its processes and removes its regions
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except (urllib.error.URLError, ConnectionError):
            return 0, None

    def router_version(self) -> int | None:
        code, doc = self.call("GET", "/opa/status")
        router = (doc or {}).get("payload", {}).get("router") if code == 200 else None
        return router.get("version") if isinstance(router, dict) else None

    def linked(self, hive: str) -> bool:
        code, doc = self.call("GET", "/hives")
        rows = doc["payload"]["hives"] if code == 200 else []
        return any(r["hive_id"] == hive and r.get("wan_connected") for r in rows)


@contextlib.contextmanager
def _three_hives(root: Path) -> Iterator[list[_Hive]]:
    ca = root / "ca"
    subprocess.run(fluxbee("wan", "ca", str(ca)), check=True, capture_output=True)
    hives = [_Hive(root, hive_id, mother, ca) for hive_id, mother in HIVES]
    try:
        for h in hives:
            h.start()
        for h in hives:
            wait_for(h.ready, START_TIMEOUT_S, f"hive {h.hive_id}'s admin API and SY.policy")
        mother = hives[0]
        for worker in hives[1:]:
            code, doc = mother.call("POST", "/hives", {"hive_id": worker.hive_id, "address": worker.wan})
            if code not in (200, 202):
                raise RuntimeError(f"POST /hives {worker.hive_id} answered {code}: {doc}")
        wait_for(lambda: all(mother.linked(w.hive_id) for w in hives[1:]), 60, "the mother linked to both workers")
        yield hives
    finally:
        for h in reversed(hives):
            h.stop()


def measure_distribution(tmp: Path, runs: int) -> dict[str, Any]:
    """Wall time of ``runs`` policy changes from ``POST /opa/policy`` on the mother to every router."""
    walls, posts, compiles, compilers = [], [], [], set()
    with _three_hives(tmp / "distribution") as hives:
        mother = hives[0]
        for i in range(runs):
            rego = f'package router\n\ntarget := "WF.echo" if input.meta.context.run == {i}\n'
            t0 = time.perf_counter()
            code, doc = mother.call("POST", "/opa/policy", {"rego": rego})
            t1 = time.perf_counter()
            if code != 200 or not isinstance(doc, dict) or doc.get("status") != "ok":
                raise RuntimeError(f"POST /opa/policy answered {code}: {doc}")
            version = doc["payload"]["version"]
            compiles.append(max(int(r.get("compile_time_ms") or 0) for r in doc["payload"]["responses"]) / 1000)

            def everywhere(version: int = version) -> bool:
                return all(h.router_version() == version for h in hives)

            wait_for(everywhere, 60, f"every router to report policy version {version}")
            t2 = time.perf_counter()
            walls.append(t2 - t0)
            posts.append(t1 - t0)
            status = mother.call("GET", "/opa/status")[1]["payload"]["current"]
            compilers.add(str(status.get("compiler")))
            time.sleep(0.2)
    return {"hives": [h for h, _ in HIVES], "routers": len(HIVES), "runs": runs,
            "wall_s": {"p50": round(statistics.median(walls), 3), "max": round(max(walls), 3)},
            "post_s": {"p50": round(statistics.median(posts), 3), "max": round(max(posts), 3)},
            "slowest_compile_s": {"p50": round(statistics.median(compiles), 3), "max": round(max(compiles), 3)},
            "compiler": ", ".join(sorted(compilers))}


def format_distribution(r: dict[str, Any]) -> list[str]:
    return [f"  compile and distribute to every router of {len(r['hives'])} linked hives ({r['runs']} runs, "
            f"compiler {r['compiler']}): p50 {r['wall_s']['p50'] * 1000:.0f} ms, max {r['wall_s']['max'] * 1000:.0f} ms"
            f"   (target ≤ 2 s; the POST alone answered in p50 {r['post_s']['p50'] * 1000:.0f} ms, of which the "
            f"compile p50 {r['slowest_compile_s']['p50'] * 1000:.0f} ms: the mother compiles, the workers "
            "fetch its artefact)"]
