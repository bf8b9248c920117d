"""Reading requests: the body (capped, JSON object only), query parameters, headers, and field validation.

Validation collects every problem before answering, so one 422 lists them all in ``details`` as
``[{"field", "message"}]``. JSON numbers are strict: an int field takes a JSON integer, never ``true`` or
``2.0``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, overload

from starlette.requests import Request

from shared.errors import InvalidInput, InvalidJson, PayloadTooLarge

MAX_BODY_BYTES = 64 * 1024
MAX_ID_LENGTH = 200
MAX_KEY_LENGTH = 255
# Ints beyond this are mistakes (and near the edge of Postgres's bigint): refused as out of range.
MAX_INT = 2**53 - 1


async def read_body(request: Request) -> bytes:
    """The raw body, at most MAX_BODY_BYTES. Raises PayloadTooLarge without reading past the cap."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constants(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object. Raises InvalidJson for anything else, including NaN/Infinity and numbers
    that overflow a float (Postgres' jsonb would refuse to store them) and nesting too deep to parse. Pure."""
    try:
        value = json.loads(body, parse_float=_finite, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidJson(f"the body is not valid JSON: {str(e)[:120]}") from None
    if not isinstance(value, dict):
        raise InvalidJson("the body must be a JSON object")
    return value


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object (see :func:`parse_object`). With ``optional``, an empty body is ``{}``.

    Raises PayloadTooLarge (over 64 KiB), InvalidJson (not JSON, NaN/Infinity, or not an object).
    """
    raw = await read_body(request)
    if not raw.strip():
        if optional:
            return {}
        raise InvalidJson("the body must be a JSON object")
    return parse_object(raw)


def request_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 of the body's canonical JSON (sorted keys, no spaces): what an Idempotency-Key is bound to."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header, or None. Raises InvalidInput if it is empty or too long."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            "Idempotency-Key must be 1 to 255 characters",
            details=[{"field": "Idempotency-Key", "message": "must be 1 to 255 characters"}],
        )
    return key


def query_limit(request: Request, default: int = 20, maximum: int = 100) -> int:
    """The ``limit`` query parameter: a whole number in 1..maximum. Raises InvalidInput."""
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidInput(
            f"limit must be a whole number from 1 to {maximum}",
            details=[{"field": "limit", "message": f"must be a whole number from 1 to {maximum}"}],
        )
    return int(raw)


def query_choice(request: Request, name: str, choices: Collection[str]) -> str | None:
    """An optional query parameter that must be one of ``choices``. Raises InvalidInput."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        message = f"must be one of {', '.join(choices)}"
        raise InvalidInput(f"{name} {message}", details=[{"field": name, "message": message}])
    return raw


class Fields:
    """Validates a JSON object's fields, collecting every problem; :meth:`check` raises them all at once.

    A required field that is missing or wrong returns a placeholder (0, "", {}) so the caller can go on
    collecting; the placeholder is never used, because :meth:`check` raises first.
    """

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.details: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        """Record a problem with ``field``."""
        self.details.append({"field": field, "message": message})

    def check(self) -> None:
        """Raise InvalidInput with every recorded problem, if any."""
        if self.details:
            first = self.details[0]
            more = f" (and {len(self.details) - 1} more)" if len(self.details) > 1 else ""
            raise InvalidInput(f"{first['field']}: {first['message']}{more}", details=self.details)

    def _get(self, name: str, required: bool) -> tuple[bool, Any]:
        if name not in self.body or self.body[name] is None:
            if required:
                self.add(name, "is required")
            return False, None
        return True, self.body[name]

    @overload
    def integer(self, name: str, *, required: Literal[True], minimum: int | None = ..., nonzero: bool = ...) -> int: ...
    @overload
    def integer(
        self, name: str, *, required: Literal[False] = ..., minimum: int | None = ..., nonzero: bool = ...
    ) -> int | None: ...
    def integer(
        self, name: str, *, required: bool = False, minimum: int | None = None, nonzero: bool = False
    ) -> int | None:
        """A JSON integer (not a bool, not a float such as 2.0), ≥ ``minimum``, ≠ 0 with ``nonzero``."""
        present, value = self._get(name, required)
        if not present:
            return 0 if required else None
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(name, "must be an integer")
        elif abs(value) > MAX_INT:
            self.add(name, "is out of range")
        elif minimum is not None and value < minimum:
            self.add(name, f"must be ≥ {minimum}")
        elif nonzero and value == 0:
            self.add(name, "must not be 0")
        else:
            return value
        return 0 if required else None

    @overload
    def string(
        self,
        name: str,
        *,
        required: Literal[True],
        max_length: int = ...,
        choices: Collection[str] | None = ...,
    ) -> str: ...
    @overload
    def string(
        self,
        name: str,
        *,
        required: Literal[False] = ...,
        max_length: int = ...,
        choices: Collection[str] | None = ...,
    ) -> str | None: ...
    def string(
        self,
        name: str,
        *,
        required: bool = False,
        max_length: int = MAX_ID_LENGTH,
        choices: Collection[str] | None = None,
    ) -> str | None:
        """A non-empty (after trimming) JSON string of at most ``max_length`` characters, one of ``choices``."""
        present, value = self._get(name, required)
        if not present:
            return "" if required else None
        if not isinstance(value, str):
            self.add(name, "must be a string")
        elif not value.strip():
            self.add(name, "must not be empty")
        elif len(value) > max_length:
            self.add(name, f"must be at most {max_length} characters")
        elif choices is not None and value not in choices:
            self.add(name, f"must be one of {', '.join(choices)}")
        else:
            return value
        return "" if required else None

    def obj(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        """A JSON object."""
        present, value = self._get(name, required)
        if not present:
            return None
        if not isinstance(value, dict):
            self.add(name, "must be an object")
            return None
        return value

    def timestamp(self, name: str) -> datetime | None:
        """An optional ISO 8601 date-time; one without an offset is taken as UTC."""
        present, value = self._get(name, False)
        if not present:
            return None
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        self.add(name, "must be an ISO 8601 date-time, e.g. 2030-01-31T12:00:00Z")
        return None
