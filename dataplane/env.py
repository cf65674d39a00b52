"""Every ``FLUXBEE_*`` environment variable, in one table: name, parser, default, meaning, readers.

The environment is read at the edge (an entry point, or a settings class's ``from_env``) through
:meth:`Var.read`, never with ``os.environ.get("FLUXBEE_…")`` scattered through the code, so each
variable is parsed one way and a bad value is one :class:`SettingsError` that names the variable
(never a traceback from deep inside).  An unset or empty variable means its default.

:data:`VARIABLES` is the table the README's table is checked against (``tests/unit/test_env.py``),
so the two cannot drift.  Like :mod:`fluxbee.dataplane.names` this module is a leaf with only the
standard library: the node SDK reads its variables here with nothing but the base install.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from fluxbee.dataplane.names import check_hive_id

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting that cannot be used; ``source`` is the variable or flag, and the message names it."""

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(message)
        self.source = source


# --- parsers: raise ValueError with the reason; Var.read adds the variable's name ---------------

def text(raw: str) -> str:
    return raw


def path(raw: str) -> Path:
    return Path(raw)


def positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):  # also refuses NaN and infinity
        raise ValueError("expected a positive float")
    return value


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError("expected a positive int")
    return value


def integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def set_means_on(raw: str) -> bool:
    """Any non-empty value turns the switch on (``=1`` by convention)."""
    return True


def zero_means_off(raw: str) -> bool:
    """``0`` turns the feature off; any other value leaves it on."""
    return raw != "0"


def log_level(raw: str) -> int:
    levels = logging.getLevelNamesMapping()
    level = levels.get(raw.strip().upper())
    if level is None:
        raise ValueError("expected a log level: " + ", ".join(sorted(levels, key=levels.__getitem__)))
    return level


def pull_policy(raw: str) -> str:
    if raw not in ("Always", "IfNotPresent", "Never"):
        raise ValueError("expected Always, IfNotPresent or Never")
    return raw


def hive_id(raw: str) -> str:
    return check_hive_id(raw)


_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def object_name(raw: str) -> str:
    """A Kubernetes object name (RFC 1123 subdomain)."""
    if not _OBJECT_NAME.match(raw):
        raise ValueError("expected a Kubernetes object name (lower case, digits, '-', '.')")
    return raw


def secret(raw: str) -> str:
    if not raw.strip():
        raise ValueError("is set but holds only whitespace")
    return raw


# --- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Var(Generic[T]):
    """One environment variable: how to parse it, what it means when unset, who reads it."""

    name: str
    parse: Callable[[str], T]
    default: T
    doc: str
    """One line for the README's table."""
    readers: tuple[str, ...]
    """Which components read it (the README's *read by* column)."""
    default_doc: str = ""
    """The default as the README says it, when ``default`` alone does not say it (None, computed)."""
    is_secret: bool = False
    """Never echo the value in an error message or a log line."""

    def read(self, env: Mapping[str, str] | None = None) -> T:
        """The parsed value from ``env`` (default ``os.environ``); the default when unset or empty."""
        raw = (os.environ if env is None else env).get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as err:
            shown = "" if self.is_secret else f"={raw!r}" if len(raw) <= 100 else f"={raw[:60]!r}… ({len(raw)} chars)"
            raise SettingsError(source=self.name, message=f"{self.name}{shown}: {err}") from None

    @property
    def default_text(self) -> str:
        if self.default_doc:
            return self.default_doc
        return "—" if self.default is None else f"`{self.default}`"


_NODES = ("nodes (SDK)",)
RUN_DIR: Final[Var[Path | None]] = Var(
    "FLUXBEE_RUN_DIR", path, None,
    "Run dir: router sockets, state, logs, credentials.",
    ("nodes (SDK)", "router", "up", "admin", "identity", "status/send"),
    default_doc="`/var/run/fluxbee` as root, else `$XDG_RUNTIME_DIR/fluxbee` or `/tmp/fluxbee-<uid>`")
