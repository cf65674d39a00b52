"""Paging requests and cursors: pure parsing, no router or database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from fluxbee.dataplane.router.control import status_page_request as _status_page_request
from fluxbee.identity.model import IdentityError
from fluxbee.identity.store import ilk_cursor, parse_ilk_cursor


def test_a_status_request_without_paging_asks_for_the_first_page() -> None:
    assert _status_page_request(b"null") == (None, None)
    assert _status_page_request(b"") == (None, None)
    assert _status_page_request(b'{"other": 1}') == (None, None)  # keys of other SDKs are ignored


def test_a_status_request_takes_a_limit_and_a_uuid_cursor_in_any_spelling() -> None:
    node = uuid.uuid4()
    assert _status_page_request(f'{{"limit": 3, "cursor": "{node.hex.upper()}"}}'.encode()) == (3, str(node))


@pytest.mark.parametrize("raw", [b'{"limit": 0}', b'{"limit": true}', b'{"limit": "5"}', b'{"cursor": "n42"}',
                                 b'{"cursor": 7}', b"[1]", b"{"])
def test_a_bad_status_request_is_a_value_error_that_says_what(raw: bytes) -> None:
    with pytest.raises(ValueError, match="limit|cursor|payload"):
        _status_page_request(raw)


def test_an_ilk_cursor_names_its_row_to_the_microsecond() -> None:
    created = datetime(2026, 12, 5, 15, 59, 1, 123456, tzinfo=UTC)
    ilk = uuid.uuid4()
    assert parse_ilk_cursor(ilk_cursor(created, ilk)) == (created, ilk)


@pytest.mark.parametrize("cursor", ["", "123", "abc.def", f"-1.{uuid.uuid4().hex}", f"12.{uuid.uuid4()}",
                                    f"{10**30}.{uuid.uuid4().hex}"])
def test_a_cursor_that_no_page_gave_is_an_invalid_request(cursor: str) -> None:
    with pytest.raises(IdentityError) as err:
        parse_ilk_cursor(cursor)
    assert err.value.code == "INVALID_REQUEST"
