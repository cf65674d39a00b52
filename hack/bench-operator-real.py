#!/usr/bin/env python3
"""Operator convergence on a real control plane: N FluxNodes in one ``kubectl apply`` → every Pod Running.

Each run starts its own control plane (``hack/cluster-up.sh``: etcd, kube-apiserver,
controller-manager, scheduler, 3 kwok nodes; stopped by ``hack/cluster-down.sh`` whatever
happens), applies the CRDs with the real kubectl, creates a Hive and a Runtime, starts
``fluxbee operator --namespace NS`` as a subprocess (environment: PATH, HOME and KUBECONFIG only),
waits for the Hive to be Ready, then applies N FluxNodes as one multi-document file and measures,
from the moment ``kubectl apply`` starts:

* when every FluxNode has a status for its generation (reconciled once), when N operator Pods
  exist, when all of them are Running (the real scheduler binds them, kwok starts them), and when
  every FluxNode is ``Ready`` with ``observedGeneration`` current — all read from two
  ``kubectl get --watch`` streams opened before the apply;
* the operator's RSS (``/proc/<pid>/status``: sampled, the kernel's high-water mark, and once its
  CPU has gone quiet after convergence) and CPU seconds (``/proc/<pid>/stat``), and the CPU of
  each control-plane process over the same span;
* the API server's ``apiserver_request_total`` over the span, by resource and verb;
* Pods the operator replaced (a name seen with a second UID) and the operator's warnings.

Not a timed test: it measures and reports.  ``--kubeconfig`` uses an existing cluster instead of
starting one (a namespace of its own, deleted afterwards).

    .venv/bin/python hack/bench-operator-real.py [--nodes 500] [--runs 3] [--emulator]
        [--write BENCHMARKS.md] [--json] [--kubeconfig PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
HACK = ROOT / "hack"
SECTION = "## Operator convergence on a real control plane"
FLUXNODE_PODS = "app.kubernetes.io/managed-by=fluxbee-operator,fluxbee.io/fluxnode"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.25


class BenchError(RuntimeError):
    """The benchmark could not run (a tool, the cluster or the operator failed); says which."""


# ---- tools and cluster -----------------------------------------------------------------------

def tools() -> Path:
    """The folder of kubectl and the control-plane binaries (built or cached by build-tools.sh)."""
    proc = subprocess.run(["bash", str(HACK / "build-tools.sh")], capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise BenchError(f"hack/build-tools.sh failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass
class Cluster:
    kubeconfig: Path
    bin: Path
    pids: dict[str, int] = field(default_factory=dict)
    """Control-plane processes by name (only for a cluster this script started)."""

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                "HOME": os.environ.get("HOME", "/"), "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 300) -> str:
        proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if proc.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)[:200]} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout


@contextlib.contextmanager
def own_cluster(bin_dir: Path, node_pods: int) -> Iterator[Cluster]:
    """A control plane of this run's own in a temporary folder, stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="fluxbee-bench-") as tmp:
        state = Path(tmp) / "cluster"
        env = {**os.environ, "FLUXBEE_CLUSTER_NODE_PODS": str(node_pods)}
        try:
            up = subprocess.run(["bash", str(HACK / "cluster-up.sh"), str(state)], capture_output=True, text=True,
                                env=env, timeout=600)
            if up.returncode != 0:
                raise BenchError(f"hack/cluster-up.sh failed ({up.returncode}): {up.stderr.strip()[-3000:]}")
            pids = {}
            for line in (state / "pids").read_text().splitlines():
                name, pid = line.split()
                pids[name] = int(pid)
            yield Cluster(kubeconfig=state / "kubeconfig", bin=bin_dir, pids=pids)
        finally:
            subprocess.run(["bash", str(HACK / "cluster-down.sh"), str(state)], timeout=300)


# ---- /proc -----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (fields 14 and 15 of /proc/<pid>/stat, after the command name)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB: resident now, and the kernel's high-water mark."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ---- API server metrics ----------------------------------------------------------------------