NODE_CREDENTIAL_FILE: Final[Var[Path | None]] = Var(
    "FLUXBEE_NODE_CREDENTIAL_FILE", path, None,
    "File holding the token that proves a claimed node name in HELLO.", _NODES)
NODE_CONFIG: Final[Var[Path | None]] = Var(
    "FLUXBEE_NODE_CONFIG", path, None,
    "The node's effective config (JSON); its `_system` block names the node.", ("`fluxbee node`",))
PURE_PYTHON: Final[Var[bool]] = Var(
    "FLUXBEE_PURE_PYTHON", set_means_on, False,
    "Any value: ignore the C extension, run the pure-Python paths.", ("router", "nodes (SDK)"),
    default_doc="unset (use C when built)")
LOG: Final[Var[int]] = Var(
    "FLUXBEE_LOG", log_level, logging.INFO,
    "Log level of every `fluxbee` command (`-v` means DEBUG).", ("all commands",), default_doc="`INFO`")
ADMIN_TOKEN: Final[Var[str | None]] = Var(
    "FLUXBEE_ADMIN_TOKEN", secret, None,
    "Admin API bearer token (a token file flag wins over it).", ("up", "admin", "ctl"), is_secret=True)
ADMIN_URL: Final[Var[str]] = Var(
    "FLUXBEE_ADMIN_URL", text, "http://127.0.0.1:8080",
    "Admin API that `fluxbee ctl` calls.", ("ctl",))
ADMIN_HEADER_TIMEOUT: Final[Var[float]] = Var(
    "FLUXBEE_ADMIN_HEADER_TIMEOUT", positive_float, 10.0,
    "Seconds a client may take to send a request line and headers.", ("up", "admin"))
ADMIN_BODY_TIMEOUT: Final[Var[float]] = Var(
    "FLUXBEE_ADMIN_BODY_TIMEOUT", positive_float, 30.0,
    "Seconds a client may take to send a request body.", ("up", "admin"))
ADMIN_MAX_CONNECTIONS: Final[Var[int]] = Var(
    "FLUXBEE_ADMIN_MAX_CONNECTIONS", positive_int, 128,
    "Open admin API connections served at once.", ("up", "admin"))
HIVE_RESOURCE: Final[Var[str | None]] = Var(
    "FLUXBEE_HIVE_RESOURCE", text, None,
    "Name of the Hive resource `fluxbee admin --backend kubernetes` serves.", ("admin",))
SERVICE_ACCOUNT_DIR: Final[Var[Path]] = Var(
    "FLUXBEE_SERVICE_ACCOUNT_DIR", path, Path("/var/run/secrets/kubernetes.io/serviceaccount"),
    "In-cluster service-account directory (token, ca.crt, namespace).", ("admin", "operator"))
IDENTITY_DB_URL: Final[Var[str | None]] = Var(
    "FLUXBEE_IDENTITY_DB_URL", text, None,
    "PostgreSQL URL for SY.identity.", ("up", "identity"), default_doc="embedded PostgreSQL")
UP_IDENTITY: Final[Var[bool]] = Var(
    "FLUXBEE_UP_IDENTITY", zero_means_off, True,
    "`0`: `fluxbee up` runs no SY.identity and no PostgreSQL.", ("up",), default_doc="on")
IMAGE: Final[Var[str]] = Var(
    "FLUXBEE_IMAGE", text, "ghcr.io/fluxbee/fluxbee:0.1.0",
    "Image of hive pods and of runtimes that name none.", ("operator",))
IMAGE_PULL_POLICY: Final[Var[str]] = Var(
    "FLUXBEE_IMAGE_PULL_POLICY", pull_policy, "IfNotPresent",
    "Pull policy of every container the operator creates.", ("operator",))
