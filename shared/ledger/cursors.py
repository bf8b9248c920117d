"""The cursors of every keyset list (docs/API.md, pagination): one codec, two shapes.

A cursor is URL-safe base64 (unpadded) of ASCII text the client must not read into. Its text is either an entry
id (``GET /v1/accounts/{id}/transactions``: newest first by id) or ``<ISO timestamp>|<id>`` (tasks by
``created_at, id``; payment events by ``received_at, id``). Decoding refuses, with InvalidInput, anything this
service did not make, so a forged cursor is a 400 and never reaches Postgres as a value it cannot hold. Pure.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime

from shared.errors import InvalidInput

_CURSOR_CHARS = re.compile(r"[A-Za-z0-9_\-]{1,600}")
_CURSOR_ID = re.compile(r"[\x21-\x7e]{1,255}")  # creditq's ids and payment event ids: visible ASCII
MAX_ID = 2**63 - 1  # a bigint


def encode(value: str) -> str:
    """The cursor of ``value`` (ASCII text)."""
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _bad_cursor() -> InvalidInput:
    return InvalidInput("cursor is not valid", details=[{"field": "cursor", "message": "is not a cursor of this list"}])


def decode(cursor: str) -> str:
    """The text inside a cursor (URL-safe base64 of ASCII). Raises InvalidInput for a cursor this service did
    not make."""
    if not _CURSOR_CHARS.fullmatch(cursor):
        raise _bad_cursor()
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_cursor() from None
    if not text.isprintable():
        raise _bad_cursor()
    return text


def encode_id(value: int) -> str:
    """The cursor after (before, newest first) the row of bigint id ``value``."""
    return encode(str(value))


def decode_id(cursor: str) -> int:
    """A cursor of an entry id: ASCII digits of a positive bigint. Raises InvalidInput otherwise."""
    raw = decode(cursor)
    if not (0 < len(raw) <= 19 and raw.isascii() and raw.isdigit()) or int(raw) > MAX_ID:
        raise _bad_cursor()
    return int(raw)


def encode_keyset(at: datetime, row_id: str) -> str:
    """The cursor after the row ``(at, row_id)`` of a list ordered by a timestamp, then an id."""
    return encode(f"{at.isoformat()}|{row_id}")


def keyset_after(cursor: str | None) -> tuple[datetime | None, str]:
    """Where a page of a (timestamp, id) keyset list starts: ``(None, "")`` for the first page (no cursor),
    else the decoded cursor (:func:`decode_keyset`). Raises InvalidInput for a cursor this service did not make."""
    if not cursor:
        return None, ""
    return decode_keyset(cursor)


def decode_keyset(cursor: str) -> tuple[datetime, str]:
    """A cursor of ``<ISO timestamp>|<id>`` (a keyset on a timestamp, then an id): the timestamp in UTC and the
    id. Raises InvalidInput for anything else (not ASCII, a date Python or Postgres cannot hold, an id of other
    characters than creditq's ids use)."""
    ts, sep, after_id = decode(cursor).partition("|")
    if not sep or not _CURSOR_ID.fullmatch(after_id) or len(ts) > 40:
        raise _bad_cursor()
    try:
        when = datetime.fromisoformat(ts)
        when = when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise _bad_cursor() from None
    return when, after_id
