"""`fluxbee up`'s link settings: spec.wan merged with the flags, certificates issued or checked, bad input refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fluxbee.dataplane.link.certs import hive_id_of, issue_hive_cert, make_ca, write_pem_pair
from fluxbee.models import Hive
from fluxbee.supervisor.wan import WanOptions, WanSetupError, link_args, merge, prepare_certificates


def hive(wan: dict[str, object] | None = None) -> Hive:
    spec: dict[str, object] = {} if wan is None else {"wan": wan}
    return Hive.model_validate({"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive", "metadata": {"name": "h"},
                                "spec": spec})


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    cert, key = make_ca("t")
    write_pem_pair(tmp_path / "ca" / "ca.crt", cert, tmp_path / "ca" / "ca.key", key)
    return tmp_path / "ca"


def test_flags_override_listen_and_extend_the_lists() -> None:
    doc = hive({"listen": "127.0.0.1:9000", "uplinks": [{"address": "10.0.0.1:9000"}], "authorizedHives": ["X"]})
    plan = merge(doc, WanOptions(listen="127.0.0.1:9100", uplinks=("10.0.0.2:9000", "10.0.0.1:9000"),
                                 authorized_hives=("Y",)))
    assert plan is not None
    assert plan.listen == "127.0.0.1:9100"
    assert plan.uplinks == ("10.0.0.1:9000", "10.0.0.2:9000")
    assert plan.authorized_hives == ("X", "Y")
    assert merge(hive(), WanOptions()) is None


def test_a_service_uplink_or_link_settings_without_a_link_are_refused() -> None:
    with pytest.raises(WanSetupError, match="Kubernetes Service"):
        merge(hive({"uplinks": [{"service": "b-gateway"}]}), WanOptions())
    with pytest.raises(WanSetupError, match="without a link"):
        merge(hive(), WanOptions(authorized_hives=("X",)))


def test_the_certificate_is_issued_from_the_ca_key_into_the_run_dir(ca_dir: Path, tmp_path: Path) -> None:
    args = link_args(hive({"listen": "127.0.0.1:9000"}), "A", tmp_path / "run", WanOptions(ca_dir=ca_dir))
    cert = tmp_path / "run" / "wan" / "tls.crt"
    assert hive_id_of(cert.read_bytes()) == "A"
    assert stat.S_IMODE((tmp_path / "run" / "wan" / "tls.key").stat().st_mode) == 0o600
    assert args[:6] == ("--wan-cert", str(cert), "--wan-key", str(tmp_path / "run" / "wan" / "tls.key"),
                        "--wan-ca-cert", str(ca_dir / "ca.crt"))
    assert "--wan-listen" in args


def test_without_the_ca_key_a_given_certificate_must_name_this_hive(ca_dir: Path, tmp_path: Path) -> None:
    cert, key = issue_hive_cert((ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes(), "B")
    write_pem_pair(tmp_path / "b.crt", cert, tmp_path / "b.key", key)
    (ca_dir / "ca.key").unlink()
    with pytest.raises(WanSetupError, match="give --wan-cert"):
        prepare_certificates("B", tmp_path / "run", WanOptions(ca_dir=ca_dir))
    given = WanOptions(ca_dir=ca_dir, cert=tmp_path / "b.crt", key=tmp_path / "b.key")
    assert prepare_certificates("B", tmp_path / "run", given) == (tmp_path / "b.crt", tmp_path / "b.key",
                                                                 ca_dir / "ca.crt")
    with pytest.raises(WanSetupError, match="is for hive 'B', not 'A'"):
        prepare_certificates("A", tmp_path / "run", given)
    with pytest.raises(WanSetupError, match="go together"):
        prepare_certificates("B", tmp_path / "run", WanOptions(ca_dir=ca_dir, cert=tmp_path / "b.crt"))
    with pytest.raises(WanSetupError, match="no such file"):
        prepare_certificates("B", tmp_path / "run", WanOptions(ca_dir=ca_dir, cert=tmp_path / "b.crt",
                                                                 key=tmp_path / "missing.key"))
    (tmp_path / "junk.crt").write_text("junk")
    with pytest.raises(WanSetupError, match="not a certificate"):
        prepare_certificates("B", tmp_path / "run", WanOptions(ca_dir=ca_dir, cert=tmp_path / "junk.crt",
                                                                 key=tmp_path / "b.key"))


def test_no_ca_directory_or_no_ca_certificate_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WanSetupError, match="--wan-ca DIR"):
        prepare_certificates("A", tmp_path, WanOptions())
    with pytest.raises(WanSetupError, match="no CA certificate"):
        prepare_certificates("A", tmp_path, WanOptions(ca_dir=tmp_path / "empty"))


def test_a_local_hive_that_only_dials_does_not_listen_on_the_cluster_default() -> None:
    plan = merge(hive({"uplinks": [{"address": "127.0.0.1:9000"}]}), WanOptions())
    assert plan is not None and plan.listen is None and plan.uplinks == ("127.0.0.1:9000",)
