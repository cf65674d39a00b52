"""Who may say what on the router socket: claimed names and their proofs (pure: no sockets).

Any process that can open the router socket can say HELLO; what it may call
itself is decided here.  A name is *claimed* when the claims directory has a
file for it (``WF.echo``, ``SY.identity``: the L2 name without ``@hive``), and
``SY.*`` / ``RT.*`` names are claimed always — with no file, nobody can take
them.  Each file holds JSON::

    {"credential_sha256": ["<64 hex>", ...], "uids": [int, ...], "gids": [int, ...],
     "grants": ["CONFIG_CHANGED", "ADMIN_COMMAND"]}

(every field optional).  A HELLO for a claimed name succeeds only when the
peer's ``SO_PEERCRED`` uid is in ``uids``, or its gid is in ``gids``, or the
sha256 of the ``credential`` it sent is in ``credential_sha256``.  No uid is
trusted implicitly — not root, not the router's own: in a local hive an
attacker usually runs as the same user as the hive.  The router stores only
the hashes; the tokens live with the processes (``fluxbee up`` writes them to
``<run dir>/credentials/``, the operator mounts a Secret).

``CONFIG_CHANGED`` and ``ADMIN_COMMAND`` are privileged: only a connection
that proved a claim, and is a ``SY.*`` node or lists the message in its
claim's ``grants``, may send them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fluxbee.dataplane import wire
from fluxbee.dataplane.names import RESERVED_PREFIXES, SYSTEM_PREFIX

ALWAYS_CLAIMED = RESERVED_PREFIXES
PRIVILEGED = frozenset({wire.CONFIG_CHANGED, wire.ADMIN_COMMAND, wire.LINK_ADD, wire.LINK_REMOVE, wire.OPA_RELOAD})
"""Messages only authenticated system nodes (or granted names) may send."""
NAME_CLAIMED = "NAME_CLAIMED"
"""Detail prefix of the INVALID_HELLO that refuses an unproven claim."""
UUID_IN_USE = "UUID_IN_USE"
"""Detail prefix of the INVALID_HELLO that keeps a UUID's incumbent connection."""
PEER_LIMIT = "PEER_LIMIT"
"""Detail prefix of the INVALID_HELLO / close that enforces a per-peer connection limit."""
FORBIDDEN = "FORBIDDEN"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYS = frozenset({"credential_sha256", "uids", "gids", "grants"})


class ClaimsError(ValueError):
    """A claims file or directory that cannot be used; the previous claims stay in force."""


@dataclass(frozen=True, slots=True)
class PeerCred:
    """``SO_PEERCRED`` of a connection: the process that opened it (as the kernel says)."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Claim:
    """How one claimed name may be proven, and what it is granted."""

    credential_sha256: frozenset[str] = frozenset()
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    grants: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a HELLO's claim check."""

    ok: bool
    claimed: bool
    """The name is claimed (a proven connection gets the claimed-name headroom)."""
    grants: frozenset[str] = frozenset()
    detail: str = ""