_REQUEST = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def request_counts(cluster: Cluster) -> Counter[tuple[str, str]]:
    """``apiserver_request_total`` summed by (resource[/subresource], verb)."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in cluster.kubectl("get", "--raw", "/metrics", timeout=60).splitlines():
        match = _REQUEST.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        counts[(resource or "-", labels.get("verb", "?"))] += int(float(match["value"]))
    return counts


# ---- watches ---------------------------------------------------------------------------------

class Watch:
    """``kubectl get RESOURCE --watch`` with a jsonpath line per event, kept as name → fields.

    Fields are separated by spaces: kubectl pads the tabs of a jsonpath output into columns.
    """

    def __init__(self, cluster: Cluster, namespace: str, resource: str, columns: list[str],
                 on_change: Callable[[Watch], None], selector: str | None = None, uid_first: bool = False) -> None:
        template = "{.metadata.name}" + "".join('{" "}' + c for c in columns) + '{"\\n"}'
        cmd = ["kubectl", "get", resource, "-n", namespace, "--watch", "-o", f"jsonpath={template}"]
        if selector:
            cmd += ["-l", selector]
        self.lock = threading.Lock()
        self.objects: dict[str, list[str]] = {}
        self.uids: dict[str, set[str]] = {}
        self.events = 0
        self.ended: str | None = None
        self._on_change = on_change
        self._uid_first = uid_first
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=cluster.env)
        self._thread = threading.Thread(target=self._read, name=f"watch-{resource}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            name, *values = line.rstrip("\n").split(" ")
            with self.lock:
                self.events += 1
                self.objects[name] = values
                if self._uid_first and values and values[0]:
                    self.uids.setdefault(name, set()).add(values[0])
                self._on_change(self)
        stderr = self._proc.stderr.read() if self._proc.stderr else ""
        self.ended = f"kubectl watch ended ({self._proc.wait()}): {stderr.strip()[-500:]}"

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
        self._proc.wait(30)
        self._thread.join(30)


# ---- operator --------------------------------------------------------------------------------

class Operator:
    """``fluxbee operator --namespace NS`` with PATH, HOME and KUBECONFIG only; log to a file."""

    def __init__(self, cluster: Cluster, namespace: str, log: IO[bytes]) -> None:
        exe = Path(sys.executable).parent / "fluxbee"
        if not exe.exists():
            raise BenchError(f"{exe} not found: run this script with the project's virtualenv (make setup)")
        self.log = log
        self.proc = subprocess.Popen([str(exe), "operator", "run", "--namespace", namespace], env=cluster.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"the operator exited ({self.proc.returncode}); log:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def poll(what: str, probe: Callable[[], bool], timeout: float, check: Callable[[], None]) -> float:
    """Poll ``probe`` every SAMPLE_EVERY s until true (returns the seconds waited) or fail at the deadline."""
    start = time.perf_counter()
    while not probe():
        check()
        if time.perf_counter() - start > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(SAMPLE_EVERY)
    return time.perf_counter() - start


# ---- one run ---------------------------------------------------------------------------------

def manifests(namespace: str, nodes: int) -> tuple[str, str]:
    """(Hive and Runtime, N FluxNodes) as multi-document YAML."""
    base = f"""apiVersion: fluxbee.io/v1alpha1
kind: Hive
metadata: {{name: bench, namespace: {namespace}}}
spec: {{}}
---
apiVersion: fluxbee.io/v1alpha1
kind: Runtime
metadata: {{name: fluxbee.echo, namespace: {namespace}}}
spec: {{version: 0.1.0, command: [fluxbee, node, echo]}}
"""
    docs = [f"""apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {{name: n{i:04d}, namespace: {namespace}}}