WATCH_NAMESPACE: Final[Var[str | None]] = Var(
    "FLUXBEE_WATCH_NAMESPACE", text, None,
    "Watch one namespace only.", ("operator",), default_doc="all namespaces")
OPERATOR_PEERING: Final[Var[str | None]] = Var(
    "FLUXBEE_OPERATOR_PEERING", text, None,
    "kopf peering name (several replicas, one active).", ("operator",), default_doc="standalone")
OPERATOR_PRIORITY: Final[Var[int | None]] = Var(
    "FLUXBEE_OPERATOR_PRIORITY", integer, None,
    "Peering priority: the replica with the highest is active.", ("operator",), default_doc="random")
OPERATOR_WORKER_LIMIT: Final[Var[int]] = Var(
    "FLUXBEE_OPERATOR_WORKER_LIMIT", positive_int, 5000,
    "kopf workers per watched kind.", ("operator",))
IDENTITY_KEY_CONFIGMAP: Final[Var[str]] = Var(
    "FLUXBEE_IDENTITY_KEY_CONFIGMAP", text, "fluxbee-identity-key",
    "ConfigMap with SY.identity's public key (degree checks).", ("operator",))
UP_POLICY: Final[Var[bool]] = Var(
    "FLUXBEE_UP_POLICY", zero_means_off, True,
    "`0`: `fluxbee up` runs no SY.policy (no routing policy can be applied).", ("up",), default_doc="on")
OPA: Final[Var[str | None]] = Var(
    "FLUXBEE_OPA", text, None,
    "The `opa` that compiles Rego to WebAssembly (must be an executable file).", ("policy compile", "bench"),
    default_doc="`opa` on `PATH`, else regorus evaluates the source")
OPERATOR_RESYNC_INTERVAL: Final[Var[float]] = Var(
    "FLUXBEE_OPERATOR_RESYNC_INTERVAL", positive_float, 600.0,
    "Seconds between reconciles of every Hive without an event (certificate renewal).", ("operator",))
POSTGRES_IMAGE: Final[Var[str]] = Var(
    "FLUXBEE_POSTGRES_IMAGE", text, "docker.io/library/postgres:17",
    "Image of a mother hive's bundled PostgreSQL (a Hive may name its own).", ("operator",))
WAN_CA_SECRET: Final[Var[str]] = Var(
    "FLUXBEE_WAN_CA_SECRET", object_name, "fluxbee-wan-ca",
    "Secret with the CA the operator issues link certificates from (created once).", ("operator",))
WAN_CA_NAMESPACE: Final[Var[str | None]] = Var(
    "FLUXBEE_WAN_CA_NAMESPACE", object_name, None,
    "Namespace of that CA Secret.", ("operator",), default_doc="the watched namespace, else the Hive's")

# Set by the operator in every FluxNode Pod, for the node's own code; fluxbee reads none of them.
_POD = ("node code (set by the operator)",)
HIVE_ID: Final[Var[str | None]] = Var(
    "FLUXBEE_HIVE_ID", hive_id, None, "The hive the node belongs to.", _POD, default_doc="set in Pods")
NODE_NAME: Final[Var[str | None]] = Var(
    "FLUXBEE_NODE_NAME", text, None, "The node's full L2 name (`name@hive`).", _POD, default_doc="set in Pods")
REPLICA: Final[Var[int | None]] = Var(
    "FLUXBEE_REPLICA", integer, None, "The Pod's replica index.", _POD, default_doc="set in Pods")
AGENT_ILK: Final[Var[str | None]] = Var(
    "FLUXBEE_AGENT_ILK", text, None, "The agent's ILK (FluxNodes with a degree).", _POD, default_doc="set in Pods")
DEGREE: Final[Var[str | None]] = Var(
    "FLUXBEE_DEGREE", text, None, "The degree `name@version` the agent runs.", _POD, default_doc="set in Pods")
