"""Reading requests: the body (capped, JSON object only), query parameters, headers, and field validation.

This module is the API's one edge: every check of what a request may carry happens here (docs/API.md, "Limits
at the edge"), so that nothing Postgres cannot store ever reaches a handler or the ledger:

- :func:`edge_refusal` (run by the one middleware, :class:`api.middleware.Edge`) refuses paths and query strings with control characters (a NUL in
  ``/v1/jobs/%00`` or ``?task=%00``) or over-long parts before any route runs: a path → 404 ``not_found`` (no
  id can have them, and an unknown id is 404), a query parameter → 422 ``validation_error``.
- :func:`parse_object` refuses duplicate keys (400 ``invalid_json``) and, anywhere in the body (keys and
  values, nested), NUL characters, unpaired surrogates and nesting over :data:`MAX_DEPTH` (422).
- Numbers in text (``limit``, ``Content-Length``, cursors) are ASCII digits only: ``str.isdigit()`` accepts
  ``²`` and ``①``, which ``int()`` refuses.

Validation collects every problem before answering, so one 422 lists them all in ``details`` as
``[{"field", "message"}]``. JSON numbers are strict: an int field takes a JSON integer, never ``true`` or
``2.0``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, overload
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import Scope

from api.errors import error_response
from shared.errors import InvalidInput, InvalidJson, PayloadTooLarge

MAX_BODY_BYTES = 64 * 1024
MAX_ID_LENGTH = 200
MAX_KEY_LENGTH = 255
# Ints beyond this are mistakes (and near the edge of Postgres's bigint): refused as out of range.
MAX_INT = 2**53 - 1
# JSON nesting deeper than this is refused (no creditq input nests more than a few levels).
MAX_DEPTH = 32
# A path segment or query value longer than this cannot be an id or a parameter creditq takes.
MAX_PATH_SEGMENT = 256
MAX_QUERY_VALUE = 2048
MAX_EXTERNAL_ID_LENGTH = 200
# Visible ASCII and the space: what an Idempotency-Key may hold (a UUID, a hash, an order number...).
_KEY_CHARS = re.compile(r"[\x20-\x7e]+")
# Besides Unicode letters, marks and digits, the characters an externalId may hold: none needs escaping in a
# path segment, and an id that uses them is still one segment ("/" is refused: it would split the path).
EXTERNAL_ID_PUNCTUATION = frozenset("-_.:@+~")
# An accountId is "acct_" + 32 hex digits: an externalId of that prefix could shadow one, so none may start so.
ACCOUNT_ID_PREFIX = "acct_"
# Not plain text: control characters (C0, DEL, C1), line and paragraph separators, bidirectional overrides and
# isolates (they can make a statement line read as something else).
_NOT_PLAIN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def storable_problem(text: str) -> str | None:
    """Why Postgres could not store ``text`` (a NUL, or an unpaired surrogate that has no UTF-8 form), or None.
    Pure."""
    if "\x00" in text:
        return "must not contain NUL characters (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain unpaired surrogates (\\ud800-\\udfff)"
    return None


def plain_text_problem(text: str) -> str | None:
    """Why ``text`` is not plain text (control characters, line separators, bidirectional controls), or None.
    Pure."""
    bad = _NOT_PLAIN.search(text)
    if bad is not None:
        return f"must be plain text: U+{ord(bad.group()):04X} is not allowed"
    return storable_problem(text)


def external_id_problem(value: str) -> str | None:
    """Why ``value`` (already NFC-normalised) cannot be an externalId, or None: 1..200 characters, each a Unicode
    letter, mark or digit or one of ``-_.:@+~``; not only dots (a path segment of dots is rewritten by clients);
    not starting with ``acct_`` in any case (it could equal another account's accountId). Pure."""
    if not 1 <= len(value) <= MAX_EXTERNAL_ID_LENGTH:
        return f"must be 1 to {MAX_EXTERNAL_ID_LENGTH} characters"
    if value.lower().startswith(ACCOUNT_ID_PREFIX):
        return f"must not start with {ACCOUNT_ID_PREFIX!r} (the shape of an accountId)"
    if set(value) <= {"."}:
        return "must not be only dots"
    for ch in value:
        if ch not in EXTERNAL_ID_PUNCTUATION and unicodedata.category(ch)[0] not in "LMN":
            return f"may hold letters, digits and {''.join(sorted(EXTERNAL_ID_PUNCTUATION))} only, not {ch!r}"
    return None


def normalize_external_id(value: str) -> str:
    """The NFC form of an externalId: "café" typed as NFC or NFD is one id. Pure."""
    return unicodedata.normalize("NFC", value)


async def read_body(request: Request) -> bytes:
    """The raw body, at most MAX_BODY_BYTES. Raises PayloadTooLarge without reading past the cap."""
    declared = request.headers.get("content-length", "")
    if _ascii_digits(declared) and int(declared) > MAX_BODY_BYTES:
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


def _ascii_digits(text: str, max_digits: int = 18) -> bool:
    """True for 1..max_digits ASCII digits (``int()`` of it is then exact and fits a bigint). Pure."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def _no_constants(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"duplicate key {key[:40]!r}")
            seen.add(key)
    return obj


def _field_name(path: str, key: str) -> str:
    shown = key if len(key) <= 40 and storable_problem(key) is None else repr(key[:40])
    return f"{path}.{shown}" if path else shown


def _storable(value: Any, path: str, depth: int, details: list[dict[str, str]]) -> None:
    """Collect (at most 20) problems of strings Postgres cannot store, anywhere in ``value``."""
    if len(details) >= 20:
        return
    if depth > MAX_DEPTH:
        details.append({"field": path or "(body)", "message": f"nests deeper than {MAX_DEPTH} levels"})
        return
    if isinstance(value, str):
        problem = storable_problem(value)
        if problem is not None:
            details.append({"field": path or "(body)", "message": problem})
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = storable_problem(key)
            if problem is not None:
                details.append({"field": _field_name(path, key), "message": f"a key {problem}"})
            _storable(item, _field_name(path, key), depth + 1, details)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _storable(item, f"{path}[{i}]", depth + 1, details)


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object. Pure.

    Raises InvalidJson (400) for anything else: not JSON, NaN/Infinity, numbers that overflow a float (Postgres'
    jsonb would refuse them), nesting too deep to parse, duplicate keys (never silently resolved), not an
    object. Raises InvalidInput (422, ``details`` naming each field) when any key or string value anywhere holds
    a NUL or an unpaired surrogate, or nesting is deeper than :data:`MAX_DEPTH`: Postgres cannot store them.
    """
    try:
        value = json.loads(body, parse_float=_finite, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise InvalidJson(f"the body is not valid JSON: {e} (each key may appear once per object)") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidJson(f"the body is not valid JSON: {str(e)[:120]}") from None
    if not isinstance(value, dict):
        raise InvalidJson("the body must be a JSON object")
    details: list[dict[str, str]] = []
    _storable(value, "", 0, details)
    if details:
        first = details[0]
        raise InvalidInput(f"{first['field']}: {first['message']}", details=details)
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
    """The ``Idempotency-Key`` header, or None. Raises InvalidInput (422) if it is empty, longer than 255
    characters, holds anything but visible ASCII and spaces, or is sent more than once (two keys are never
    silently resolved to one)."""
    keys = request.headers.getlist("idempotency-key")
    if not keys:
        return None
    if len(keys) > 1:
        raise InvalidInput(
            "Idempotency-Key was sent more than once: send one",
            details=[{"field": "Idempotency-Key", "message": "must be sent once"}],
        )
    key = keys[0].strip()
    if not key or len(key) > MAX_KEY_LENGTH or not _KEY_CHARS.fullmatch(key):
        message = "must be 1 to 255 visible ASCII characters"
        raise InvalidInput(f"Idempotency-Key {message}", details=[{"field": "Idempotency-Key", "message": message}])
    return key


def query_value(request: Request, name: str) -> str | None:
    """The query parameter ``name``, or None. Given more than once it is refused (422), as a second
    ``Idempotency-Key`` is: which one was meant cannot be known. Raises InvalidInput."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise InvalidInput(
            f"{name} is given {len(values)} times", details=[{"field": name, "message": "must be given at most once"}]
        )
    return values[0] if values else None


def query_limit(request: Request, default: int = 20, maximum: int = 100) -> int:
    """The ``limit`` query parameter: a whole number in 1..maximum, at most once. Raises InvalidInput."""
    raw = query_value(request, "limit")
    if raw is None or raw == "":
        return default
    if not _ascii_digits(raw, 6) or not 1 <= int(raw) <= maximum:
        raise InvalidInput(
            f"limit must be a whole number from 1 to {maximum}",
            details=[{"field": "limit", "message": f"must be a whole number from 1 to {maximum}"}],
        )
    return int(raw)


def query_choice(request: Request, name: str, choices: Collection[str]) -> str | None:
    """An optional query parameter (at most once) that must be one of ``choices``. Raises InvalidInput."""
    raw = query_value(request, name)
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

    def text(self, name: str, *, max_length: int, required: bool = False) -> str | None:
        """A plain-text string (a memo, a reason) of at most ``max_length`` characters: no control characters,
        line separators or bidirectional controls (see :func:`plain_text_problem`)."""
        value = (
            self.string(name, required=True, max_length=max_length)
            if required
            else self.string(name, max_length=max_length)
        )
        if value:
            problem = plain_text_problem(value)
            if problem is not None:
                self.add(name, problem)
                return None
        return value

    def external_id(self, name: str) -> str | None:
        """An optional externalId, NFC-normalised, checked by :func:`external_id_problem`."""
        present, value = self._get(name, False)
        if not present:
            return None
        if not isinstance(value, str):
            self.add(name, "must be a string")
            return None
        value = normalize_external_id(value)
        problem = external_id_problem(value)
        if problem is not None:
            self.add(name, problem)
            return None
        return value

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
        """An optional ISO 8601 date-time (ASCII, at most 64 characters); one without an offset is taken as UTC.
        Returned in UTC: one whose UTC time falls outside years 1..9999 (``9999-12-31T23:00:00-05:00``) is
        refused, since neither Python nor the API's answers could show it once Postgres stored it."""
        present, value = self._get(name, False)
        if not present:
            return None
        when = parse_timestamp(value) if isinstance(value, str) else None
        if when is None:
            self.add(name, "must be an ISO 8601 date-time between years 1 and 9999 UTC, e.g. 2030-01-31T12:00:00Z")
        return when


def parse_timestamp(text: str) -> datetime | None:
    """``text`` as an aware UTC datetime (no offset: UTC), or None when it is not an ISO 8601 date-time of ASCII
    characters whose UTC time Python can hold. Pure."""
    if not text.isascii() or len(text) > 64:
        return None
    try:
        when = datetime.fromisoformat(text)
        return when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def edge_refusal(scope: Scope) -> Any:
    """The refusal of what no route could use, before any route runs (the one place for path and query checks;
    bodies and headers are checked by the functions above, as each handler reads them): an error response, or
    None. Called by :class:`api.middleware.Edge` for every HTTP request. Pure.

    - A path (already %-decoded by the server) with a control character (``/v1/jobs/%00``) or a segment over
      :data:`MAX_PATH_SEGMENT` characters → 404 ``not_found``: no route or id has them.
    - A query parameter (name or value) with a control character (``?task=%00``) or over
      :data:`MAX_QUERY_VALUE` characters → 422 ``validation_error`` naming it.
    """
    path: str = scope.get("path", "")
    if _CONTROL.search(path) or any(len(part) > MAX_PATH_SEGMENT for part in path.split("/")):
        return error_response(404, "not_found", "no such resource: the path holds characters no id has")
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        for part in (name, value):
            if _CONTROL.search(part) or len(part) > MAX_QUERY_VALUE:
                field = name if len(name) <= 40 and not _CONTROL.search(name) else "(query)"
                message = f"must be at most {MAX_QUERY_VALUE} characters, without control characters"
                return error_response(
                    422,
                    "validation_error",
                    f"query parameter {field} {message}",
                    details=[{"field": field, "message": message}],
                )
    return None
