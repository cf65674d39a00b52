"""``fluxbee wan ca|issue``: make a hive CA and issue hive certificates from it (files, not flags).

``fluxbee wan ca DIR`` writes ``DIR/ca.crt`` and ``DIR/ca.key`` (0600); an existing CA is kept
unless ``--force`` (replacing a CA orphans every certificate it issued).  ``fluxbee wan issue --ca
DIR --hive-id H --out OUT`` writes ``OUT/tls.crt`` and ``OUT/tls.key`` (0600).  Every file is
written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fluxbee.dataplane.link.certs import CertificateError, issue_hive_cert, make_ca, write_pem_pair

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"


def cmd_ca(args: argparse.Namespace) -> int:
    ca_dir = Path(args.dir)
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not args.force:
        print(f"fluxbee wan ca: {existing[0]} exists; keeping it (--force replaces the CA, and every certificate "
              "it issued stops being trusted)", file=sys.stderr)
        return 1
    try:
        cert_pem, key_pem = make_ca(args.common_name, days=args.days)
        write_pem_pair(cert_path, cert_pem, key_path, key_pem)
    except (CertificateError, OSError) as err:
        print(f"fluxbee wan ca: {err}", file=sys.stderr)
        return 2
    print(f"CA written: {cert_path} and {key_path} (0600)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    ca_dir, out = Path(args.ca), Path(args.out)
    try:
        ca_cert = (ca_dir / CA_CERT).read_bytes()
        ca_key = (ca_dir / CA_KEY).read_bytes()
    except OSError as err:
        print(f"fluxbee wan issue: cannot read the CA in {ca_dir}: {err}", file=sys.stderr)
        return 2
    try:
        cert_pem, key_pem = issue_hive_cert(ca_cert, ca_key, args.hive_id, dns_names=args.dns or (),
                                            ip_addresses=args.ip or (), days=args.days)
        write_pem_pair(out / TLS_CERT, cert_pem, out / TLS_KEY, key_pem)
    except (CertificateError, OSError) as err:
        print(f"fluxbee wan issue: {err}", file=sys.stderr)
        return 2
    print(f"certificate for hive {args.hive_id!r} written: {out / TLS_CERT} and {out / TLS_KEY} (0600)")
    return 0


def _days(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of days, got {value!r}")
    return int(value)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = sub.add_parser("wan", help="certificates for links between routers and hives")
    wsub = w.add_subparsers(dest="wan_command", required=True)
    c = wsub.add_parser("ca", help="create a hive CA: DIR/ca.crt and DIR/ca.key")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--common-name", default="fluxbee hive CA", help="the CA's subject CN")
    c.add_argument("--days", type=_days, default=3650)
    c.add_argument("--force", action="store_true", help="replace an existing CA")
    c.set_defaults(func=cmd_ca)
    i = wsub.add_parser("issue", help="issue a hive certificate: OUT/tls.crt and OUT/tls.key")
    i.add_argument("--ca", required=True, metavar="DIR", help="directory holding ca.crt and ca.key")
    i.add_argument("--hive-id", required=True)
    i.add_argument("--out", required=True, metavar="OUT")
    i.add_argument("--dns", action="append", metavar="NAME", help="a DNS name SAN (repeatable)")
    i.add_argument("--ip", action="append", metavar="ADDR", help="an IP address SAN (repeatable)")
    i.add_argument("--days", type=_days, default=365)
    i.set_defaults(func=cmd_issue)