RESTARTED_AT: Final[Var[str | None]] = Var(
    "FLUXBEE_RESTARTED_AT", text, None,
    "When the admin API last restarted the node (a new value in the FluxNode's env makes the operator "
    "replace its Pods; nothing reads it).", _POD, default_doc="set in Pods")
IDENTITY_PUBLIC_KEY: Final[Var[Path | None]] = Var(
    "FLUXBEE_IDENTITY_PUBLIC_KEY", path, None, "File with SY.identity's public key (PEM).", _POD,
    default_doc="set in Pods")

VARIABLES: Final[tuple[Var[Any], ...]] = (
    RUN_DIR, NODE_CREDENTIAL_FILE, NODE_CONFIG, PURE_PYTHON, LOG,
    ADMIN_TOKEN, ADMIN_URL, ADMIN_HEADER_TIMEOUT, ADMIN_BODY_TIMEOUT, ADMIN_MAX_CONNECTIONS, HIVE_RESOURCE,
    SERVICE_ACCOUNT_DIR, IDENTITY_DB_URL, UP_IDENTITY, UP_POLICY, OPA,
    IMAGE, IMAGE_PULL_POLICY, WATCH_NAMESPACE, OPERATOR_PEERING, OPERATOR_PRIORITY, OPERATOR_WORKER_LIMIT,
    IDENTITY_KEY_CONFIGMAP, OPERATOR_RESYNC_INTERVAL, POSTGRES_IMAGE, WAN_CA_SECRET, WAN_CA_NAMESPACE,
    HIVE_ID, NODE_NAME, REPLICA, AGENT_ILK, DEGREE, RESTARTED_AT, IDENTITY_PUBLIC_KEY,
)
"""Every ``FLUXBEE_*`` variable, in the README's order."""


# --- the admin token -----------------------------------------------------------------------------

def read_token_file(file: str | Path, flag: str) -> str:
    """The token in ``file`` with surrounding whitespace stripped.

    Missing, unreadable (a directory, no permission, not UTF-8), empty or whitespace-only: a
    :class:`SettingsError` that names ``flag`` and the file.  The token itself never appears in a
    message."""
    where = f"{flag} {file}"
    if not str(file):
        raise SettingsError(source=flag, message=f"{flag}: names no file")
    try:
        content = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(source=flag, message=f"{where}: no such file") from None
    except IsADirectoryError:
        raise SettingsError(source=flag, message=f"{where}: is a directory, not a token file") from None
    except OSError as err:
        raise SettingsError(source=flag, message=f"{where}: cannot read it: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SettingsError(source=flag, message=f"{where}: not UTF-8 text") from None
    token = content.strip()
    if not token:
        raise SettingsError(source=flag, message=f"{where}: " + ("the file is empty" if not content else
                                                  "the file holds only whitespace"))
    return token


def admin_token(env: Mapping[str, str] | None = None, *, token_file: str | Path | None = None,
                file_flag: str = "--token-file", token: str | None = None, token_flag: str = "--token") -> str | None:
    """The admin API's bearer token, read the one way every command reads it.

    Precedence: ``token`` (a flag holding the token itself), then ``token_file`` (a flag naming a
    file, :func:`read_token_file`), then ``$FLUXBEE_ADMIN_TOKEN``; None when none is given.  A
    whitespace-only token from any of them is a :class:`SettingsError` naming its source."""
    if token is not None:
        if not token.strip():
            raise SettingsError(source=token_flag, message=f"{token_flag}: the token is empty or only whitespace")
        return token
    if token_file is not None:
        return read_token_file(token_file, file_flag)
    return ADMIN_TOKEN.read(env)


def markdown_table() -> str:
    """:data:`VARIABLES` as the README shows them (one row each; the README test compares the two)."""
    rows = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    for var in VARIABLES:
        rows.append(f"| `{var.name}` | {', '.join(var.readers)} | {var.default_text} | {var.doc} |")
    return "\n".join(rows)
