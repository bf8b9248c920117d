"""Prompt directives: ``[sim:...]`` markers that steer one simulated task, as test card numbers do.

Recognised (several may share one prompt, in any order, anywhere in the text; case-insensitive):

- ``[sim:seconds=S]``: generation takes ``S`` seconds (a non-negative number; times ``time_scale``).
- ``[sim:fail=CODE]``: the task ends in ``fail`` with ``failCode`` = ``CODE`` (kept as a string).
- ``[sim:create=CODE]``: the create call answers body code ``CODE`` (an integer) and creates nothing.
- ``[sim:nocallback]``: no callback is sent for the task.
- ``[sim:flaky]``: every second status query of the task answers HTTP 500.

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


def parse_directives(prompt: str) -> Directives:
    """Return the directives found in ``prompt``; a prompt without markers gives ``Directives()``."""
    seconds: float | None = None
    fail_code: str | None = None
    create_code: int | None = None
    nocallback = False
    flaky = False
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
    return Directives(seconds=seconds, fail_code=fail_code, create_code=create_code, nocallback=nocallback, flaky=flaky)
