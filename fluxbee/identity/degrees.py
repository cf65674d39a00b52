"""Modules, degrees and graduation: digests, canonical encodings and Ed25519 signatures (pure).

* A **module** is a versioned prompt fragment; its digest is ``sha256(prompt_text as UTF-8)``.
* A **degree** pins an ordered list of module versions.  Its digest is sha256
  over a canonical encoding of the pinned modules: the UTF-8 JSON array
  ``[[name, version, module_sha256], ...]`` in degree order, with no spaces and
  keys-free (so no key-order ambiguity), prefixed by the domain tag
  ``fluxbee-degree-v1\\n``.
* **Graduation** binds a degree to an agent ILK: SY.identity signs (Ed25519)
  the canonical tuple ``fluxbee-graduation-v1\\n`` + JSON
  ``[ilk_id, degree_name, degree_version, degree_digest]``.

:func:`verify_graduation` is what an agent node (before its first message) and
the operator (before creating Pods) call; it raises :class:`DegreeVerificationError`
with a ``reason`` code and a message that says which check failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fluxbee.errors import CodedError

DEGREE_TAG: Final = b"fluxbee-degree-v1\n"
GRADUATION_TAG: Final = b"fluxbee-graduation-v1\n"

# verification failure reasons (also used as Degraded condition reasons by the operator)
MODULE_DIGEST_MISMATCH: Final = "ModuleDigestMismatch"
DEGREE_DIGEST_MISMATCH: Final = "DegreeDigestMismatch"
SIGNATURE_INVALID: Final = "SignatureInvalid"
GRADUATION_MISMATCH: Final = "GraduationMismatch"
MALFORMED: Final = "MalformedGraduation"


class DegreeVerificationError(CodedError):
    """A graduation or degree that does not verify; ``code`` is one of the reasons above."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def module_digest(prompt_text: str) -> str:
    return sha256_hex(prompt_text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class PinnedModule:
    name: str
    version: str
    sha256: str
    prompt_text: str | None = None
    """Present when the verifier has the text (agents do); then its digest is re-checked."""


def degree_encoding(modules: Sequence[PinnedModule]) -> bytes:
    body = json.dumps([[m.name, m.version, m.sha256] for m in modules], separators=(",", ":"), ensure_ascii=False)
    return DEGREE_TAG + body.encode("utf-8")


def degree_digest(modules: Sequence[PinnedModule]) -> str:
    return sha256_hex(degree_encoding(modules))


def graduation_message(ilk_id: str, degree_name: str, degree_version: str, digest: str) -> bytes:
    body = json.dumps([ilk_id, degree_name, degree_version, digest], separators=(",", ":"), ensure_ascii=False)
    return GRADUATION_TAG + body.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Graduation:
    ilk_id: str
    degree_name: str
    degree_version: str
    digest: str
    signature: str
    """base64 of the 64-byte Ed25519 signature."""
    key_id: str
    """sha256 (first 16 hex) of the raw public key that signed."""

    def to_dict(self) -> dict[str, str]:
        return {"ilk_id": self.ilk_id, "degree_name": self.degree_name, "degree_version": self.degree_version,
                "digest": self.digest, "signature": self.signature, "key_id": self.key_id}

    @classmethod
    def from_dict(cls, data: Any) -> Graduation:
        try:
            return cls(**{k: str(data[k]) for k in ("ilk_id", "degree_name", "degree_version", "digest",
                                                     "signature", "key_id")})
        except (KeyError, TypeError) as err:
            raise DegreeVerificationError(MALFORMED, f"graduation record lacks {err}") from None


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:16]


def sign_graduation(key: Ed25519PrivateKey, ilk_id: str, degree_name: str, degree_version: str,
                    digest: str) -> Graduation:
    sig = key.sign(graduation_message(ilk_id, degree_name, degree_version, digest))
    return Graduation(ilk_id, degree_name, degree_version, digest, base64.b64encode(sig).decode(),
                      key_id(key.public_key()))


def verify_graduation(graduation: Graduation, modules: Sequence[PinnedModule], public_key: Ed25519PublicKey, *,
                      expect_ilk: str | None = None, expect_degree: tuple[str, str] | None = None) -> None:
    """Raise :class:`DegreeVerificationError` unless every check passes.

    Checks, in order: each module text (when given) hashes to its pinned
    sha256; the degree digest recomputed from the pinned modules equals the
    graduation's; the graduation names the expected ILK/degree (when given);
    the Ed25519 signature over the canonical tuple verifies with ``public_key``.
    """
    for m in modules:
        if m.prompt_text is not None and module_digest(m.prompt_text) != m.sha256:
            raise DegreeVerificationError(
                MODULE_DIGEST_MISMATCH,
                f"module {m.name}@{m.version}: text hashes to {module_digest(m.prompt_text)[:16]}…, "
                f"pinned {m.sha256[:16]}…")
    actual = degree_digest(modules)
    if actual != graduation.digest:
        raise DegreeVerificationError(
            DEGREE_DIGEST_MISMATCH,
            f"degree {graduation.degree_name}@{graduation.degree_version}: modules hash to {actual[:16]}…, "
            f"graduation says {graduation.digest[:16]}…")
    if expect_ilk is not None and graduation.ilk_id != expect_ilk:
        raise DegreeVerificationError(GRADUATION_MISMATCH,
                                      f"graduation is for {graduation.ilk_id}, not {expect_ilk}")
    if expect_degree is not None and (graduation.degree_name, graduation.degree_version) != expect_degree:
        raise DegreeVerificationError(
            GRADUATION_MISMATCH,
            f"graduated to {graduation.degree_name}@{graduation.degree_version}, expected "
            f"{expect_degree[0]}@{expect_degree[1]}")
    try:
        sig = base64.b64decode(graduation.signature, validate=True)
        public_key.verify(sig, graduation_message(graduation.ilk_id, graduation.degree_name,
                                                  graduation.degree_version, graduation.digest))
    except (InvalidSignature, ValueError):
        raise DegreeVerificationError(
            SIGNATURE_INVALID,
            f"signature of {graduation.ilk_id} -> {graduation.degree_name}@{graduation.degree_version} does not "
            f"verify with key {key_id(public_key)}") from None


# ------------------------------------------------------------------ keys


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The identity service's signing key (PEM, mode 0600); its public twin at ``<path>.pub``."""
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        key = loaded
    else:
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        tmp.replace(path)
    pub = public_pem(key.public_key())
    pub_path = public_key_path(path)
    if not pub_path.exists() or pub_path.read_bytes() != pub:
        pub_path.write_bytes(pub)
    return key


def public_key_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key
