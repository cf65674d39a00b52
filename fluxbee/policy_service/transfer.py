"""A compiled artefact carried from one hive's SY.policy to another's, in chunks that fit in a frame.

The mother hive compiles once; every other hive runs the same bytes.  What is announced (the admin
fan-out's ``POLICY_TAKE``, or the mother's ``POLICY_GET`` answer that a worker's catch-up pull reads)
is a :class:`Announced`: ``{version, sha256, size, engine}``, where ``sha256`` is the hex digest of
the serialised artefact (:meth:`~fluxbee.dataplane.policy.Artefact.to_bytes`, the bytes the policy
region holds).  The taker then asks the source's SY.policy for the bytes with ``POLICY_ARTEFACT_GET``
``{version, offset, length}``, at most :data:`CHUNK_BYTES` at a time, and answers are checked one by
one (same version, digest and size; the offset asked; as many bytes as asked, or up to the end).
Only when every byte is in, the whole digest matches and the artefact decodes and verifies its own
module digest (and runs on the announced engine) is anything written: a refused or interrupted
transfer leaves the hive's policy as it was.

Refusals (``error_code``): ``INVALID_REQUEST`` (fields missing or of the wrong type, a negative
offset, a length below 1 or above :data:`CHUNK_BYTES`), ``VERSION_NOT_FOUND`` (the source keeps no
such version), ``BAD_OFFSET`` (an offset at or past the end), and on the taker ``ARTEFACT_TOO_LARGE``
(an announced size above :data:`MAX_ARTEFACT_BYTES`), ``ARTEFACT_MISMATCH`` (a chunk or the whole
that does not match what was announced) and ``FETCH_FAILED`` (the source did not answer: a cut link,
a source that is down; the catch-up pull tries again).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from fluxbee.dataplane.policy import Artefact, PolicyLoadError
from fluxbee.dataplane.shm.policy import DEFAULT_CAPACITY
from fluxbee.policy_service.lifecycle import PolicyServiceError

CHUNK_BYTES: Final = 64 * 1024
"""Largest chunk asked for or served: base64 makes it 87,384 characters, well inside one frame."""
MAX_ARTEFACT_BYTES: Final = DEFAULT_CAPACITY
"""Largest artefact taken: what a policy region holds."""

Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Sends one ``POLICY_ARTEFACT_GET`` to the source and returns its answer's payload; raises
:class:`PolicyServiceError` (``FETCH_FAILED``) when no answer comes."""


def _positive_int(value: Any, field: str, *, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PolicyServiceError("INVALID_REQUEST", f"{field} must be an integer of at least {minimum}")
    return value


def _hex_digest(value: Any, field: str) -> str:
    if isinstance(value, str) and value.startswith("sha256:"):
        value = value[len("sha256:"):]
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise PolicyServiceError("INVALID_REQUEST", f"{field} must be a lowercase hex SHA-256")
    return value


@dataclass(frozen=True, slots=True)
class Announced:
    """What a source says it has: the artefact of ``version``, ``size`` bytes with digest ``sha256``."""

    version: int | None
    """None: an artefact compiled for this hive alone (a write naming it), taken under its next version
    and fetched by its ``sha256``."""
    sha256: str
    size: int
    engine: str
    origin: str = "compile"

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Announced:
        """From a ``POLICY_TAKE`` body or a ``POLICY_GET`` answer's ``current``; INVALID_REQUEST or
        ARTEFACT_TOO_LARGE when it is not one that can be taken."""
        version = None if body.get("version") is None else _positive_int(body.get("version"), "version")
        sha = _hex_digest(body.get("sha256", body.get("hash")), "sha256")
        size = _positive_int(body.get("size", body.get("size_bytes")), "size")
        engine = body.get("engine")
        if engine not in ("wasm", "regorus"):
            raise PolicyServiceError("INVALID_REQUEST", "engine must be wasm or regorus")
        origin = body.get("origin", "compile")
        if not isinstance(origin, str) or not origin or len(origin) > 64:
            raise PolicyServiceError("INVALID_REQUEST", "origin must be a short non-empty string")
        if size > MAX_ARTEFACT_BYTES:
            raise PolicyServiceError("ARTEFACT_TOO_LARGE", f"an artefact of {size} bytes is announced; at most "
                                                           f"{MAX_ARTEFACT_BYTES} are taken", size=size)
        return cls(version=version, sha256=sha, size=size, engine=engine, origin=origin)

    def fields(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "size": self.size, "engine": self.engine,
                "origin": self.origin}


def serve_chunk(artefact: Callable[[int | None, str | None], bytes | None], body: dict[str, Any]) -> dict[str, Any]:
    """The ``POLICY_ARTEFACT_GET`` answer for ``body`` (``{version, offset, length}``, or ``{sha256,
    offset, length}`` for an artefact compiled for one other hive); ``artefact`` gives the source's
    serialised artefact of a version or digest (None: it keeps none)."""
    if body.get("version") is None and body.get("sha256") is not None:
        version, sha = None, _hex_digest(body.get("sha256"), "sha256")
    else:
        version, sha = _positive_int(body.get("version"), "version"), None
    offset = _positive_int(body.get("offset", 0), "offset", minimum=0)
    length = _positive_int(body.get("length", CHUNK_BYTES), "length")
    if length > CHUNK_BYTES:
        raise PolicyServiceError("INVALID_REQUEST", f"length {length} is above {CHUNK_BYTES}, the largest chunk",
                                 max_length=CHUNK_BYTES)
    raw = artefact(version, sha)
    if raw is None:
        raise PolicyServiceError("VERSION_NOT_FOUND", f"no artefact of version {version} is kept here"
                                 if version is not None else f"no artefact {sha} is held for another hive here")
    if offset >= len(raw):
        raise PolicyServiceError("BAD_OFFSET", f"offset {offset} is at or past the end ({len(raw)} bytes)",
                                 size=len(raw))
    chunk = raw[offset:offset + length]
    return {"status": "ok", "version": version, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw),
            "offset": offset, "chunk": base64.b64encode(chunk).decode("ascii")}


