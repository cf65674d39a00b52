"""Credentials of a local hive (``fluxbee up``): one token per claimed name, and the router's claims.

The router lets a process say HELLO under a claimed name (every declared
FluxNode, every ``SY.*`` service) only with proof (README: Trust model).  Here
the supervisor makes that proof:

* ``<run dir>/credentials/<name>`` (dir 0700, files 0600): a random token,
  created once and kept across restarts, handed to the process through
  ``FLUXBEE_NODE_CREDENTIAL_FILE``;
* ``<run dir>/claims/<name>``: ``{"credential_sha256": [sha256(token)]}``,
  written atomically; the router (``--claims-dir``) polls the directory.

Names are L2 names without ``@hive``.  Claims of names the hive no longer
declares are removed (the name is open again); their tokens stay, so a name
declared again gets the token it had.  Only the files ``fluxbee up`` wrote
(listed in ``claims/.fluxbee-up``) are ever removed: an operator may add a
claims file of their own, e.g. to grant a tool ``ADMIN_COMMAND``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

CREDENTIALS_DIR = "credentials"
CLAIMS_DIR = "claims"
MANIFEST = ".fluxbee-up"
"""In the claims dir: the names whose files fluxbee up wrote (dot-names are not claims)."""
CREDENTIAL_FILE_ENV = "FLUXBEE_NODE_CREDENTIAL_FILE"
ADMIN_NODE = "SY.admin"
"""Runs inside the ``fluxbee up`` process and proves its name with its own token like any node."""


def token_sha256(token: str) -> str:
    """What a claims file holds for a token (the router hashes what HELLO carries the same way)."""
    return hashlib.sha256(token.encode()).hexdigest()


def base_name(name: str) -> str:
    """``WF.echo@hive`` -> ``WF.echo`` (the hive is the text after the last ``@``)."""
    return name.rpartition("@")[0] or name


def credential_path(run_dir: Path, name: str) -> Path:
    """Where the token of ``name`` lives (pure: the plan puts it in each process's environment)."""
    return run_dir / CREDENTIALS_DIR / base_name(name)


def claims_dir(run_dir: Path) -> Path:
    return run_dir / CLAIMS_DIR


def ensure_token(run_dir: Path, name: str) -> str:
    """The token of ``name``, created (0600, in a 0700 directory) if it does not exist yet."""
    directory = run_dir / CREDENTIALS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = credential_path(run_dir, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
        path.unlink()  # an empty file left by a crash between create and write
        return ensure_token(run_dir, name)
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def write_claims(run_dir: Path, names: Iterable[str]) -> None:
    """Make ``<run dir>/claims`` hold exactly one claim per name in ``names`` (tokens created as needed).

    Each file is replaced atomically and only when its content changes (the
    router reloads on any change).  Raises OSError when the run dir is not
    writable: a hive whose names cannot be claimed must not start open.
    """
    wanted = {base_name(n) for n in names}
    directory = claims_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o750)
    for name in sorted(wanted):
        doc = json.dumps({"credential_sha256": [token_sha256(ensure_token(run_dir, name))]}, sort_keys=True)
        path = directory / name
        with contextlib.suppress(OSError):
            if path.read_text(encoding="utf-8") == doc:
                continue
        tmp = directory / f".{name}.tmp"  # dot-names are not read by the router
        tmp.write_text(doc, encoding="utf-8")
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    manifest = directory / MANIFEST
    try:
        ours = set(json.loads(manifest.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        ours = set()
    for name in sorted(ours - wanted):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    tmp = directory / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(sorted(wanted)), encoding="utf-8")
    os.replace(tmp, manifest)


def claimed_names(node_names: Iterable[str]) -> list[str]:
    """The names a local hive claims: its declared and system nodes, and SY.admin."""
    return sorted({base_name(n) for n in node_names} | {ADMIN_NODE})
