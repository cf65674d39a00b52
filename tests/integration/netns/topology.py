"""Hosts as network namespaces joined by veth pairs, or the loopback stand-in where they cannot be made.

Each *host* is a network namespace (``ip netns add``); each *wire* is a veth pair with one end in
each of its two hosts and a /30 of its own.  A process runs on a host through ``ip netns exec`` and
keeps its run dir on the shared filesystem, so the test (in the root namespace) still reaches every
router's Unix socket.  A wire is cut with ``ip link set … down`` and degraded on both ends: delay and
loss with ``tc qdisc … netem`` where the kernel has it, else with netfilter (loss: an ``iptables``
``statistic`` rule dropping incoming packets at random; delay: an ``NFQUEUE`` rule and
``nfqueue_delay.py`` holding each outgoing packet for the delay), and a rate limit with ``tbf``.

Where namespaces cannot be made (not root, no iproute2, no permission), :class:`Loopback` gives the
same interface on 127.0.0.1: every host's gateway gets its own port, a cut freezes the processes of
the wire's far host (SIGSTOP: the connection stays open, only the dead timer notices, as with a
pulled cable), and delay, loss and shaping are unavailable (those tests say so and are skipped).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hive_harness import free_port


class TopologyError(Exception):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise TopologyError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def namespaces_available() -> str | None:
    """None when namespaces can be made here, else why not (``FLUXBEE_TEST_NETNS=0`` forces loopback)."""
    if os.environ.get("FLUXBEE_TEST_NETNS") == "0":
        return "FLUXBEE_TEST_NETNS=0"
    if shutil.which("ip") is None:
        return "no iproute2 (`ip`) on this machine"
    if os.geteuid() != 0:
        return "not root"
    probe = f"fxprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except TopologyError as err:
        return str(err)
    _ip("netns", "del", probe)
    return None


def remove_stale() -> None:
    """Delete the namespaces of earlier runs whose test process is gone (killed before its teardown ran);
    their veth ends go with them."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        found = re.fullmatch(r"fx(\d+)[a-z]\w*", name)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


@dataclass
class Wire:
    a: str
    b: str
    index: int
    devs: dict[str, str] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)


class Topology:
    """The interface both variants offer."""

    kind = ""
    wires: dict[frozenset[str], Wire]

    def argv(self, host: str, argv: list[str]) -> list[str]:
        raise NotImplementedError

    def address(self, host: str, toward: str, port: int) -> str:
        """How ``toward`` reaches a listener of ``host`` on ``port`` (the host's end of their wire)."""
        raise NotImplementedError

    def listen(self, host: str, port: int) -> str:
        raise NotImplementedError

    def port(self, host: str) -> int:
        raise NotImplementedError

    def mesh_port(self, host: str) -> int:
        raise NotImplementedError

    def cut(self, a: str, b: str) -> None:
        raise NotImplementedError

    def heal(self, a: str, b: str) -> None:
        raise NotImplementedError

    def impair(self, a: str, b: str, *, delay_ms: int = 0, loss_percent: int = 0) -> str:
        """Delay and/or drop packets on both ends of the wire (replacing an earlier impairment); returns
        the mechanism used.  Raises :class:`TopologyError` where neither mechanism is available."""
        raise NotImplementedError

    def qdisc(self, a: str, b: str, *spec: str) -> None:
        raise NotImplementedError

    def clear_impairment(self, a: str, b: str) -> None:
        raise NotImplementedError

    def dropped(self, a: str, b: str) -> int:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError


