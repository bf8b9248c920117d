"""Translate the SQLSTATEs raised by creditq's SQL functions (``CQxxx``) into creditq exceptions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from shared.errors import (
    CreditqError,
    Forbidden,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
)


def translate(e: asyncpg.PostgresError) -> CreditqError | None:
    """The creditq error for a ``CQxxx`` SQLSTATE, or None for any other database error."""
    state = getattr(e, "sqlstate", None) or ""
    message = getattr(e, "message", None) or str(e)
    if state == "CQ402":
        required, available = (int(x) for x in (getattr(e, "detail", None) or "0,0").split(","))
        return InsufficientCredits(required=required, available=available)
    if state == "CQ403":
        return Forbidden(message)
    if state == "CQ404":
        return NotFound(message)
    if state == "CQ409":
        return IdempotencyConflict(message)
    if state == "CQ422":
        return InvalidInput(message, details=[{"message": message}])
    return None


@asynccontextmanager
async def mapped() -> AsyncIterator[None]:
    """Re-raise CQxxx database errors as creditq errors; let everything else through."""
    try:
        yield
    except asyncpg.PostgresError as e:
        err = translate(e)
        if err is None:
            raise
        raise err from None