def token_sha256(token: str) -> str:
    """Lowercase hex sha256 of a token's UTF-8 bytes (what claims files hold)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_claim(text: str, source: str) -> Claim:
    """One claims file's JSON; raises :class:`ClaimsError` naming the file and the problem."""
    try:
        doc = json.loads(text) if text.strip() else {}
    except ValueError as err:
        raise ClaimsError(f"{source}: not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ClaimsError(f"{source}: expected a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ClaimsError(f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    hashes = _strs(doc, "credential_sha256", source)
    for h in hashes:
        if not _HEX64.match(h):
            raise ClaimsError(f"{source}: credential_sha256 entries must be 64 lowercase hex characters")
    uids = _ints(doc, "uids", source)
    gids = _ints(doc, "gids", source)
    grants = _strs(doc, "grants", source)
    bad = sorted(set(grants) - PRIVILEGED)
    if bad:
        raise ClaimsError(f"{source}: grants may only name {', '.join(sorted(PRIVILEGED))}, not {', '.join(bad)}")
    return Claim(frozenset(hashes), frozenset(uids), frozenset(gids), frozenset(grants))


def _strs(doc: Mapping[str, object], key: str, source: str) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClaimsError(f"{source}: {key} must be a list of strings")
    return [str(v) for v in value]


def _ints(doc: Mapping[str, object], key: str, source: str) -> list[int]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ClaimsError(f"{source}: {key} must be a list of whole numbers")
    ids = [int(v) for v in value]
    if any(not 0 <= v < 2**32 for v in ids):
        raise ClaimsError(f"{source}: {key} must hold ids between 0 and 2^32-1")
    return ids


def load_claims_dir(directory: Path) -> dict[str, Claim]:
    """Every claim in ``directory`` (regular files and symlinks to them; dot-names ignored).

    All or nothing: one bad file raises :class:`ClaimsError`, so a typo never
    silently opens a name that was claimed.  A missing directory is an error too.
    """
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as err:
        raise ClaimsError(f"{directory}: cannot list: {err.strerror}") from err
    claims: dict[str, Claim] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue  # ConfigMap volumes: ..data/ and ..<timestamp>/
        path = Path(entry.path)
        try:
            if not path.is_file():  # follows symlinks
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ClaimsError(f"{path}: cannot read: {err}") from err
        if "@" in entry.name:
            raise ClaimsError(f"{path}: claims files are named after the node name without @hive")
        claims[entry.name] = parse_claim(text, str(path))
    return claims


def dir_signature(directory: Path) -> tuple[tuple[str, int, int, int], ...] | None:
    """What changes when any claim changes (polled; None if the directory cannot be read)."""
    try:
        out = []
        for entry in os.scandir(directory):
            if entry.name.startswith(".") and entry.name != "..data":
                continue
            st = os.stat(entry.path)  # follows symlinks: a ConfigMap swap changes ..data's target
            out.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sorted(out))
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims in force; replaced whole when the directory changes."""

    by_name: Mapping[str, Claim]

    @classmethod
    def empty(cls) -> Claims:
        return cls({})

    def is_claimed(self, base: str) -> bool:
        return base.startswith(ALWAYS_CLAIMED) or base in self.by_name

    def check(self, base: str, peer: PeerCred | None, proof: str | None) -> Verdict:
        """May a connection from ``peer`` say HELLO as ``base``?  ``proof`` is the sha256 of the
        credential its HELLO carried (:func:`token_sha256`), None if it sent none."""
        if not self.is_claimed(base):
            return Verdict(ok=True, claimed=False)
        claim = self.by_name.get(base)
        if claim is None:
            return Verdict(ok=False, claimed=True,
                           detail=f"{NAME_CLAIMED}: {base} is reserved for the hive's own processes "
                                  "and no claim allows this connection")
        if peer is not None and (peer.uid in claim.uids or peer.gid in claim.gids):
            return Verdict(ok=True, claimed=True, grants=claim.grants)
        if proof is not None and _hash_in(proof, claim.credential_sha256):
            return Verdict(ok=True, claimed=True, grants=claim.grants)
        how = "no credential was sent" if proof is None else "the credential does not match"
        return Verdict(ok=False, claimed=True,
                       detail=f"{NAME_CLAIMED}: {base} is claimed and {how} (peer uid "
                              f"{peer.uid if peer else '?'} gid {peer.gid if peer else '?'} not allowed)")


def _hash_in(digest: str, allowed: Iterable[str]) -> bool:
    found = False
    for h in allowed:  # compare with every entry in constant time: no timing hint of a near match
        found |= hmac.compare_digest(digest, h)
    return found


def may_send(message: str, base: str, proven: bool, grants: frozenset[str]) -> bool:
    """Privileged messages need a proven claim and either a ``SY.*`` name or an explicit grant."""
    if message not in PRIVILEGED:
        return True
    return proven and (base.startswith(SYSTEM_PREFIX) or message in grants)
