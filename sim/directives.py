"""Prompt directives: ``[sim:...]`` markers that steer one simulated task, as test card numbers do.

Recognised (several may share one prompt, in any order, anywhere in the text; case-insensitive):

- ``[sim:seconds=S]``: generation takes ``S`` seconds (a non-negative number; times ``time_scale``).
- ``[sim:fail=CODE]``: the task ends in ``fail`` with ``failCode`` = ``CODE`` (kept as a string).
- ``[sim:create=CODE]``: the create call answers body code ``CODE`` (an integer) and creates nothing.
- ``[sim:nocallback]``: no callback is sent for the task.
- ``[sim:flaky]``: every second status query of the task answers HTTP 500.
- ``[sim:null=N]``: the first ``N`` status queries answer HTTP 200 with ``{"code": 422, "msg": "recordInfo is
  null", "data": null}`` (Veo: ``record is null``), as the provider does right after a create.
- ``[sim:querybody=CODE]``: every second status query answers HTTP 200 with body code ``CODE`` (100-999, e.g.
  401, 404, 500) and no record.
- ``[sim:callbacks=N]``: the completion callback is delivered ``N`` times (1-10), as the provider sometimes does.
- ``[sim:create=433]``, ``[sim:create=401]``, ...: see ``create`` above (433: a key's usage cap).

Simulator extras, for fault tests (each acts on every second status query of the task, the 2nd, 4th, ..., so
that a client that retries still sees the task end; ``[sim:state=NAME]`` excepted):

- ``[sim:hang=S]``: the query sleeps ``S`` seconds (not scaled by ``time_scale``) before answering, so that a
  client timeout shorter than ``S`` fires.
- ``[sim:garbage]``: the query answers HTTP 200 with a body that is not JSON.
- ``[sim:query=CODE]``: the query answers HTTP ``CODE`` (100-599) with the envelope ``{"code": CODE, ...}`` (429 adds
  ``Retry-After: 1``; it is not counted in the stats' ``rateLimited``, which counts the limits' own 429s).
- ``[sim:state=NAME]``: every status query in the first half of the duration reports the unknown state
  ``NAME`` (jobs: ``state``; Veo: ``successFlag``); ``NAME`` is 1-64 letters, digits, ``_.-``.

Unknown or malformed markers are ignored (they stay plain prompt text). When one directive appears twice the
last one wins.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_MARKER = re.compile(r"\[sim:([a-z]+)(?:=([^\]\s]*))?\]", re.IGNORECASE)
_FAIL_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Directives:
    """What the markers of one prompt ask for; the defaults mean "behave normally"."""

    seconds: float | None = None
    fail_code: str | None = None
    create_code: int | None = None
    nocallback: bool = False
    flaky: bool = False
    hang: float | None = None
    garbage: bool = False
    query_code: int | None = None
    state: str | None = None
    null_queries: int = 0
    query_body_code: int | None = None
    callbacks: int = 1


def parse_directives(prompt: str) -> Directives:
    """Return the directives found in ``prompt``; a prompt without markers gives ``Directives()``."""
    seconds: float | None = None
    fail_code: str | None = None
    create_code: int | None = None
    nocallback = False
    flaky = False
    hang: float | None = None
    garbage = False
    query_code: int | None = None
    state: str | None = None
    null_queries = 0
    query_body_code: int | None = None
    callbacks = 1
    for match in _MARKER.finditer(prompt):
        name = match.group(1).lower()
        value = match.group(2)
        if name == "seconds" and value:
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number) and number >= 0:
                seconds = number
        elif name == "fail" and value and _FAIL_CODE.fullmatch(value):
            fail_code = value
        elif name == "create" and value:
            try:
                create_code = int(value)
            except ValueError:
                continue
        elif name == "nocallback" and value is None:
            nocallback = True
        elif name == "flaky" and value is None:
            flaky = True
        elif name == "hang" and value and _number(value) is not None:
            hang = _number(value)
        elif name == "garbage" and value is None:
            garbage = True
        elif name == "query" and value and value.isdigit() and 100 <= int(value) <= 599:
            query_code = int(value)
        elif name == "state" and value and _FAIL_CODE.fullmatch(value):
            state = value
        elif name == "null" and value and value.isdigit():
            null_queries = min(int(value), 1000)
        elif name == "querybody" and value and value.isdigit() and 100 <= int(value) <= 999:
            query_body_code = int(value)
        elif name == "callbacks" and value and value.isdigit() and 1 <= int(value) <= 10:
            callbacks = int(value)
    return Directives(
        seconds=seconds,
        fail_code=fail_code,
        create_code=create_code,
        nocallback=nocallback,
        flaky=flaky,
        hang=hang,
        garbage=garbage,
        query_code=query_code,
        state=state,
        null_queries=null_queries,
        query_body_code=query_body_code,
        callbacks=callbacks,
    )


def _number(value: str) -> float | None:
    """``value`` as a finite number >= 0, or None."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
