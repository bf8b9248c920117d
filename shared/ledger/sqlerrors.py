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
    if state == "22003":
        # numeric_value_out_of_range: a bigint sum overflowed (the 1,025th grant of 2^53-1 to one account).
        why = "the amount would take a balance or a total beyond what creditq can hold"
        return InvalidInput(why, details=[{"field": "amount", "message": why}])
    if state.startswith(("22", "54")):
        # Other data exceptions and program limits: a value the database cannot store. The API's edge refuses
        # every such value it knows of first; this keeps one it missed from becoming a 500.
        why = "a value of this request cannot be stored"
        return InvalidInput(why, details=[{"message": why}])
    return None


@asynccontextmanager
async def mapped() -> AsyncIterator[None]:
    """Re-raise CQxxx database errors, data exceptions (class 22, and asyncpg's refusals to encode an argument) and
    program limits (class 54) as creditq errors; let everything else through."""
    try:
        yield
    except asyncpg.PostgresError as e:
        err = translate(e)
        if err is None and isinstance(e, asyncpg.DataError):
            # asyncpg's own refusal to encode an argument (no SQLSTATE): an unpaired surrogate, an int beyond
            # bigint, a date beyond Postgres's range.
            why = "a value of this request cannot be stored"
            err = InvalidInput(why, details=[{"message": why}])
        if err is None:
            raise
        raise err from None
