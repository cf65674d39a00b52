"""Hive certificates: issued, verified by TLS 1.3 mutual authentication, hive id read back; bad input refused."""

from __future__ import annotations

import datetime
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fluxbee.dataplane.link.certs import CertificateError, hive_id_of, issue_hive_cert, make_ca, write_pem_pair


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return make_ca("test CA")


def test_issued_certificate_names_the_hive_in_cn_and_uri_san(ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = issue_hive_cert(*ca, "sao-paulo", dns_names=["gw.example"], ip_addresses=["10.0.0.1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sao-paulo"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["fluxbee://hive/sao-paulo"]
    assert san.get_values_for_type(x509.DNSName) == ["gw.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert hive_id_of(cert_pem) == "sao-paulo"
    assert hive_id_of(cert.public_bytes(serialization.Encoding.DER)) == "sao-paulo"
    assert b"PRIVATE KEY" in key_pem


def _context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, tmp: Path, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca_pem.decode())
    (tmp / "c.pem").write_bytes(cert_pem)
    (tmp / "k.pem").write_bytes(key_pem)
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[bytes | None, bytes | None]:
    """Run a TLS handshake in memory; return (cert the server saw, cert the client saw), DER."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_side=False)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client's certificate after its own handshake returns;
            # a read flushes any alert it raises.
            for obj in (s, c):
                try:
                    obj.read(1)
                except ssl.SSLWantReadError:
                    pass
                s_in.write(c_out.read())
                c_in.write(s_out.read())
            return s.getpeercert(binary_form=True), c.getpeercert(binary_form=True)
    raise AssertionError("handshake did not finish")


def test_two_hives_of_one_ca_authenticate_each_other_over_tls13(ca: tuple[bytes, bytes], tmp_path: Path) -> None:
    a = issue_hive_cert(*ca, "A")
    b = issue_hive_cert(*ca, "B")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    server, client = _context(ca[0], *a, tmp_path / "a", True), _context(ca[0], *b, tmp_path / "b", False)
    seen_by_a, seen_by_b = _handshake(server, client)
    assert seen_by_a is not None and hive_id_of(seen_by_a) == "B"
    assert seen_by_b is not None and hive_id_of(seen_by_b) == "A"


def test_a_certificate_from_another_ca_fails_the_handshake(ca: tuple[bytes, bytes], tmp_path: Path) -> None:
    other_ca = make_ca("other")
    a = issue_hive_cert(*ca, "A")
    rogue = issue_hive_cert(*other_ca, "B")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ssl.SSLError):
        _handshake(_context(ca[0], *a, tmp_path / "a", True), _context(ca[0], *rogue, tmp_path / "b", False))


def test_hive_id_of_refuses_certificates_without_a_hive(ca: tuple[bytes, bytes]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "A")]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "A")])).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    bare = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateError, match="no subjectAltName"):
        hive_id_of(bare)
    dns_only = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("a.example")]), critical=False)
    with pytest.raises(CertificateError, match="names no hive"):
        hive_id_of(dns_only.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    two = builder.add_extension(x509.SubjectAlternativeName([
        x509.UniformResourceIdentifier("fluxbee://hive/A"), x509.UniformResourceIdentifier("fluxbee://hive/B")]),
        critical=False)
    with pytest.raises(CertificateError, match="several hives"):
        hive_id_of(two.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateError, match="not a certificate"):
        hive_id_of(b"garbage")
    with pytest.raises(CertificateError, match="not a certificate"):
        hive_id_of(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize("hive_id", ["", "a/b", "-x", "a" * 64, "a b"])
def test_bad_hive_ids_are_refused(ca: tuple[bytes, bytes], hive_id: str) -> None:
    with pytest.raises(CertificateError, match="hive id"):
        issue_hive_cert(*ca, hive_id)


def test_bad_ca_material_and_addresses_are_refused(ca: tuple[bytes, bytes]) -> None:
    other = make_ca("other")
    with pytest.raises(CertificateError, match="does not belong"):
        issue_hive_cert(ca[0], other[1], "A")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        issue_hive_cert(b"nope", ca[1], "A")
    with pytest.raises(CertificateError, match="private key"):
        issue_hive_cert(ca[0], b"nope", "A")
    leaf_cert, leaf_key = issue_hive_cert(*ca, "A")
    with pytest.raises(CertificateError, match="not a CA"):
        issue_hive_cert(leaf_cert, leaf_key, "B")
    with pytest.raises(CertificateError, match="not an IP address"):
        issue_hive_cert(*ca, "A", ip_addresses=["300.1.1.1"])
    with pytest.raises(CertificateError, match="not a DNS name"):
        issue_hive_cert(*ca, "A", dns_names=["a b"])
    with pytest.raises(CertificateError, match="positive"):
        make_ca("x", days=0)


def test_pem_pair_is_written_with_a_private_key_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_pem_pair(tmp_path / "d" / "tls.crt", b"cert", tmp_path / "d" / "tls.key", b"key")
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "tls.key").st_mode) == 0o600
    assert (tmp_path / "d" / "tls.crt").read_bytes() == b"cert"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["tls.crt", "tls.key"]


def _fluxbee(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxbee", *args], capture_output=True, text=True, timeout=60)


def test_wan_cli_creates_a_ca_refuses_to_overwrite_it_and_issues_from_it(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    first = _fluxbee("wan", "ca", str(ca_dir))
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    before = (ca_dir / "ca.key").read_bytes()
    again = _fluxbee("wan", "ca", str(ca_dir))
    assert again.returncode == 1 and "exists" in again.stderr
    assert (ca_dir / "ca.key").read_bytes() == before
    forced = _fluxbee("wan", "ca", str(ca_dir), "--force")
    assert forced.returncode == 0 and (ca_dir / "ca.key").read_bytes() != before
    out = tmp_path / "hive-b"
    issued = _fluxbee("wan", "issue", "--ca", str(ca_dir), "--hive-id", "B", "--out", str(out),
                      "--dns", "b.example", "--ip", "127.0.0.1")
    assert issued.returncode == 0, issued.stderr
    assert hive_id_of((out / "tls.crt").read_bytes()) == "B"
    assert stat.S_IMODE(os.stat(out / "tls.key").st_mode) == 0o600
    bad = _fluxbee("wan", "issue", "--ca", str(ca_dir), "--hive-id", "no/slash", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "hive id" in bad.stderr and not (tmp_path / "x").exists()
    missing = _fluxbee("wan", "issue", "--ca", str(tmp_path / "nowhere"), "--hive-id", "B", "--out", str(out))
    assert missing.returncode == 2 and "cannot read the CA" in missing.stderr