def _check_chunk(want: Announced, offset: int, reply: dict[str, Any]) -> bytes:
    if reply.get("status") != "ok":
        raise PolicyServiceError("ARTEFACT_MISMATCH", f"the source refused offset {offset}: "
                                 f"{reply.get('error_code')}: {reply.get('error_detail')}")
    if (reply.get("version"), reply.get("sha256"), reply.get("size"), reply.get("offset")) != \
            (want.version, want.sha256, want.size, offset):
        raise PolicyServiceError("ARTEFACT_MISMATCH", f"the chunk at offset {offset} is for another artefact "
                                 f"(version {reply.get('version')}, sha256 {reply.get('sha256')}, "
                                 f"size {reply.get('size')}, offset {reply.get('offset')})")
    encoded = reply.get("chunk")
    try:
        if not isinstance(encoded, str):
            raise ValueError("no chunk")
        chunk = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error) as err:
        raise PolicyServiceError("ARTEFACT_MISMATCH", f"the chunk at offset {offset} is not base64: {err}") from err
    if len(chunk) != min(CHUNK_BYTES, want.size - offset):
        raise PolicyServiceError("ARTEFACT_MISMATCH", f"the chunk at offset {offset} holds {len(chunk)} bytes, "
                                 f"not {min(CHUNK_BYTES, want.size - offset)}")
    return chunk


async def fetch(want: Announced, ask: Ask) -> Artefact:
    """Every chunk of ``want`` from the source, checked, then the whole checked and decoded.  Nothing is
    written here; a refusal raises :class:`PolicyServiceError`."""
    parts: list[bytes] = []
    offset = 0
    while offset < want.size:
        which = {"version": want.version} if want.version is not None else {"sha256": want.sha256}
        reply = await ask({**which, "offset": offset, "length": CHUNK_BYTES})
        chunk = _check_chunk(want, offset, reply)
        parts.append(chunk)
        offset += len(chunk)
    raw = b"".join(parts)
    actual = hashlib.sha256(raw).hexdigest()
    if actual != want.sha256:
        raise PolicyServiceError("ARTEFACT_MISMATCH", f"the artefact's sha256 is {actual}, {want.sha256} was "
                                 "announced; nothing was taken")
    try:
        artefact = Artefact.from_bytes(raw)
    except PolicyLoadError as err:
        raise PolicyServiceError("ARTEFACT_MISMATCH", f"the artefact does not load: {err}") from err
    if artefact.engine != want.engine:
        raise PolicyServiceError("ARTEFACT_MISMATCH", f"the artefact runs on {artefact.engine}, {want.engine} "
                                 "was announced")
    return artefact
