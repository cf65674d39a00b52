"""`fluxbee up` provides the ``hive.yaml`` the original SDKs need before they connect.

The declared node below does what the original SDKs' ``Connect`` does: read ``hive_id`` from
``$JSR_CONFIG_DIR/hive.yaml`` (failing without it), append ``@<hive_id>`` to its name, HELLO on a
router socket and wait for ANNOUNCE.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from hive_harness import node_names, wait_until
from test_local_hive import Up

from fluxbee.supervisor import hive_yaml

ORIGINAL_STYLE_NODE = r"""
import glob, json, os, socket, struct, sys, time, uuid
import yaml
path = os.path.join(os.environ["JSR_CONFIG_DIR"], "hive.yaml")
hive_id = (yaml.safe_load(open(path)) or {}).get("hive_id")
if not hive_id:
    sys.exit(f"{path}: hive_id missing")
name = "WF.hiveyaml.probe@" + hive_id
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sorted(glob.glob(os.path.join(os.environ["FLUXBEE_RUN_DIR"], "routers", "*.sock")))[0])
me = str(uuid.uuid4())
hello = json.dumps({"routing": {"src": me, "dst": None, "ttl": 1, "trace_id": str(uuid.uuid4())},
                    "meta": {"type": "system", "msg": "HELLO"},
                    "payload": {"uuid": me, "name": name, "version": "1.0"}}).encode()
sock.sendall(struct.pack(">I", len(hello)) + hello)
def exact(n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            sys.exit("router closed the connection")
        buf += chunk
    return buf
announce = json.loads(exact(struct.unpack(">I", exact(4))[0]))
if announce["meta"].get("msg") != "ANNOUNCE":
    sys.exit(f"expected ANNOUNCE, got {announce}")
print(json.dumps({"config_dir": os.environ["JSR_CONFIG_DIR"], "name": announce["payload"]["name"]}), flush=True)
while True:
    time.sleep(3600)
"""

HIVE_FILE = """
apiVersion: fluxbee.io/v1alpha1
kind: Hive
metadata: {name: hy}
spec: {hiveId: hyprod, role: worker}
---
apiVersion: fluxbee.io/v1alpha1
kind: Runtime
metadata: {name: original-style}
spec: {version: "1.0", command: %s}
---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {name: hiveyaml}
spec: {hive: hy, nodeName: WF.hiveyaml, runtime: original-style, replicas: 1}
"""

pytestmark = pytest.mark.integration


def test_nodes_built_like_the_original_sdks_find_hive_yaml_and_connect(run_dir: Path) -> None:
    hive_file = run_dir / "hive-in.yaml"
    hive_file.write_text(HIVE_FILE % json.dumps([sys.executable, "-c", ORIGINAL_STYLE_NODE]))
    up = Up(run_dir, hive_file)
    try:
        wait_until(lambda: "WF.hiveyaml.probe@hyprod" in node_names(run_dir) or up.proc.poll() is not None, 30,
                   "the original-style node to connect")
        assert up.proc.poll() is None, up.stderr()[-3000:]
        written = run_dir / "config" / "hive.yaml"
        assert yaml.safe_load(written.read_text()) == {"hive_id": "hyprod", "role": "worker"}
        assert written.read_text().startswith(hive_yaml.MARKER)

        def reported() -> list[str]:
            return [line for p in (run_dir / "logs").glob("WF.hiveyaml*") for line in p.read_text().splitlines()
                    if line.startswith("{")]

        wait_until(lambda: bool(reported()), 10, "the node to report what it read")
        assert json.loads(reported()[-1]) == {"config_dir": str(run_dir / "config"),
                                              "name": "WF.hiveyaml.probe@hyprod"}
    finally:
        assert up.stop() == 0, up.stderr()[-3000:]


def test_a_hive_yaml_fluxbee_did_not_write_is_never_overwritten(run_dir: Path) -> None:
    foreign = run_dir / "config" / "hive.yaml"
    foreign.parent.mkdir()
    foreign.write_text("hive_id: someone-else\nrole: motherbee\n")
    hive_file = run_dir / "hive-in.yaml"
    hive_file.write_text(HIVE_FILE % json.dumps([sys.executable, "-c", ORIGINAL_STYLE_NODE]))
    up = Up(run_dir, hive_file)
    assert up.proc.wait(30) == 2
    up.stop()
    assert "not written by fluxbee up" in up.stderr() and "someone-else" in up.stderr()
    assert foreign.read_text() == "hive_id: someone-else\nrole: motherbee\n"


def test_config_dir_is_etc_fluxbee_only_for_the_system_run_dir(tmp_path: Path) -> None:
    assert hive_yaml.config_dir(Path("/var/run/fluxbee")) == Path("/etc/fluxbee")
    assert hive_yaml.config_dir(tmp_path) == tmp_path / "config"
    same = tmp_path / "config" / "hive.yaml"
    same.parent.mkdir()
    same.write_text("# hand-written\nhive_id: h1\n")
    assert hive_yaml.write(tmp_path / "config", "h1", "motherbee") == same
    assert same.read_text() == "# hand-written\nhive_id: h1\n", "a foreign file with the same hive_id is kept"
    same.write_text(hive_yaml.render("old", "worker"))
    hive_yaml.write(tmp_path / "config", "h1", "motherbee")
    assert yaml.safe_load(same.read_text()) == {"hive_id": "h1", "role": "motherbee"}, "ours is rewritten"
