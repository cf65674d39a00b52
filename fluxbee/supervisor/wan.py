"""``fluxbee up``'s links to other hives: ``Hive.spec.wan`` and the ``--wan-*`` / ``--uplink`` flags.

The flags override ``spec.wan.listen`` and add to its uplinks and authorised hives; a local hive
listens only where the file or ``--wan-listen`` says (not on the cluster default ``0.0.0.0:9000``).  Certificates:
when the CA directory (``--wan-ca DIR``) holds ``ca.key``, the hive's own certificate is issued
from it into ``<run dir>/wan/`` at every start (key 0600); otherwise ``--wan-cert``/``--wan-key``
name the hive's certificate, and ``DIR/ca.crt`` is the CA peers are checked against.  The result is
the router's ``--wan-*`` flags (:func:`router_link_args`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fluxbee.dataplane.link.cli import CA_CERT, CA_KEY, TLS_CERT, TLS_KEY
from fluxbee.dataplane.link.settings import parse_address
from fluxbee.models import Hive


class WanSetupError(Exception):
    """The hive's links cannot be set up; the message says why."""


@dataclass(frozen=True, slots=True)
class WanOptions:
    """The ``fluxbee up`` flags about links."""

    listen: str | None = None
    ca_dir: Path | None = None
    uplinks: tuple[str, ...] = ()
    authorized_hives: tuple[str, ...] = ()
    cert: Path | None = None
    key: Path | None = None
    hello_interval_s: float | None = None
    dead_interval_s: float | None = None


@dataclass(frozen=True, slots=True)
class WanPlan:
    """The links a hive runs with (file and flags merged)."""

    listen: str | None
    uplinks: tuple[str, ...]
    authorized_hives: tuple[str, ...]


def merge(hive: Hive, opts: WanOptions) -> WanPlan | None:
    """The hive file's ``spec.wan`` with the flags applied; None when the hive has no links."""
    spec = hive.spec.wan
    # Only a listen address the file spells out: the model's default (0.0.0.0:9000, a cluster gateway's)
    # would make two local hives that only dial collide on one port.
    listen = opts.listen or (spec.listen if spec is not None and "listen" in spec.model_fields_set else None)
    uplinks: list[str] = []
    for up in spec.uplinks if spec is not None else ():
        if up.address is None:
            raise WanSetupError(f"spec.wan.uplinks: {up.service!r} is a Kubernetes Service; a local hive dials "
                                "addresses (uplinks: [{address: HOST:PORT}])")
        uplinks.append(up.address)
    uplinks += [u for u in opts.uplinks if u not in uplinks]
    authorized = list(spec.authorized_hives if spec is not None else ())
    authorized += [h for h in opts.authorized_hives if h not in authorized]
    for address in ([listen] if listen else []) + uplinks:
        try:
            parse_address(address)
        except ValueError as err:
            raise WanSetupError(str(err)) from err
    if listen is None and not uplinks:
        if authorized or opts.ca_dir or opts.cert:
            raise WanSetupError("link settings without a link: give --wan-listen or --uplink (or spec.wan)")
        return None
    return WanPlan(listen, tuple(uplinks), tuple(authorized))


def prepare_certificates(hive_id: str, run_dir: Path, opts: WanOptions) -> tuple[Path, Path, Path]:
    """(cert, key, CA cert) the router presents and checks with; issues the certificate when the CA key
    is at hand (see the module docstring)."""
    # certificate code (cryptography) only for a hive that has links
    from fluxbee.dataplane.link.certs import CertificateError, hive_id_of, issue_hive_cert, write_pem_pair

    if opts.ca_dir is None:
        raise WanSetupError("links need the hive CA: --wan-ca DIR (made by `fluxbee wan ca DIR`)")
    ca_cert = opts.ca_dir / CA_CERT
    ca_key = opts.ca_dir / CA_KEY
    if not ca_cert.is_file():
        raise WanSetupError(f"{ca_cert}: no CA certificate (make one with `fluxbee wan ca {opts.ca_dir}`)")
    if opts.cert is not None or opts.key is not None:
        if opts.cert is None or opts.key is None:
            raise WanSetupError("--wan-cert and --wan-key go together")
        try:
            found = hive_id_of(opts.cert.read_bytes())
        except (OSError, CertificateError) as err:
            raise WanSetupError(f"--wan-cert {opts.cert}: {err}") from err
        if found != hive_id:
            raise WanSetupError(f"--wan-cert {opts.cert} is for hive {found!r}, not {hive_id!r}")
        if not opts.key.is_file():
            raise WanSetupError(f"--wan-key {opts.key}: no such file")
        return opts.cert, opts.key, ca_cert
    if not ca_key.is_file():
        raise WanSetupError(f"{ca_key} is not there to issue this hive's certificate: give --wan-cert and --wan-key")
    out = run_dir / "wan"
    try:
        cert_pem, key_pem = issue_hive_cert(ca_cert.read_bytes(), ca_key.read_bytes(), hive_id,
                                            ip_addresses=["127.0.0.1"], dns_names=["localhost"])
        write_pem_pair(out / TLS_CERT, cert_pem, out / TLS_KEY, key_pem)
    except (OSError, CertificateError) as err:
        raise WanSetupError(f"cannot issue the certificate of hive {hive_id!r} from {opts.ca_dir}: {err}") from err
    return out / TLS_CERT, out / TLS_KEY, ca_cert


def router_link_args(plan: WanPlan, cert: Path, key: Path, ca: Path, opts: WanOptions) -> tuple[str, ...]:
    """The router flags for ``plan``."""
    args: list[str] = ["--wan-cert", str(cert), "--wan-key", str(key), "--wan-ca-cert", str(ca)]
    if opts.hello_interval_s is not None:
        args += ["--link-hello-interval", f"{opts.hello_interval_s:g}"]
    if opts.dead_interval_s is not None:
        args += ["--link-dead-interval", f"{opts.dead_interval_s:g}"]
    if plan.listen:
        args += ["--wan-listen", plan.listen]
    for address in plan.uplinks:
        args += ["--uplink", address]
    for hive in plan.authorized_hives:
        args += ["--authorized-hive", hive]
    return tuple(args)


def link_args(hive: Hive, hive_id: str, run_dir: Path, opts: WanOptions) -> tuple[str, ...]:
    """Everything above in one step: () for a hive without links."""
    plan = merge(hive, opts)
    if plan is None:
        return ()
    return router_link_args(plan, *prepare_certificates(hive_id, run_dir, opts), opts)