class Namespaces(Topology):
    kind = "netns"

    def __init__(self, hosts: Iterable[str], wires: Iterable[tuple[str, str]]) -> None:
        remove_stale()
        tag = f"fx{os.getpid()}"  # fx + 7 digits + w + wire + host: within the 15 bytes of an interface name
        self.ns = {h: f"{tag}{h}" for h in hosts}
        self.wires = {}
        self.delayers: list[tuple[str, subprocess.Popen[str]]] = []
        try:
            for h in self.ns.values():
                _ip("netns", "add", h)
                _ip("-n", h, "link", "set", "lo", "up")
            for i, (a, b) in enumerate(wires):
                w = Wire(a, b, i)
                w.devs = {a: f"{tag}w{i}{a}"[:15], b: f"{tag}w{i}{b}"[:15]}
                w.addrs = {a: f"10.77.{i}.1", b: f"10.77.{i}.2"}
                _ip("link", "add", w.devs[a], "netns", self.ns[a], "type", "veth", "peer", "name", w.devs[b],
                    "netns", self.ns[b])
                for h in (a, b):
                    _ip("-n", self.ns[h], "addr", "add", f"{w.addrs[h]}/30", "dev", w.devs[h])
                    _ip("-n", self.ns[h], "link", "set", w.devs[h], "up")
                self.wires[frozenset((a, b))] = w
        except BaseException:
            self.teardown()
            raise

    def argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def _wire(self, a: str, b: str) -> Wire:
        return self.wires[frozenset((a, b))]

    def address(self, host: str, toward: str, port: int) -> str:
        return f"{self._wire(host, toward).addrs[host]}:{port}"

    def listen(self, host: str, port: int) -> str:
        return f"0.0.0.0:{port}"

    def port(self, host: str) -> int:
        return 9000  # every host has its own network stack: the same port everywhere

    def mesh_port(self, host: str) -> int:
        return 9100

    def cut(self, a: str, b: str) -> None:
        w = self._wire(a, b)
        for h in (a, b):
            _ip("-n", self.ns[h], "link", "set", w.devs[h], "down")

    def heal(self, a: str, b: str) -> None:
        w = self._wire(a, b)
        for h in (a, b):
            _ip("-n", self.ns[h], "link", "set", w.devs[h], "up")

    def impair(self, a: str, b: str, *, delay_ms: int = 0, loss_percent: int = 0) -> str:
        self.clear_impairment(a, b)
        spec = [*(("delay", f"{delay_ms}ms") if delay_ms else ()),
                *(("loss", f"{loss_percent}%") if loss_percent else ())]
        try:
            self.qdisc(a, b, "netem", *spec)
            return "tc netem"
        except TopologyError as err:
            if "netem" not in str(err).lower() and "unknown qdisc" not in str(err).lower():
                raise
            no_netem = str(err)
        iptables = shutil.which("iptables-legacy") or shutil.which("iptables")
        if iptables is None:
            raise TopologyError(f"{no_netem}; and no iptables to emulate it with netfilter")
        w = self._wire(a, b)
        try:
            for h in (a, b):
                if loss_percent:
                    self._iptables(iptables, h, "-A", "INPUT", "-i", w.devs[h], "-m", "statistic", "--mode", "random",
                                   "--probability", f"{loss_percent / 100:.4f}", "-j", "DROP")
                if delay_ms:
                    queue = 100 + len(self.delayers)
                    self._iptables(iptables, h, "-A", "OUTPUT", "-o", w.devs[h], "-j", "NFQUEUE", "--queue-num",
                                   str(queue), "--queue-bypass")
                    self._start_delayer(h, queue, delay_ms)
        except BaseException:
            self.clear_impairment(a, b)
            raise
        return f"netfilter ({os.path.basename(iptables)} statistic/NFQUEUE; this kernel has no netem)"

    def _iptables(self, iptables: str, host: str, *rule: str) -> None:
        done = subprocess.run(["ip", "netns", "exec", self.ns[host], iptables, *rule], capture_output=True,
                              text=True, timeout=20)
        if done.returncode != 0:
            raise TopologyError(f"{os.path.basename(iptables)} {' '.join(rule)}: {done.stderr.strip()}")

    def _start_delayer(self, host: str, queue: int, delay_ms: int) -> None:
        script = str(Path(__file__).with_name("nfqueue_delay.py"))
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[host], sys.executable, script, "--queue", str(queue),
                                 "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        self.delayers.append((host, proc))
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # "ready" once the queue is bound (EOF if it failed)
        if line != "ready":
            self.delayers.remove((host, proc))
            _, err = proc.communicate(timeout=10)
            raise TopologyError(f"nfqueue_delay on {host}: {err.strip() or 'exited'}")

    def qdisc(self, a: str, b: str, *spec: str) -> None:
        """``tc qdisc replace … root SPEC`` on both ends of the wire (netem, or tbf where netem is missing)."""
        w = self._wire(a, b)
        for h in (a, b):
            done = subprocess.run(["ip", "netns", "exec", self.ns[h], "tc", "qdisc", "replace", "dev", w.devs[h],
                                   "root", *spec], capture_output=True, text=True, timeout=20)
            if done.returncode != 0:
                raise TopologyError(f"tc qdisc {' '.join(spec)} on {w.devs[h]}: {done.stderr.strip()}")

    def qdisc_stats(self, host: str, toward: str) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.ns[host], "tc", "-s", "qdisc", "show", "dev",
                               self._wire(host, toward).devs[host]], capture_output=True, text=True, timeout=20)
        return done.stdout

    def dropped(self, a: str, b: str) -> int:
        """Packets the impairment dropped so far on both ends (netem's qdisc counter, or the iptables rule's)."""
        total = 0
        iptables = shutil.which("iptables-legacy") or shutil.which("iptables")
        for h in (a, b):
            found = re.search(r"dropped (\d+)", self.qdisc_stats(h, b if h == a else a))
            total += int(found.group(1)) if found and "netem" in self.qdisc_stats(h, b if h == a else a) else 0
            if iptables is not None:
                done = subprocess.run(["ip", "netns", "exec", self.ns[h], iptables, "-L", "INPUT", "-v", "-n", "-x"],
                                      capture_output=True, text=True, timeout=20)
                total += sum(int(line.split()[0]) for line in done.stdout.splitlines()
                             if "statistic" in line and "DROP" in line)
        return total

    def clear_impairment(self, a: str, b: str) -> None:
        w = self._wire(a, b)
        iptables = shutil.which("iptables-legacy") or shutil.which("iptables")
        for h in (a, b):
            subprocess.run(["ip", "netns", "exec", self.ns[h], "tc", "qdisc", "del", "dev", w.devs[h], "root"],
                           capture_output=True, timeout=20)
            if iptables is not None:  # the namespaces are the test's own: nothing else has rules in them
                for chain in ("INPUT", "OUTPUT"):
                    subprocess.run(["ip", "netns", "exec", self.ns[h], iptables, "-F", chain], capture_output=True,
                                   timeout=20)
        self._stop_delayers({a, b})

    def _stop_delayers(self, hosts: set[str]) -> None:
        for host, proc in [d for d in self.delayers if d[0] in hosts]:
            proc.terminate()
            try:
                proc.communicate(timeout=10)  # also closes its pipes
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            self.delayers.remove((host, proc))

    def teardown(self) -> None:
        self._stop_delayers(set(self.ns))
        # deleting a namespace destroys the veth ends inside it (and so their peers)
        for h in self.ns.values():
            subprocess.run(["ip", "netns", "del", h], capture_output=True, timeout=20)


