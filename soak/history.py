"""What the clients did and were told: one :class:`Outcome` per operation, every task view they saw, and every
answer that broke the contract (a 5xx other than 503). The checker reads only this and the final observations.

Outcomes follow Jepsen's three values: ``ok`` (the operation certainly happened: 2xx), ``fail`` (it certainly did
not: a 4xx), ``info`` (unknown: no answer, a 503, a 500). An operation with an idempotency key is retried with the
same key until it is ``ok`` or ``fail``; one without a key (a keyless submit) may stay ``info``, and the checker
then accepts zero or one task for it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass
class Outcome:
    """The end of one planned operation."""

    op: dict[str, Any]
    status: str = "pending"  # ok | fail | info | skipped
    code: int | None = None  # the HTTP status of the answer that decided it
    body: Any = None
    attempts: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)  # every definite answer: {"code", "id"}

    @property
    def id(self) -> int:
        return int(self.op["id"])

    def result_id(self) -> str | None:
        """The task, transfer or event id the decisive answer named, if any."""
        body = self.body
        if not isinstance(body, dict):
            return None
        for key in ("taskId", "transferId", "eventId"):
            if isinstance(body.get(key), str):
                return str(body[key])
        return None


class Log:
    """The run's log: JSON lines, flushed as they are written, so that a crash of the soak keeps what happened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = path.open("w")
        self.started = time.monotonic()

    def write(self, type_: str, **fields: Any) -> None:
        """One line ``{"type": type_, "at": seconds since the start, ...fields}``."""
        line = {"type": type_, "at": round(time.monotonic() - self.started, 3), **fields}
        self._fh.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def read_log(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the planned events of a log (for ``--replay``). Raises ValueError for a file that is not
    a soak log."""
    header: dict[str, Any] | None = None
    plan: list[dict[str, Any]] = []
    with path.open() as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("type") == "header":
                header = row
            elif row.get("type") == "plan":
                plan.append(row["event"])
    if header is None:
        raise ValueError(f"{path} is not a soak log (no header line)")
    return header, plan


@dataclass
class History:
    """Everything the clients saw."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    views: list[tuple[float, str, str, int]] = field(default_factory=list)  # (time, taskId, status, charged)
    bad_answers: list[dict[str, Any]] = field(default_factory=list)  # 5xx other than 503
    accounts: dict[int, tuple[str, str]] = field(default_factory=dict)  # index → (accountId, apiKey)

    def saw(self, body: Any) -> None:
        """Record a task view (or a list of them) seen in an answer."""
        items = body.get("items") if isinstance(body, dict) and "items" in body else [body]
        for v in items or []:
            if isinstance(v, dict) and isinstance(v.get("taskId"), str) and isinstance(v.get("status"), str):
                self.views.append((time.time(), v["taskId"], v["status"], int(v.get("charged") or 0)))
