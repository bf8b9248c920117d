"""Payment routes: the signed payments webhook and the operator's view of stored events.

``routes`` is included by ``api.app``. Handlers get settings, the price list and the Postgres pool from
:func:`api.services.services`; every error is a :class:`~shared.errors.CreditqError`, which ``api.errors``
turns into ``{"error": {"code", "message", ...}}``.

- ``POST /v1/webhooks/payments``: PAYMENTS_WEBHOOK_SECRET empty → 404 ``not_found`` (the webhook is disabled:
  as if the route did not exist, rather than 503, because no retry will ever succeed). Body over 64 KiB → 413
  ``payload_too_large``; bad, stale or missing signature → 400 ``invalid_signature`` (checked on the raw bytes
  before anything is parsed or stored); not a JSON object → 400 ``invalid_json``; no string ``id``/``type`` →
  422 ``validation_error``. Then the event is stored, and applied in one transaction with its ledger entry:
  200 ``{"ok": true, "applied": true|false, "eventId", ...}`` (false: a repeat), 200 ``{"ok": true,
  "ignored": true, ...}`` for types creditq does not act on, 422 ``event_not_applied`` (kept pending, so that
  the sender retries) when it cannot be applied yet.
- Admin routes (under ``api.auth.admin_mount``: 403 while CREDITQ_ADMIN_TOKEN is unset, 401 without the token):
  ``POST /v1/admin/payments/events/{eventId}/apply``: re-apply a stored event through the same path →
  200 outcome, 422 ``event_not_applied`` while still not applicable, 404 for an unknown id.
  ``POST /v1/admin/payments/events/{eventId}/dismiss`` ``{"reason"}``: dismiss a pending event that can never
  apply (recorded with the reason; the audit stops reporting it) → 200 event, 409 ``conflict`` when it is not
  pending, 404 for an unknown id.
  ``GET /v1/admin/payments/events?status=&type=&limit=&cursor=`` and ``GET /v1/admin/payments/events/{eventId}``:
  the stored events, newest first (``type=invoice.payment_failed`` lists failed payments); one event with its
  payload.
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from api.parsing import Fields, json_object, parse_object, query_limit, read_body
from api.services import services
from shared import db, metrics, payment_events
from shared.errors import CreditqError, NotFound, UnappliedEvent
from shared.ledger import payments
from shared.signature import HEADER, parse_secrets, verify

log = structlog.get_logger("creditq.api")

EVENTS = metrics.PAYMENT_EVENTS  # defined with every other metric, in shared.metrics


def _unapplied(outcome: payments.Outcome) -> UnappliedEvent:
    return UnappliedEvent(
        f"payment event {outcome.event_id} is stored but not applied: {outcome.detail}",
        eventId=outcome.event_id,
        detail=outcome.detail,
        attempts=outcome.attempts,
    )


async def payments_webhook(request: Request) -> JSONResponse:
    """``POST /v1/webhooks/payments``. Idempotent by event id: any number of deliveries, concurrent or not,
    apply an event once. The event is committed to ``payment_events`` before it is applied, and applied in one
    transaction with its ledger entry. Errors: NotFound (disabled), PayloadTooLarge, InvalidSignature,
    InvalidJson, InvalidInput, UnappliedEvent (422, stored, retry later), Unavailable."""
    svc = services(request)
    secrets = parse_secrets(svc.settings.payments_webhook_secret)
    if not secrets:
        raise NotFound("payments webhook is disabled (PAYMENTS_WEBHOOK_SECRET is not set)")
    body = await read_body(request)
    try:
        verify(body, request.headers.get(HEADER), secrets)
    except CreditqError as e:
        EVENTS.labels("rejected").inc()
        log.warning("payment_event.rejected", reason=e.message)
        raise
    event = parse_object(body)
    event_id, event_type = payment_events.event_identity(event)
    async with db.connection(await svc.db()) as conn:
        stored = await payments.store_event(conn, event_id, event_type, event)
        outcome = await payments.apply_event(conn, svc.pricing, event_id, stored)
    if outcome.status == "pending":
        EVENTS.labels("pending").inc()
        raise _unapplied(outcome)
    EVENTS.labels("ignored" if outcome.status == "ignored" else "applied" if outcome.applied else "repeat").inc()
    return JSONResponse(outcome.view())


async def admin_apply(request: Request) -> JSONResponse:
    """``POST /v1/admin/payments/events/{eventId}/apply``: apply a stored event now, through the webhook's own
    path. Idempotent (an applied event answers 200 ``applied: false``). Errors: NotFound (unknown event),
    Forbidden (admin disabled), Unauthenticated, UnappliedEvent (422 with the reason), Unavailable."""
    svc = services(request)
    async with db.connection(await svc.db()) as conn:
        outcome = await payments.apply_event(conn, svc.pricing, request.path_params["eventId"])
    if outcome.status == "pending":
        raise _unapplied(outcome)
    return JSONResponse(outcome.view())


async def admin_list(request: Request) -> JSONResponse:
    """``GET /v1/admin/payments/events?status=&limit=&cursor=`` → ``{"items", "nextCursor"}``, newest first.
    Read-only. Errors: InvalidInput (status, limit 1..200, cursor), Forbidden (admin disabled),
    Unauthenticated, Unavailable."""
    svc = services(request)
    limit = query_limit(request, default=50, maximum=200)
    status = request.query_params.get("status") or None
    event_type = request.query_params.get("type") or None
    async with db.connection(await svc.db()) as conn:
        events, cursor = await payments.list_events(
            conn, status, limit, request.query_params.get("cursor"), event_type=event_type
        )
    return JSONResponse({"items": [e.view() for e in events], "nextCursor": cursor})


async def admin_get(request: Request) -> JSONResponse:
    """``GET /v1/admin/payments/events/{eventId}`` → the stored event with its payload. Read-only. Errors:
    NotFound, Forbidden (admin disabled), Unauthenticated, Unavailable."""
    svc = services(request)
    async with db.connection(await svc.db()) as conn:
        event = await payments.get_event(conn, request.path_params["eventId"])
    return JSONResponse({**event.view(), "payload": event.payload})


async def admin_dismiss(request: Request) -> JSONResponse:
    """``POST /v1/admin/payments/events/{eventId}/dismiss`` ``{"reason"}`` → 200 the event, now ``dismissed``.
    Idempotent (a dismissed event answers as it is). Errors: InvalidJson, InvalidInput (reason missing, empty or
    over 500 characters), NotFound, Conflict (applied or ignored), Forbidden (admin disabled), Unauthenticated,
    Unavailable."""
    fields = Fields(await json_object(request))
    reason = fields.text("reason", required=True, max_length=payments.MAX_DISMISS_REASON_LENGTH)
    fields.check()
    async with db.connection(await services(request).db()) as conn:
        event = await payments.dismiss_event(conn, request.path_params["eventId"], reason or "")
    return JSONResponse(event.view())


routes: list[BaseRoute] = [
    Route("/v1/webhooks/payments", payments_webhook, methods=["POST"]),
]
# Under /v1/admin, behind the admin token (api.auth.admin_mount).
admin_routes = [
    Route("/payments/events", admin_list, methods=["GET"]),
    Route("/payments/events/{eventId}", admin_get, methods=["GET"]),
    Route("/payments/events/{eventId}/apply", admin_apply, methods=["POST"]),
    Route("/payments/events/{eventId}/dismiss", admin_dismiss, methods=["POST"]),
]
