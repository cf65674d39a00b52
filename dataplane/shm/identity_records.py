"""The identity records both identity layouts publish, and the rules they share.

Defined once: the vocabulary (ILK types, registration statuses), the id and channel-key
normalisation, the records a reader returns (:class:`IlkInfo`, :class:`ChannelHit`) and the writer
interface a mirror region implements (:class:`RegionMirror`). :mod:`.identity` and
:mod:`.identity_jsid` lay them out in their own bytes.
"""

from __future__ import annotations

import uuid as _uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Protocol

ILK_TYPES: Final = ("human", "agent", "system")
STATUSES: Final = ("temporary", "partial", "complete")
HUMAN_SUBTYPES: Final = ("", "internal", "external")
"""Code 0 = none (every non-human, and a human registered before subtypes existed)."""
ZERO_ID: Final = bytes(16)
MAX_CHANNEL_TYPE_BYTES: Final = 32
MAX_ADDRESS_BYTES: Final = 256


@lru_cache(maxsize=4096)
def id_bytes(value: str | None) -> bytes:
    """16 raw bytes of a prefixed (``tnt:``/``ilk:``/``ich:``) or bare UUID; zero bytes if unparsable.

    Cached: readers see the same few tenants and hot ILKs again and again.
    """
    if not value:
        return ZERO_ID
    _, sep, rest = value.partition(":")
    text = rest if sep else value
    try:
        return _uuid.UUID(text.strip()).bytes
    except ValueError:
        return ZERO_ID




def id_text(prefix: str, raw: bytes) -> str:
    """``prefix:`` + the dashed lowercase UUID of 16 raw bytes (cheaper than ``uuid.UUID``)."""
    h = raw.hex()
    return f"{prefix}:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


CASE_INSENSITIVE_CHANNELS: Final = frozenset({"email", "mail"})


def normalise_channel(channel_type: str, address: str) -> tuple[str, str]:
    """The one rule for channel keys: trim both; lowercase the type; lowercase the
    address only for channels whose addresses are case-insensitive (email).

    The original lowercased every address, which merges case-sensitive handles.
    """
    ctype = channel_type.strip().lower()
    addr = address.strip()
    if ctype in CASE_INSENSITIVE_CHANNELS:
        addr = addr.lower()
    return ctype, addr




@dataclass(frozen=True, slots=True)
class IlkInfo:
    """An ILK as published: ids are prefixed strings; ``handler_node`` may be empty.  SY.identity
    commits and replicates this same record (its ``IlkRecord`` is this class)."""

    ilk_id: str
    tenant_id: str
    ilk_type: str
    registration_status: str
    handler_node: str
    human_subtype: str = ""
    capabilities: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()




@dataclass(frozen=True, slots=True)
class ChannelHit:
    ilk_id: str
    ich_id: str




class RegionMirror(Protocol):
    """A second region the writer keeps in step with its own, change for change and batch for batch
    (the original-layout region, :mod:`.identity_jsid`).  It must not raise for
    capacity: what does not fit is its own business (counted there)."""

    def batch(self) -> AbstractContextManager[Any]: ...
    def put_tenant(self, tenant_id: str, *, name: str, status: str) -> None: ...
    def put_ilk(self, ilk_id: str, *, tenant_id: str, ilk_type: str, registration_status: str,
                handler_node: str = ..., display_name: str = ...) -> None: ...
    def remove_ilk(self, ilk_id: str) -> None: ...
    def put_alias(self, old_ilk_id: str, canonical_ilk_id: str, expires_ms: int) -> None: ...
    def remove_alias(self, old_ilk_id: str) -> None: ...
    def put_channel(self, channel_type: str, address: str, tenant_id: str, *, ilk_id: str, ich_id: str) -> None: ...
    def remove_channel(self, channel_type: str, address: str, tenant_id: str) -> None: ...
    def clear(self) -> None: ...
    def heartbeat(self) -> None: ...
    def close(self) -> None: ...




def code_of(values: tuple[str, ...], value: str) -> int:
    try:
        return values.index(value)
    except ValueError:
        raise ValueError(f"unknown value {value!r}; expected one of {', '.join(values)}") from None


