"""What the task transactions tell operators once they have committed: JSON log lines and metrics.

:mod:`shared.ledger.tasks` calls these right after a transaction that changed something (an idempotent repeat
moved nothing and is not reported), in whichever process ran it (the API's submit and cancel, a worker's
settlement, ``creditq audit --fix``), so each movement is reported exactly once. Every line carries
``task_id``, ``account_id``, ``model`` and ``provider_task_id``; ``request_id`` joins from structlog's context
when an API request is behind it.

Lines: one per transaction, so one per state change and per money movement, each money line with ``money``
(``hold``, ``capture``, ``release``) and ``amount``: ``task.queued`` (the hold) and ``task.canceled`` (the
release), the state changes that happen in the API; ``money.capture`` / ``money.release`` when a task ends in a
worker (which logs the state change itself: ``task.succeeded``, ``task.failed``) or by ``audit --fix``. The
submit path is the hot one: it gets one line, not two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from shared import metrics

log = structlog.get_logger("creditq.shared.ledger")


def _fields(task: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "task_id": task["id"],
        "account_id": task["account_id"],
        "model": task["model"],
        "provider_task_id": task["provider_task_id"],
    }


def reason(task: Mapping[str, Any]) -> str:
    """The ``reason`` label of a terminal task: ``ok`` for a success, ``client`` for a cancel, else its error
    code (``unknown`` if it has none)."""
    if task["status"] == "succeeded":
        return "ok"
    if task["status"] == "canceled" and not task["error_code"]:
        return "client"
    return str(task["error_code"] or "unknown")


def submitted(task: Mapping[str, Any]) -> None:
    """A new task was inserted and its cost held."""
    model, cost = task["model"], int(task["cost"])
    metrics.TASKS_SUBMITTED.labels(model).inc()
    metrics.CREDITS_HELD.labels(model).inc(cost)
    log.info("task.queued", **_fields(task), status="queued", money="hold", amount=cost)


def finished(task: Mapping[str, Any]) -> None:
    """A live task became terminal and its hold was captured (succeeded) or released (failed, canceled)."""
    model, status, why = task["model"], task["status"], reason(task)
    cost, charged = int(task["cost"]), int(task["charged"])
    metrics.TASKS_FINISHED.labels(model, status, why).inc()
    fields = _fields(task)
    if charged:
        metrics.CREDITS_CAPTURED.labels(model).inc(charged)
        log.info("money.capture", **fields, status=status, money="capture", amount=charged, reason=why)
    if cost - charged:
        # A success captures the whole cost today; a partial capture would release the rest.
        metrics.CREDITS_RELEASED.labels(model, why).inc(cost - charged)
        event = "task.canceled" if status == "canceled" else "money.release"
        log.info(event, **fields, status=status, money="release", amount=cost - charged, reason=why)