spec: {{hive: bench, nodeName: AI.bench.n{i:04d}, runtime: fluxbee.echo, replicas: 1}}
""" for i in range(nodes)]
    return base, "---\n".join(docs)


def measure(cluster: Cluster, nodes: int, timeout: float, workdir: Path, crds: Path) -> dict[str, Any]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("apply", "-f", str(crds))
    cluster.kubectl("wait", "--for", "condition=Established", "--timeout", "120s", "-f", str(crds))
    cluster.kubectl("create", "namespace", namespace)
    base, burst = manifests(namespace, nodes)
    burst_file = workdir / f"fluxnodes-{namespace}.yaml"
    burst_file.write_text(burst)
    log_path = workdir / f"operator-{namespace}.log"
    with log_path.open("wb") as log:
        operator = Operator(cluster, namespace, log)
        try:
            return _measure(cluster, operator, namespace, nodes, base, burst_file, timeout)
        finally:
            if not cluster.pids:  # an existing cluster: leave it as it was found
                _clean_up(cluster, operator, namespace)
            operator.stop()


def _clean_up(cluster: Cluster, operator: Operator, namespace: str) -> None:
    """Delete the run's resources while the operator still runs (it removes their finalizers),
    then the namespace; a namespace left behind with finalizers and no operator never goes."""
    try:
        if operator.proc.poll() is None:
            cluster.kubectl("delete", "fluxnodes,hives,runtimes", "--all", "-n", namespace, "--timeout=600s",
                            timeout=660)
    except BenchError as err:
        print(f"bench-operator-real: cleaning up {namespace}: {err}", file=sys.stderr)
    finally:
        try:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        except BenchError as err:
            print(f"bench-operator-real: {err}", file=sys.stderr)


def _measure(cluster: Cluster, operator: Operator, namespace: str, nodes: int, base: str, burst_file: Path,
             timeout: float) -> dict[str, Any]:
    cluster.kubectl("apply", "-f", "-", input=base)

    def hive_ready() -> bool:
        phase = cluster.kubectl("get", "hive", "bench", "-n", namespace, "-o", "jsonpath={.status.phase}")
        return phase == "Ready"

    hive_s = poll("the Hive to be Ready (the operator reconciles it; hive Pods Running)", hive_ready, 180,
                  operator.alive)

    marks: dict[str, float] = {}
    t0 = 0.0

    def mark(key: str) -> None:
        if key not in marks and t0:
            marks[key] = time.perf_counter() - t0

    def on_pod(watch: Watch) -> None:
        pods = watch.objects
        if len(pods) >= nodes:
            mark("all_pods_exist")
            if sum(1 for v in pods.values() if v[1] == "Running") >= nodes:
                mark("all_pods_running")
        if pods:
            mark("first_pod")

    def on_fluxnode(watch: Watch) -> None:
        items = watch.objects.values()
        if len(watch.objects) >= nodes:
            mark("all_fluxnodes_exist")  # kubectl apply creates them one by one
        current = [v for v in items if v[1] and v[0] == v[1]]  # observedGeneration == generation
        if len(current) >= nodes:
            mark("all_reconciled")
            if sum(1 for v in current if v[2] == "Ready") >= nodes:
                mark("all_ready")

    rss0, _ = memory_kib(operator.pid)
    cpu0 = cpu_seconds(operator.pid)
    parts0 = {name: cpu_seconds(pid) for name, pid in cluster.pids.items()}
    requests0 = request_counts(cluster)
    load0 = loadavg()
    pods = Watch(cluster, namespace, "pods", ["{.metadata.uid}", "{.status.phase}"], on_pod, selector=FLUXNODE_PODS,
                 uid_first=True)
    fluxnodes = Watch(cluster, namespace, "fluxnodes",
                      ["{.metadata.generation}", "{.status.observedGeneration}", "{.status.phase}"], on_fluxnode)
    peak_sampled = rss0
    try:
        log_start = Path(operator.log.name).stat().st_size  # warnings of the start-up are not the burst's
        t0 = time.perf_counter()
        cluster.kubectl("apply", "-f", str(burst_file), timeout=timeout)
        marks["applied"] = time.perf_counter() - t0
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            operator.alive()
            peak_sampled = max(peak_sampled, memory_kib(operator.pid)[0])
            with pods.lock, fluxnodes.lock:
                if "all_pods_running" in marks and "all_ready" in marks:
                    break
                ended = pods.ended or fluxnodes.ended
            if ended:
                raise BenchError(ended)
            time.sleep(SAMPLE_EVERY)
        converged = time.perf_counter() - t0
        # Settled: the operator's CPU quiet (< 5 % over 2 s) after convergence, or 60 s at most.
        window: list[tuple[float, float]] = []
        quiet = False
        settle_deadline = time.perf_counter() + 60
        while time.perf_counter() < settle_deadline:
            now, cpu = time.perf_counter(), cpu_seconds(operator.pid)
            peak_sampled = max(peak_sampled, memory_kib(operator.pid)[0])
            window.append((now, cpu))
            while len(window) > 1 and now - window[1][0] >= 2.0:
                window.pop(0)  # keep one sample at least 2 s old
            if now - window[0][0] >= 2.0 and cpu - window[0][1] < 0.1:
                quiet = True
                break
            time.sleep(SAMPLE_EVERY)
        settled_s = time.perf_counter() - t0
        rss_end, hwm = memory_kib(operator.pid)
        cpu = cpu_seconds(operator.pid) - cpu0
        parts = {name: round(cpu_seconds(pid) - parts0[name], 1) for name, pid in cluster.pids.items()}
        requests = request_counts(cluster) - requests0
        with pods.lock, fluxnodes.lock:
            pod_count = len(pods.objects)
            running = sum(1 for v in pods.objects.values() if v[1] == "Running")
            replaced = sum(len(u) - 1 for u in pods.uids.values())
            ready = sum(1 for v in fluxnodes.objects.values() if v[2] == "Ready" and v[0] == v[1])
            events = {"pods": pods.events, "fluxnodes": fluxnodes.events}
    finally:
        pods.stop()
        fluxnodes.stop()
    with open(operator.log.name, "rb") as log:
        log.seek(log_start)
        log_text = log.read().decode(errors="replace")
    operator_requests = {f"{r} {v}": n for (r, v), n in requests.most_common()
                         if r.split("/")[0] in ("fluxnodes", "pods", "configmaps", "secrets", "hives", "runtimes")
                         and n > 0}
    return {
        "nodes": nodes, "hive_ready_s": round(hive_s, 1),
        **{k: round(v, 2) for k, v in marks.items()},
        "converged_s": round(converged, 2), "settled_s": round(settled_s, 1), "settled_quiet": quiet,
        "timed_out": "all_pods_running" not in marks or "all_ready" not in marks,
        "pods": pod_count, "pods_running": running, "pods_replaced": replaced, "fluxnodes_ready": ready,
        "watch_events": events,
        "rss_before_mib": round(rss0 / 1024, 1), "rss_peak_mib": round(max(hwm, peak_sampled) / 1024, 1),
        "rss_settled_mib": round(rss_end / 1024, 1), "operator_cpu_s": round(cpu, 1),
        "control_plane_cpu_s": parts,
        "api_requests": sum(requests.values()), "api_requests_by_resource": operator_requests,
        "operator_warnings": sum(1 for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line),
        "operator_retries": log_text.count("will retry"),
        "load_before": load0, "load_after": loadavg(),
    }


def emulator_runs(nodes: int) -> list[dict[str, Any]]:
    """The emulator variant (hack/bench-operator.py) in this session, for the side-by-side."""
    proc = subprocess.run([sys.executable, str(HACK / "bench-operator.py"), "--nodes", str(nodes), "--json"],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise BenchError(f"hack/bench-operator.py failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


# ---- report ----------------------------------------------------------------------------------

def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                          text=True)
    return proc.stdout.strip() or "unknown"


def report(runs: list[dict[str, Any]], emulator: list[dict[str, Any]]) -> str:
    def s(run: dict[str, Any], key: str) -> str:
        return f"{run[key]:.1f} s" if key in run else "—"

    def lag(run: dict[str, Any]) -> str:
        if "all_ready" not in run or "all_fluxnodes_exist" not in run:
            return "—"
        return f"{run['all_ready'] - run['all_fluxnodes_exist']:.1f} s"

    lines = [
        SECTION,
        "",
        "`.venv/bin/python hack/bench-operator-real.py --nodes N --runs K --emulator`: each run starts its own "
        "control plane (`hack/cluster-up.sh`, 3 kwok nodes taking 250 Pods each), applies the CRDs, a Hive and a "
        "Runtime with the real kubectl, runs `fluxbee operator --namespace NS` as a subprocess (admin "
        "kubeconfig), waits for the Hive to be Ready, then applies N FluxNodes (1 replica each) in one "
        "`kubectl apply`. Times from the start of that apply, read from `kubectl get --watch` streams: "
        "every FluxNode with a status for its generation (\"reconciled\"), N Pods exist, N Pods Running "
        "(real scheduler, kwok), every FluxNode `Ready` with `observedGeneration` current. Operator RSS "
        "from `/proc/<pid>/status` (before the apply, peak = kernel high-water mark, settled = once the "
        "operator's CPU is quiet after convergence), CPU from `/proc/<pid>/stat`; API requests are the "
        "API server's `apiserver_request_total` over the span (every client: the operator, kubectl, "
        "scheduler, controllers, kwok). Emulator rows: `hack/bench-operator.py` in the same session (32 "
        "concurrent POSTs instead of kubectl, kmock's emulator instead of the API server, no scheduler or "
        "kubelet, so no Pod is ever Running there). "
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, shared with other work), Python "
        f"{platform.python_version()}, commit `{_commit()}`, {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "| run | applied | reconciled | all Pods exist | all Running | all Ready | Ready after the last "
        "FluxNode | operator RSS before / peak / settled | operator CPU | API requests | Pods replaced | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| real {i} ({r['nodes']}) | {s(r, 'applied')} | {s(r, 'all_reconciled')} | {s(r, 'all_pods_exist')} | "
            f"{s(r, 'all_pods_running')} | {s(r, 'all_ready')}{' (TIMED OUT)' if r['timed_out'] else ''} | "
            f"{lag(r)} | "
            f"{r['rss_before_mib']:.0f} / {r['rss_peak_mib']:.0f} / {r['rss_settled_mib']:.0f} MiB | "
            f"{r['operator_cpu_s']:.1f} s | {r['api_requests']:,} | {r['pods_replaced']} | "
            f"{r['load_before']:.1f}→{r['load_after']:.1f} |"
        )
    for i, e in enumerate(emulator, 1):
        lines.append(
            f"| emulator {i} ({e['nodes']}) | {e['applied_s']:.1f} s | — | {e['all_pods_s']:.1f} s | — | — | — | — | — "
            f"| — | — | — |"
        )
    if runs:
        last = runs[-1]
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in last["control_plane_cpu_s"].items())
        by = ", ".join(f"{k} {v:,}" for k, v in list(last["api_requests_by_resource"].items())[:12])
        lines += [
            "",
            f"Last run, CPU over the same span: operator {last['operator_cpu_s']:.1f} s, {parts}. "
            f"Requests by resource and verb: {by}.",
        ]
    lines.append("")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace this section in ``path`` (or put it after the emulator's section, or at the end)."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        anchor = old.find("## Operator convergence")
        start = old.find("\n## ", anchor + 1) + 1 if anchor >= 0 else 0
        end = start
        if start <= 0:
            start = end = len(old)
    else:
        end = old.find("\n## ", start + 1) + 1 or len(old)
    before, after = old[:start].rstrip("\n"), old[end:]
    path.write_text(before + "\n\n" + text.rstrip("\n") + "\n" + ("\n" + after if after else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run, from the apply")
    parser.add_argument("--node-pods", type=int, default=250, help="Pods each kwok node accepts")
    parser.add_argument("--crds", type=Path, default=ROOT / "crds", help="CRD folder to apply (default: crds/)")
    parser.add_argument("--kubeconfig", type=Path, help="use this cluster instead of starting one per run")
    parser.add_argument("--emulator", action="store_true", help="also run hack/bench-operator.py (side by side)")
    parser.add_argument("--write", type=Path, help="replace this section in the file (BENCHMARKS.md)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown")
    parser.add_argument("--keep", type=Path, help="keep the operator logs and manifests in this folder")
    args = parser.parse_args()
    try:
        bin_dir = tools()
        runs = []
        with contextlib.ExitStack() as stack:
            work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fluxbee-bench-")))
            work.mkdir(parents=True, exist_ok=True)
            for i in range(args.runs):
                with contextlib.ExitStack() as run_stack:
                    if args.kubeconfig:
                        cluster = Cluster(kubeconfig=args.kubeconfig.resolve(), bin=bin_dir)
                    else:
                        cluster = run_stack.enter_context(own_cluster(bin_dir, args.node_pods))
                    result = measure(cluster, args.nodes, args.timeout, work, args.crds)
                runs.append(result)
                print(f"run {i + 1}: {json.dumps(result)}", file=sys.stderr, flush=True)
        emulator = emulator_runs(args.nodes) if args.emulator else []
    except BenchError as err:
        print(f"bench-operator-real: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"real": runs, "emulator": emulator}, indent=1))
    else:
        text = report(runs, emulator)
        print(text)
        if args.write:
            write_section(args.write, text)
    return 0 if not any(r["timed_out"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
