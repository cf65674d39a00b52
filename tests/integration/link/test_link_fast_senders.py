"""The source binding across a link holds on the fast path too.

A real ``fluxbee router`` (hive A) and, dialling its gateway over mutual TLS, an in-process link
manager playing hive B that advertises one node.  Once A has accepted frames from that node (after
which they take the fast path), B sends frames in the same write as legitimate ones that claim a node
B never advertised, and — after a node with that UUID connected to A itself — the advertised UUID
again: both are dropped and counted, the legitimate frames arrive, stamped with the advertised name.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hive_harness import RouterProc, free_port
from test_link_sessions import make, pki, until  # noqa: F401  (make and pki are fixtures)

from fluxbee.dataplane import wire
from fluxbee.dataplane.link import protocol as p
from fluxbee.dataplane.sdk import NodeConfig, connect

pytestmark = pytest.mark.integration


def frame(src: str, dst: str, payload: object) -> bytes:
    return wire.encode_frame(wire.Message(routing=wire.Routing(src=src, dst=dst, ttl=16, trace_id=str(uuid.uuid4())),
                                          meta=wire.Meta(type=wire.TYPE_USER), payload=payload))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbs", dir="/tmp"))  # a socket path has to fit in 107 bytes
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_frames_from_a_link_are_routed_only_from_senders_the_peer_advertised(
        short_dir: Path, pki: Callable[[str], tuple[Path, Path, Path]],  # noqa: F811
        make: Callable[..., object]) -> None:  # noqa: F811
    cert, key, ca = pki("A")
    port = free_port()
    run_dir = short_dir / "A"
    run_dir.mkdir()
    router = RouterProc(run_dir, hive_id="A", extra=(
        "--wan-listen", f"127.0.0.1:{port}", "--wan-cert", str(cert), "--wan-key", str(key), "--wan-ca-cert", str(ca),
        "--link-hello-interval", "0.2", "--link-dead-interval", "2"))
    dest, inbox = await connect(NodeConfig(name="WF.dest", run_dir=run_dir))
    try:
        b, fake = await make("B", names=["WF.sender"], uplinks=(("127.0.0.1", port),))  # type: ignore[operator,misc]
        sender = fake.nodes[0].uuid
        await until(lambda: b.session_for_hive("A") is not None, timeout=30)
        session = b.session_for_hive("A")
        assert session is not None

        async def received(count: int) -> list[wire.Message]:
            return [await inbox.recv(timeout=10) for _ in range(count)]

        # Until A has B's advert, a frame from WF.sender is dropped: send until one arrives.
        for _ in range(100):
            session.send(frame(sender, "WF.dest@A", "hello"))
            try:
                first = await inbox.recv(timeout=0.3)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError(f"no frame from B's advertised node ever reached WF.dest: {router.status()['wan']}; "
                                 f"{router.log_path.read_text()[-3000:]}")
        while inbox.recv_nowait() is not None:
            pass
        assert first.routing.src == sender and first.routing.src_l2_name == "WF.sender@B"
        before = router.status()["wan"]["drops"].get(p.LINK_SRC_NOT_ADVERTISED, 0)

        # One write: legitimate frames around forged ones (a stranger, and A's own node).
        for i, src in enumerate([sender, str(uuid.uuid4()), sender, dest.uuid, sender]):
            session.send(frame(src, "WF.dest@A", i))
        got = await received(3)
        assert [(m.routing.src, m.routing.src_l2_name, m.payload) for m in got] == [
            (sender, "WF.sender@B", 0), (sender, "WF.sender@B", 2), (sender, "WF.sender@B", 4)]
        await until(lambda: router.status()["wan"]["drops"].get(p.LINK_SRC_NOT_ADVERTISED, 0) == before + 2)

        # A node of A's own now holds the UUID B advertised: B can no longer send as it.
        twin, _ = await connect(NodeConfig(name="WF.twin", run_dir=run_dir, uuid=sender))
        try:
            await until(lambda: any(n["uuid"] == sender for n in router.status()["nodes"]))
            session.send(frame(sender, "WF.dest@A", "forged"))
            await until(lambda: router.status()["wan"]["drops"].get(p.LINK_SRC_NOT_ADVERTISED, 0) == before + 3)
            await asyncio.sleep(0.3)
            assert inbox.recv_nowait() is None
        finally:
            await twin.close()
    finally:
        await dest.close()
        router.stop()
