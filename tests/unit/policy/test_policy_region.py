"""The policy region (fluxbee.dataplane.shm.policy) and the artefact's byte form."""

from __future__ import annotations

import hashlib
import mmap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import posix_ipc
import pytest

from fluxbee.dataplane.policy import Artefact, PolicyLoadError
from fluxbee.dataplane.shm.policy import (
    POLICY_ARTEFACT_OFFSET,
    PolicyDigestError,
    PolicyRegion,
    PolicyRegionReader,
    artefact_digest,
    normalise_digest,
    policy_region_name,
)
from fluxbee.dataplane.shm.region import RegionBusyError, RegionNotFoundError

OWNER = "6f1c0a52-5a3e-4c3e-9a8e-0c1d2e3f4a5b"
SOURCE = 'package router\n\ntarget := "AI.support@prod"\n'


def _artefact(source: str = SOURCE, data: dict[str, object] | None = None) -> Artefact:
    return Artefact(source=source, wasm=None, sha256=Artefact.digest(source, None),
                    data=data or {}, compiler="regorus", fallback_reason="no opa")


@pytest.fixture
def hive(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    hive_id = f"t{uuid.uuid4().hex[:10]}"
    yield hive_id, tmp_path
    try:
        posix_ipc.unlink_shared_memory(policy_region_name(hive_id, tmp_path))
    except posix_ipc.ExistentialError:
        pass


def _publish(region: PolicyRegion, blob: bytes, version: int) -> None:
    region.publish(blob, version, artefact_digest(blob), engine="regorus",
                   entrypoints=["router/target"])


def test_artefact_round_trips_through_bytes_and_refuses_bad_ones() -> None:
    art = _artefact(data={"tiers": {"gold": 1}})
    blob = art.to_bytes()
    assert blob == _artefact(data={"tiers": {"gold": 1}}).to_bytes()  # deterministic
    back = Artefact.from_bytes(blob)
    assert back == art and back.engine == "regorus"
    wasm_art = Artefact(source=SOURCE, wasm=b"\0asm\1\0\0\0", sha256=Artefact.digest("", b"\0asm\1\0\0\0"),
                        allow_entrypoint="router/allow")
    assert Artefact.from_bytes(wasm_art.to_bytes()).entrypoints == ("router/target", "router/allow")
    with pytest.raises(PolicyLoadError, match="not a policy artefact"):
        Artefact.from_bytes(blob[:-3])
    with pytest.raises(PolicyLoadError, match="not a policy artefact"):
        Artefact.from_bytes(b"\x93\x01\x02\x03")
    tampered = Artefact(source=SOURCE + "# x\n", wasm=None, sha256=art.sha256).to_bytes()
    with pytest.raises(PolicyLoadError, match="hash mismatch"):
        Artefact.from_bytes(tampered)


def test_publish_then_read(hive: tuple[str, Path]) -> None:
    hive_id, run_dir = hive
    with pytest.raises(RegionNotFoundError):
        PolicyRegionReader.open(hive_id, run_dir)
    with PolicyRegion.create(hive_id, owner_uuid=OWNER, run_dir=run_dir, capacity_bytes=1 << 16) as region:
        reader = PolicyRegionReader.open(hive_id, run_dir)
        assert reader.read() is None and reader.version() == (0, "00" * 32)
        blob = _artefact().to_bytes()
        region.publish(blob, 3, "sha256:" + artefact_digest(blob), engine="wasm",
                       entrypoints=("router/target", "router/allow"))
        snap = reader.read()
        assert snap is not None
        assert (snap.version, snap.sha256, snap.artefact) == (3, artefact_digest(blob), blob)
        assert snap.engine == "wasm" and snap.entrypoints == ("router/target", "router/allow")
        assert reader.version() == (3, artefact_digest(blob))
        assert Artefact.from_bytes(snap.artefact) == _artefact()
        reader.close()


def test_publish_refuses_without_writing(hive: tuple[str, Path]) -> None:
    hive_id, run_dir = hive
    with PolicyRegion.create(hive_id, owner_uuid=OWNER, run_dir=run_dir, capacity_bytes=4096) as region:
        blob = _artefact().to_bytes()
        _publish(region, blob, 5)
        other = _artefact(data={"x": 1}).to_bytes()
        with pytest.raises(ValueError, match="must be > 5"):
            _publish(region, other, 5)
        with pytest.raises(ValueError, match="must be > 5"):
            _publish(region, other, 4)
        with pytest.raises(ValueError, match="hash to"):
            region.publish(other, 6, artefact_digest(blob), engine="regorus", entrypoints=["router/target"])
        with pytest.raises(ValueError, match="SHA-256"):
            region.publish(other, 6, "sha256:xyz", engine="regorus", entrypoints=["router/target"])
        with pytest.raises(ValueError, match="holds 4096"):
            big = b"x" * 5000
            _publish(region, big, 6)
        with pytest.raises(ValueError, match="engine"):
            region.publish(other, 6, artefact_digest(other), engine="lua",  # type: ignore[arg-type]
                           entrypoints=["router/target"])
        with pytest.raises(ValueError, match="entry points"):
            region.publish(other, 6, artefact_digest(other), engine="wasm", entrypoints=[])
        with PolicyRegionReader.open(hive_id, run_dir) as reader:
            snap = reader.read()
            assert snap is not None and (snap.version, snap.artefact) == (5, blob)


def test_second_live_writer_is_refused(hive: tuple[str, Path]) -> None:
    hive_id, run_dir = hive
    with PolicyRegion.create(hive_id, owner_uuid=OWNER, run_dir=run_dir, capacity_bytes=1024):
        with pytest.raises(RegionBusyError):
            PolicyRegion.create(hive_id, owner_uuid=OWNER, run_dir=run_dir, capacity_bytes=1024)


def test_tampered_bytes_are_refused_by_the_reader(hive: tuple[str, Path]) -> None:
    hive_id, run_dir = hive
    with PolicyRegion.create(hive_id, owner_uuid=OWNER, run_dir=run_dir, capacity_bytes=1 << 14) as region:
        blob = _artefact().to_bytes()
        _publish(region, blob, 1)
        shm = posix_ipc.SharedMemory(policy_region_name(hive_id, run_dir))
        mm = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        mm[POLICY_ARTEFACT_OFFSET + 10] ^= 0xFF
        with PolicyRegionReader.open(hive_id, run_dir) as reader, pytest.raises(PolicyDigestError) as err:
            reader.read()
        assert err.value.stored == artefact_digest(blob)
        mm.close()


def test_digest_forms() -> None:
    hexd = hashlib.sha256(b"a").hexdigest()
    assert normalise_digest(hexd) == normalise_digest("sha256:" + hexd) == hexd
    for bad in ("", "sha256:", hexd.upper(), hexd[:-1], 5):
        with pytest.raises(ValueError):
            normalise_digest(bad)  # type: ignore[arg-type]


def test_readers_never_see_a_half_written_artefact(hive: tuple[str, Path]) -> None:
    """Two artefacts of 1 MiB of different bytes, republished alternately while a reader reads:
    every read is one of them, whole (the reader's digest check would raise otherwise)."""
    hive_id, run_dir = hive
    blobs = [bytes([i]) * (1 << 20) for i in (1, 2)]
    with PolicyRegion.create(hive_id, owner_uuid=OWNER, run_dir=run_dir, capacity_bytes=2 << 20) as region:
        _publish(region, blobs[0], 1)
        stop = threading.Event()
        seen: set[bytes] = set()
        wrong: list[object] = []
        reads = 0

        def read_loop() -> None:
            nonlocal reads
            with PolicyRegionReader.open(hive_id, run_dir) as reader:
                while not stop.is_set():
                    try:
                        snap = reader.read()
                    except Exception as exc:  # a digest error would mean a torn copy
                        wrong.append(exc)
                        continue
                    if snap is None or snap.artefact not in blobs:
                        wrong.append(snap)
                    else:
                        seen.add(snap.artefact[:1])
                    reads += 1

        thread = threading.Thread(target=read_loop)
        thread.start()
        for version in range(2, 200):
            _publish(region, blobs[version % 2], version)
        stop.set()
        thread.join()
        assert wrong == [] and reads > 0 and seen <= {b"\x01", b"\x02"}