class Loopback(Topology):
    kind = "loopback"

    def __init__(self, hosts: Iterable[str], wires: Iterable[tuple[str, str]]) -> None:
        self.ports = {h: free_port() for h in hosts}
        self.mesh_ports = {h: free_port() for h in self.ports}
        self.wires = {frozenset(w): Wire(w[0], w[1], i) for i, w in enumerate(wires)}
        self.pids: dict[str, list[int]] = {h: [] for h in self.ports}
        """Processes per host, registered by the test harness: a cut freezes the far host's."""
        self.frozen: list[int] = []

    def argv(self, host: str, argv: list[str]) -> list[str]:
        return argv

    def address(self, host: str, toward: str, port: int) -> str:
        return f"127.0.0.1:{port}"

    def listen(self, host: str, port: int) -> str:
        return f"127.0.0.1:{port}"

    def port(self, host: str) -> int:
        return self.ports[host]

    def mesh_port(self, host: str) -> int:
        return self.mesh_ports[host]

    def cut(self, a: str, b: str) -> None:
        for pid in self.pids[b]:
            os.kill(pid, signal.SIGSTOP)
            self.frozen.append(pid)

    def heal(self, a: str, b: str) -> None:
        self.thaw()

    def thaw(self) -> None:
        while self.frozen:
            try:
                os.kill(self.frozen.pop(), signal.SIGCONT)
            except ProcessLookupError:
                pass

    def impair(self, a: str, b: str, *, delay_ms: int = 0, loss_percent: int = 0) -> str:
        raise TopologyError("delay and loss on a wire need network namespaces")

    def qdisc(self, a: str, b: str, *spec: str) -> None:
        raise TopologyError("queueing disciplines need network namespaces")

    def clear_impairment(self, a: str, b: str) -> None:
        pass

    def dropped(self, a: str, b: str) -> int:
        return 0

    def teardown(self) -> None:
        self.thaw()


def make(hosts: Iterable[str], wires: Iterable[tuple[str, str]]) -> tuple[Topology, str]:
    """The namespace topology, or the loopback one and the reason namespaces were not used."""
    hosts, wires = list(hosts), list(wires)
    why = namespaces_available()
    if why is None:
        return Namespaces(hosts, wires), ""
    return Loopback(hosts, wires), why
