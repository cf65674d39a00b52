"""``router --policy-dir``: reading a mounted policy and refusing what must not run."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from fluxbee.dataplane.policy import Artefact
from fluxbee.dataplane.router.policy_dir import MountMoved, MountRefused, read_mounted, signature

SOURCE = 'package router\n\ntarget := "WF.a@h"\n'


def artefact_bytes() -> bytes:
    return Artefact(source=SOURCE, wasm=None, sha256=Artefact.digest(SOURCE, None), compiler="regorus").to_bytes()


def write(directory: Path, version: bytes = b"3", raw: bytes | None = None, sha: bytes | None = None) -> bytes:
    raw = artefact_bytes() if raw is None else raw
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "version").write_bytes(version)
    (directory / "artefact").write_bytes(raw)
    (directory / "sha256").write_bytes(hashlib.sha256(raw).hexdigest().encode() if sha is None else sha)
    return raw


def test_a_plain_directory_is_read_and_checked(tmp_path: Path) -> None:
    raw = write(tmp_path, b"3\n", sha=b"sha256:" + hashlib.sha256(artefact_bytes()).hexdigest().encode())
    mounted = read_mounted(tmp_path)
    assert mounted is not None and (mounted.version, mounted.raw) == (3, raw)
    assert mounted.artefact.source == SOURCE


def test_an_empty_or_missing_directory_holds_no_policy(tmp_path: Path) -> None:
    assert read_mounted(tmp_path) is None
    assert signature(tmp_path / "absent") is None


def test_kubelets_layout_is_read_through_one_data_link(tmp_path: Path) -> None:
    write(tmp_path / "..2026_01_01", b"5")
    os.symlink("..2026_01_01", tmp_path / "..data")
    for key in ("artefact", "version", "sha256"):
        os.symlink(f"..data/{key}", tmp_path / key)
    mounted = read_mounted(tmp_path)
    assert mounted is not None and mounted.version == 5
    assert signature(tmp_path) == "data:..2026_01_01"
    os.symlink("..2026_01_02", tmp_path / "..tmp")  # kubelet renamed ..data to a directory it then removed
    os.replace(tmp_path / "..tmp", tmp_path / "..data")
    with pytest.raises(MountMoved):
        read_mounted(tmp_path)


@pytest.mark.parametrize("version, raw, sha, code", [
    (b"0", None, None, "INVALID_REQUEST"),
    (b"three", None, None, "INVALID_REQUEST"),
    (b"3", None, b"not-a-digest", "INVALID_REQUEST"),
    (b"3", None, hashlib.sha256(b"other").hexdigest().encode(), "HASH_MISMATCH"),
    (b"3", b"\x00\x01 not msgpack", None, "POLICY_LOAD_ERROR"),
])
def test_bad_content_is_refused_with_a_code(tmp_path: Path, version: bytes, raw: bytes | None, sha: bytes | None,
                                            code: str) -> None:
    write(tmp_path, version, raw, sha)
    with pytest.raises(MountRefused) as caught:
        read_mounted(tmp_path)
    assert caught.value.code == code


def test_a_missing_key_or_an_oversized_artefact_is_refused(tmp_path: Path) -> None:
    write(tmp_path)
    with pytest.raises(MountRefused, match="larger than 10 bytes"):
        read_mounted(tmp_path, max_bytes=10)
    (tmp_path / "sha256").unlink()
    with pytest.raises(MountRefused, match="sha256 is missing"):
        read_mounted(tmp_path)


def test_an_artefact_whose_module_digest_was_changed_is_refused(tmp_path: Path) -> None:
    forged = Artefact(source=SOURCE, wasm=None, sha256="0" * 64, compiler="regorus").to_bytes()
    write(tmp_path, raw=forged)  # the delivered sha256 matches the bytes; the artefact's own digest does not
    with pytest.raises(MountRefused, match="hash mismatch") as caught:
        read_mounted(tmp_path)
    assert caught.value.code == "POLICY_LOAD_ERROR"
