"""How a router's links run: listeners, uplinks, mesh peers, certificates, timers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class LinkConfigError(Exception):
    """Link settings that cannot work (no certificate, unreadable files, bad addresses)."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port); ValueError with the reason otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """A router's link settings (the ``--wan-*``, ``--uplink``, ``--mesh-*`` and ``--link-*`` flags)."""

    wan_listen: tuple[str, int] | None = None
    """Accept WAN links (other hives) here."""
    uplinks: tuple[tuple[str, int], ...] = ()
    """Dial these WAN peers, redialling with backoff."""
    authorized_hives: frozenset[str] = frozenset()
    """Hives allowed on WAN links; empty: any hive whose certificate the CA signed."""
    cert: Path | None = None
    """This hive's certificate (PEM); mesh and WAN links present the same one."""
    key: Path | None = None
    ca_cert: Path | None = None
    """The hive CA (PEM) every peer certificate must chain to."""
    mesh_listen: tuple[str, int] | None = None
    mesh_peers: tuple[tuple[str, int], ...] = ()
    mesh_dns: tuple[str, int] | None = None
    """A name (a headless Service) resolved every ``mesh_dns_interval_s``; every address is dialled."""
    mesh_dns_interval_s: float = 5.0
    insecure_dev: bool = False
    """Plaintext links, peers believed on their word: development only."""
    hello_interval_s: float = 10.0
    dead_interval_s: float = 40.0
    max_buffer: int = 4 * 1024 * 1024
    """Outbound bytes queued per link before data frames are dropped (and answered DST_CONGESTED)."""

    @property
    def enabled(self) -> bool:
        return bool(self.wan_listen or self.uplinks or self.mesh_listen or self.mesh_peers or self.mesh_dns)

    def check(self) -> None:
        """Raise :class:`LinkConfigError` for settings that cannot work."""
        if not self.enabled:
            return
        if not 0 < self.hello_interval_s < self.dead_interval_s:
            raise LinkConfigError(f"need 0 < hello interval ({self.hello_interval_s:g} s) < dead interval "
                                  f"({self.dead_interval_s:g} s)")
        if self.insecure_dev:
            return
        missing = [flag for flag, value in (("--wan-cert", self.cert), ("--wan-key", self.key),
                                            ("--wan-ca-cert", self.ca_cert)) if value is None]
        if missing:
            raise LinkConfigError(f"links need a certificate: {', '.join(missing)} missing (or --link-insecure-dev "
                                  "for plaintext development links)")
        for path in (self.cert, self.key, self.ca_cert):
            if path is not None and not path.is_file():
                raise LinkConfigError(f"cannot read {path}: no such file")
