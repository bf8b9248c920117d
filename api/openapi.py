"""The OpenAPI 3.1 document of creditq's HTTP API, served at ``GET /openapi.json``.

The document is data, written here by hand as Python dicts (one entry per operation in :data:`OPERATIONS`), so
that an endpoint added by another module is one more entry. ``tests/test_openapi.py`` keeps it true: every route
of the app is documented and every documented path is served, the document validates against the OpenAPI 3.1
schema, ``docs/API.md``'s endpoint index is generated from it, and schemathesis runs it against a live stack
(every answer must be one the document allows).

Conventions: paths use the contract's parameter names (``{taskId}``) where the app's routes may use others
(``{task_id}``); the comparison ignores parameter names. Every error answer is the one error object
(:data:`ERROR`); an operation lists exactly the statuses it can answer.
"""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

Schema = dict[str, Any]

VERSION = "0.2.0"

# --- Building blocks ---------------------------------------------------------------------------------------------


def ref(name: str) -> Schema:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null (OpenAPI 3.1: JSON Schema's type union)."""
    return {"anyOf": [schema, {"type": "null"}]}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, **extra: Any) -> Schema:
    """An object with these required and optional properties. Further properties are allowed: the contract
    grows by adding fields, and a client must ignore what it does not know."""
    props = {**required, **(optional or {})}
    out: Schema = {"type": "object", "properties": props, **extra}
    if required:
        out["required"] = list(required)
    return out


def page_of(item: str) -> Schema:
    """A page of a list: ``{"items": [...], "nextCursor": str|null}``."""
    return obj({"items": {"type": "array", "items": ref(item)}, "nextCursor": nullable(STR)})


_ERROR_TEXT = {
    400: "The body is not JSON, not an object, or (payments webhook) the signature is bad or stale.",
    401: "No credential, or an unknown one.",
    402: "Not enough available credits.",
    403: "Key revoked or expired; a suspended account's write; admin endpoints disabled.",
    404: "Unknown id, or an id of another account.",
    409: "Idempotency conflict, not cancelable, or a taken external id.",
    413: "Body over 64 KiB.",
    422: "Validation error: the fields at fault are in `details`.",
    429: "A tier limit: retry after `Retry-After` seconds.",
    503: "Postgres or Redis is unreachable: retry shortly.",
}


def error(status: int) -> Schema:
    """A documented error answer: the one error object."""
    out: Schema = {
        "description": _ERROR_TEXT[status],
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if status == 429:
        out["headers"] = {"Retry-After": {"schema": INT, "description": "Seconds to wait."}}
    if status == 503:
        out["headers"] = {"Retry-After": {"schema": INT, "description": "Seconds to wait."}}
    return out


def ok(description: str, schema: Schema, media: str = "application/json") -> Schema:
    """A success answer with a body."""
    return {"description": description, "content": {media: {"schema": schema}}}


def body(schema: Schema, required: bool = True) -> Schema:
    """A JSON request body."""
    return {"required": required, "content": {"application/json": {"schema": schema}}}


CALLER: list[dict[str, list[str]]] = [{"apiKey": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
# Errors every authenticated read can answer; writes add their own.
READ = (401, 403, 503)
WRITE = (400, 401, 403, 413, 422, 503)


def op(
    summary: str,
    responses: dict[int, Schema],
    errors: tuple[int, ...] = (),
    *,
    tag: str,
    security: list[dict[str, list[str]]] | None = None,
    request: Schema | None = None,
    parameters: list[Schema] | None = None,
    description: str | None = None,
) -> Schema:
    """One operation: its summary, answers (successes given, errors by status), auth and inputs."""
    out: Schema = {"summary": summary, "tags": [tag], "responses": {}}
    if description:
        out["description"] = description
    for status, answer in sorted(responses.items()):
        out["responses"][str(status)] = answer
    for status in sorted(set(errors)):
        out["responses"][str(status)] = error(status)
    out["security"] = security if security is not None else []
    if request is not None:
        out["requestBody"] = request
    if parameters:
        out["parameters"] = parameters
    return out


def path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": STR, "description": description}


def query(name: str, schema: Schema, description: str) -> Schema:
    """An optional query parameter. An empty value (``?limit=``) means "not given" everywhere in creditq (an HTML
    form sends its empty fields so), so a parameter that is not a free string also accepts ``""``."""
    if schema != STR:
        schema = {"anyOf": [schema, {"const": ""}]}
        description += " Empty: not given."
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


IDEMPOTENCY_KEY: Schema = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "The same key with the same body answers the first result again; another body is 409.",
}
LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Page size, 1..100 (default 20).")
CURSOR = query("cursor", STR, "`nextCursor` of the previous page.")
TASK_ID = path_param("taskId", "The task's id (`task_...`).")
ACCOUNT_REF = path_param("ref", "The accountId or the externalId.")

# --- Component schemas -------------------------------------------------------------------------------------------

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {"code": STR, "message": STR},
                {
                    "details": {"type": "array", "items": obj({"field": STR}, {"message": STR})},
                    "required": INT,
                    "available": INT,
                    "retryAfter": INT,
                },
            )
        },
        description="Every error: `code` is stable snake_case; the extra fields sit inside `error`.",
    ),
    "Limits": obj(
        {
            "dailyJobs": obj({"limit": nullable(INT), "used": nullable(INT)}),
            "concurrentJobs": obj({"limit": nullable(INT), "used": nullable(INT)}),
            "cooldownSeconds": {"type": "object", "additionalProperties": INT},
            "cooldownRemaining": {"type": "object", "additionalProperties": nullable(INT)},
        },
        description="The tier's limits and today's use (`used` is null while Redis is unreachable).",
    ),
    "Account": obj(
        {
            "accountId": STR,
            "externalId": nullable(STR),
            "tier": STR,
            "status": {"enum": ["active", "suspended"]},
            "balance": INT,
            "held": INT,
            "available": INT,
            "limits": ref("Limits"),
        },
        {
            "createdAt": TIME,
            "expiringNext": nullable(obj({"credits": INT, "expiresAt": TIME})),
            "owed": {"type": "integer", "minimum": 0},
        },
        description="`available = balance - held`; below zero only when a refund or dispute took back spent "
        "credits (`owed`), and then every job is 402.",
    ),
    "Lot": obj(
        {
            "lotId": STR,
            "kind": {"enum": ["grant", "purchase", "subscription", "adjustment", "transfer_in", "dispute_reversal"]},
            "granted": INT,
            "remaining": INT,
            "expiresAt": nullable(TIME),
            "createdAt": TIME,
        },
        description="Credits that came in together; spent soonest expiry first, never-expiring last.",
    ),
    "NewAccount": {
        "allOf": [ref("Account"), obj({"apiKey": STR, "keyId": STR})],
        "description": "The account view plus its first API key, shown once.",
    },
    "Entry": obj(
        {
            "id": STR,
            "kind": STR,
            "amount": INT,
            "heldDelta": INT,
            "balanceBefore": INT,
            "balanceAfter": INT,
            "heldAfter": INT,
            "createdAt": TIME,
        },
        {"taskId": STR, "reason": STR, "transferId": STR, "lotId": STR},
        description="A ledger entry. For every account: `balance = Σ amount`, `held = Σ heldDelta`.",
    ),
    "Transfer": obj(
        {"transferId": STR, "fromAccountId": STR, "toAccountId": STR, "amount": INT, "createdAt": TIME},
        {"memo": nullable(STR)},
    ),
    "InputField": obj(
        {"type": {"enum": ["string", "integer", "number", "boolean", "array"]}, "required": BOOL},
        {
            "default": {},
            "enum": {"type": "array"},
            "minimum": {"type": "number"},
            "maximum": {"type": "number"},
            "minLength": INT,
            "maxLength": INT,
            "minItems": INT,
            "maxItems": INT,
            "format": {"enum": ["url"]},
            "items": {"type": "object"},
        },
        description="One accepted `input` field: its type, allowed values and default.",
    ),
    "Pricing": obj(
        {
            "base": INT,
            "rules": {
                "type": "array",
                "items": obj(
                    {"field": STR},
                    {"byValue": {"type": "object", "additionalProperties": INT}, "perUnit": INT},
                ),
            },
        },
        description="cost = base + Σ rules: `byValue` credits of the field's value, or `perUnit` times its value.",
    ),
    "Model": obj(
        {"model": STR, "kind": STR, "family": STR, "cost": INT},
        {
            "inputs": {"type": "object", "additionalProperties": ref("InputField")},
            "pricing": ref("Pricing"),
        },
        description="A model of the price list; `cost` is the credits a job with the default input holds.",
    ),
    "BreakdownLine": obj({"credits": INT}, {"field": STR, "value": {}}),
    "Quote": obj(
        {"model": STR, "cost": INT, "breakdown": {"type": "array", "items": ref("BreakdownLine")}},
        description="What a submit of this input would hold now; the breakdown sums to `cost`.",
    ),
    "Task": obj(
        {
            "taskId": STR,
            "model": STR,
            "status": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
            "cost": INT,
            "charged": INT,
            "createdAt": TIME,
            "updatedAt": TIME,
        },
        {
            "finishedAt": TIME,
            "result": obj({"urls": {"type": "array", "items": STR}}),
            "error": obj({"code": STR, "message": STR}),
            "lastError": {
                "type": "string",
                "description": "While `queued`: the last create attempt's error (the task waits and is retried).",
            },
            "breakdown": {"type": "array", "items": ref("BreakdownLine")},
            "progress": {
                "type": "integer",
                "minimum": 0,
                "maximum": 100,
                "description": "The provider's progress figure, for models that report it; 100 once succeeded.",
            },
        },
        description="A task (job). Terminal states (`succeeded`, `failed`, `canceled`) never change again.",
    ),
    "JobRequest": obj(
        {
            "model": STR,
            "input": obj({"prompt": {"type": "string", "minLength": 1}}, description="The model's own input."),
        },
        {"callbackUrl": {"type": "string", "maxLength": 2048, "description": "Signed webhook of the job's end."}},
    ),
    "JobEvent": obj(
        {
            "event": {"enum": ["status", "progress"]},
            "id": STR,
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": ref("Task")},
        },
        description="One Server-Sent Event of `GET /v1/jobs/{taskId}/events`: `data` is the task view as JSON.",
    ),
    "WebhookEvent": obj(
        {
            "type": {"enum": ["job.succeeded", "job.failed", "job.canceled"]},
            "timestamp": TIME,
            "data": ref("Task"),
        },
        description="What creditq POSTs to a job's `callbackUrl` (Standard Webhooks signed).",
    ),
    "WebhookSecret": obj(
        {"secret": {"type": "string", "pattern": "^whsec_[A-Za-z0-9+/=]+$"}},
        {"previous": nullable(obj({"expiresAt": TIME}))},
        description="The account's webhook signing secret (Standard Webhooks' `whsec_` form).",
    ),
    "Delivery": obj(
        {
            "webhookId": STR,
            "type": STR,
            "status": {"enum": ["pending", "delivered", "failed"]},
            "attempts": INT,
            "lastStatusCode": nullable(INT),
            "nextAttemptAt": nullable(TIME),
        },
        {"lastError": nullable(STR), "createdAt": TIME, "deliveredAt": nullable(TIME)},
    ),
    "Deliveries": obj({"items": {"type": "array", "items": ref("Delivery")}}),
    "PaymentOutcome": obj(
        {"ok": BOOL, "eventId": STR, "type": STR, "status": STR, "applied": BOOL, "credited": INT, "attempts": INT},
        {"ignored": BOOL, "accountId": STR, "detail": STR},
    ),
    "PaymentEvent": obj(
        {
            "eventId": STR,
            "type": STR,
            "status": STR,
            "accountId": nullable(STR),
            "detail": nullable(STR),
            "attempts": INT,
            "receivedAt": TIME,
            "appliedAt": nullable(TIME),
        },
        {"payload": {"type": "object"}, "dismissedAt": TIME, "dismissedReason": STR},
    ),
    "Report": obj(
        {
            "ok": BOOL,
            "problems": {
                "type": "array",
                "items": obj({"kind": STR, "detail": STR}, {"accountId": STR, "taskId": STR, "eventId": STR}),
            },
        },
        {"fixed": {"type": "array"}},
    ),
    "Ready": obj(
        {
            "status": {"enum": ["ok", "degraded", "down"]},
            "checks": {"type": "object", "additionalProperties": STR},
        },
        {
            "details": obj(
                {},
                {"provider": obj({"failures": INT, "lastError": STR, "at": {"type": "number"}})},
                description="Why a check is not `ok`: the provider's connection failures in a row and the last.",
            )
        },
    ),
}

# --- The operations ----------------------------------------------------------------------------------------------

OPERATIONS: dict[str, dict[str, Schema]] = {
    "/healthz": {"get": op("The process is up.", {200: ok("Up.", obj({"status": STR}))}, tag="operations")},
    "/readyz": {
        "get": op(
            "Postgres, Redis and the provider circuit.",
            {200: ok("Ready (`ok` or `degraded`).", ref("Ready")), 503: ok("Something is down.", ref("Ready"))},
            tag="operations",
        )
    },
    "/metrics": {
        "get": op(
            "Prometheus text, the workers' figures included.",
            {200: ok("Metrics.", STR, "text/plain")},
            tag="operations",
        )
    },
    "/openapi.json": {"get": op("This document.", {200: ok("OpenAPI 3.1.", {"type": "object"})}, tag="operations")},
    "/admin": {
        "get": op(
            "The operator's HTML page.",
            {200: ok("The page.", STR, "text/html")},
            (401, 403, 422),
            tag="operations",
            security=ADMIN,
            parameters=[
                query("token", STR, "The admin token, for a browser (else the bearer header)."),
                query("account", STR, "Show this account (accountId or externalId)."),
            ],
        )
    },
    "/v1/models": {
        "get": op(
            "The price list. Public.",
            {200: ok("The models.", obj({"items": {"type": "array", "items": ref("Model")}}))},
            tag="jobs",
        )
    },
    "/v1/quotes": {
        "post": op(
            "The price of a job with this input, as a submit would hold it now. Holds nothing.",
            {200: ok("The cost and its breakdown.", ref("Quote"))},
            WRITE,
            tag="jobs",
            security=CALLER,
            request=body(obj({"model": STR, "input": {"type": "object", "description": "The model's own input."}})),
        )
    },
    "/v1/jobs": {
        "post": op(
            "Submit a job: its cost is held before the answer.",
            {202: ok("Queued (or the first task again, for a repeated Idempotency-Key).", ref("Task"))},
            (*WRITE, 402, 409, 429),
            tag="jobs",
            security=CALLER,
            request=body(ref("JobRequest")),
            parameters=[IDEMPOTENCY_KEY],
        ),
        "get": op(
            "The caller's jobs, newest first.",
            {200: ok("A page of tasks.", page_of("Task"))},
            (*READ, 422),
            tag="jobs",
            security=CALLER,
            parameters=[
                query("status", {"enum": ["queued", "running", "succeeded", "failed", "canceled"]}, "Only these."),
                LIMIT,
                CURSOR,
            ],
        ),
    },
    "/v1/jobs/{taskId}": {
        "get": op(
            "One job.",
            {200: ok("The task.", ref("Task"))},
            (*READ, 404),
            tag="jobs",
            security=CALLER,
            parameters=[TASK_ID],
        )
    },
    "/v1/jobs/{taskId}/cancel": {
        "post": op(
            "Cancel a queued job (its hold is released).",
            {200: ok("Canceled.", ref("Task"))},
            (*READ, 404, 409),
            tag="jobs",
            security=CALLER,
            parameters=[TASK_ID],
        )
    },
    "/v1/jobs/{taskId}/events": {
        "get": op(
            "Follow a job: Server-Sent Events.",
            {
                200: ok(
                    "`event: status` with the task view at once, then one event per change (`status`, or "
                    "`progress` when only the progress changed), each with the task view; the stream ends after a "
                    "terminal state. `: keep-alive` comments every 15 s. Each event's id names the state it shows.",
                    ref("JobEvent"),
                    "text/event-stream",
                )
            },
            (*READ, 404),
            tag="jobs",
            security=CALLER,
            parameters=[
                TASK_ID,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": STR,
                    "description": "The id of the last event seen: the current view is sent only if it changed since.",
                },
            ],
        )
    },
    "/v1/jobs/{taskId}/deliveries": {
        "get": op(
            "The job's webhook deliveries.",
            {200: ok("The deliveries, oldest first.", ref("Deliveries"))},
            (*READ, 404),
            tag="webhooks",
            security=CALLER,
            parameters=[TASK_ID],
        )
    },
    "/v1/jobs/{taskId}/deliveries/{webhookId}/retry": {
        "post": op(
            "Deliver this webhook again now.",
            {202: ok("Pending and due now.", ref("Delivery"))},
            (*READ, 404),
            tag="webhooks",
            security=CALLER,
            parameters=[TASK_ID, path_param("webhookId", "The delivery's `webhook-id` (`msg_...`).")],
        )
    },
    "/v1/account": {
        "get": op(
            "The caller's account.", {200: ok("The account.", ref("Account"))}, READ, tag="account", security=CALLER
        )
    },
    "/v1/account/transactions": {
        "get": op(
            "The caller's ledger entries, newest first.",
            {200: ok("A page of entries.", page_of("Entry"))},
            (*READ, 422),
            tag="account",
            security=CALLER,
            parameters=[LIMIT, CURSOR],
        )
    },
    "/v1/account/webhook-secret": {
        "get": op(
            "The account's webhook signing secret (made on first use).",
            {200: ok("The secret.", ref("WebhookSecret"))},
            READ,
            tag="webhooks",
            security=CALLER,
        )
    },
    "/v1/account/webhook-secret/rotate": {
        "post": op(
            "A new signing secret; the old one keeps signing beside it for 24 h.",
            {200: ok("The new secret.", ref("WebhookSecret"))},
            READ,
            tag="webhooks",
            security=CALLER,
        )
    },
    "/v1/account/lots": {
        "get": op(
            "The caller's lots, in the order they are spent.",
            {200: ok("The lots.", obj({"items": {"type": "array", "items": ref("Lot")}}))},
            (*READ, 422),
            tag="account",
            security=CALLER,
            parameters=[query("all", {"enum": ["true", "false"]}, "Include lots with nothing left.")],
        )
    },
    "/v1/transfers": {
        "post": op(
            "Move credits to another account.",
            {201: ok("The transfer.", ref("Transfer"))},
            (*WRITE, 402, 404, 409),
            tag="account",
            security=CALLER,
            request=body(
                obj(
                    {"toAccountId": STR, "amount": {"type": "integer", "minimum": 1}},
                    {"memo": {"type": "string", "maxLength": 500}},
                )
            ),
            parameters=[IDEMPOTENCY_KEY],
        )
    },
    "/v1/webhooks/kie": {
        "post": op(
            "The provider's callback: a hint that triggers a status check.",
            {200: ok("Noted.", obj({"ok": BOOL}))},
            (404, 413, 422, 503),
            tag="webhooks",
            parameters=[query("task", STR, "The task's id."), query("token", STR, "The task's callback secret.")],
        )
    },
    "/v1/webhooks/payments": {
        "post": op(
            "Payment events, signed like Stripe's (`Stripe-Signature`).",
            {200: ok("Applied, repeated or ignored.", ref("PaymentOutcome"))},
            (400, 404, 413, 422, 503),
            tag="payments",
            request=body({"type": "object"}),
            parameters=[
                {"name": "Stripe-Signature", "in": "header", "required": False, "schema": STR, "description": "t=,v1="}
            ],
        )
    },
    "/v1/admin/accounts": {
        "post": op(
            "Create an account.",
            {201: ok("The account and its API key (shown once).", ref("NewAccount"))},
            (*WRITE, 409),
            tag="admin",
            security=ADMIN,
            request=body(
                obj(
                    {},
                    {
                        "tier": STR,
                        "credits": {"type": "integer", "minimum": 0},
                        "externalId": {"type": "string", "maxLength": 200},
                    },
                ),
                required=False,
            ),
        )
    },
    "/v1/admin/accounts/{ref}": {
        "get": op(
            "An account.",
            {200: ok("The account.", ref("Account"))},
            (*READ, 404),
            tag="admin",
            security=ADMIN,
            parameters=[ACCOUNT_REF],
        ),
        "patch": op(
            "Change an account's tier or status.",
            {200: ok("The account.", ref("Account"))},
            (*WRITE, 404),
            tag="admin",
            security=ADMIN,
            request=body(obj({}, {"tier": STR, "status": {"enum": ["active", "suspended"]}})),
            parameters=[ACCOUNT_REF],
        ),
    },
    "/v1/admin/accounts/{ref}/credits": {
        "post": op(
            "Grant (positive) or adjust (negative) credits.",
            {201: ok("The entry and the account after it.", obj({"entry": ref("Entry"), "account": ref("Account")}))},
            (*WRITE, 402, 404, 409),
            tag="admin",
            security=ADMIN,
            request=body(
                obj(
                    {
                        "amount": {"type": "integer", "not": {"const": 0}},
                        "reason": {"type": "string", "maxLength": 500},
                    },
                    {"expiresAt": {**TIME, "description": "A positive amount's lot expires then (future)."}},
                )
            ),
            parameters=[ACCOUNT_REF, IDEMPOTENCY_KEY],
        )
    },
    "/v1/admin/accounts/{ref}/lots": {
        "get": op(
            "An account's lots, in the order they are spent.",
            {200: ok("The lots.", obj({"items": {"type": "array", "items": ref("Lot")}}))},
            (*READ, 404, 422),
            tag="admin",
            security=ADMIN,
            parameters=[ACCOUNT_REF, query("all", {"enum": ["true", "false"]}, "Include lots with nothing left.")],
        )
    },
    "/v1/admin/accounts/{ref}/keys": {
        "post": op(
            "Issue an API key.",
            {201: ok("The key (shown once).", obj({"keyId": STR, "apiKey": STR}, {"expiresAt": TIME}))},
            (*WRITE, 404),
            tag="admin",
            security=ADMIN,
            request=body(obj({}, {"expiresAt": TIME}), required=False),
            parameters=[ACCOUNT_REF],
        )
    },
    "/v1/admin/keys/{keyId}": {
        "delete": op(
            "Revoke an API key (idempotent).",
            {204: {"description": "Revoked."}},
            (*READ, 404),
            tag="admin",
            security=ADMIN,
            parameters=[path_param("keyId", "The key's id.")],
        )
    },
    "/v1/admin/reconcile": {
        "get": op(
            "The audit of every money invariant (`creditq audit`).",
            {200: ok("The report.", ref("Report"))},
            (*READ, 422),
            tag="admin",
            security=ADMIN,
            parameters=[
                query(
                    "fix",
                    # What api.ops reads as a flag: true/false, 1/0, yes/no in any case, spaces around ignored.
                    {
                        "type": "string",
                        "pattern": "^\\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)?\\s*$",
                    },
                    "Run the repairs first: true (or 1, yes); false (or 0, no) by default.",
                )
            ],
        )
    },
    "/v1/admin/payments/events": {
        "get": op(
            "Stored payment events, newest first.",
            {200: ok("A page of events.", page_of("PaymentEvent"))},
            (*READ, 422),
            tag="payments",
            security=ADMIN,
            parameters=[
                query("status", {"enum": ["pending", "applied", "ignored", "dismissed"]}, "Only these."),
                query("type", STR, "Only this event type (e.g. `invoice.payment_failed`)."),
                query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "Page size, 1..200 (default 50)."),
                CURSOR,
            ],
        )
    },
    "/v1/admin/payments/events/{eventId}": {
        "get": op(
            "One stored payment event with its payload.",
            {200: ok("The event.", ref("PaymentEvent"))},
            (*READ, 404),
            tag="payments",
            security=ADMIN,
            parameters=[path_param("eventId", "The sender's event id.")],
        )
    },
    "/v1/admin/payments/events/{eventId}/apply": {
        "post": op(
            "Apply a stored event now (idempotent).",
            {200: ok("The outcome.", ref("PaymentOutcome"))},
            (*READ, 404, 422),
            tag="payments",
            security=ADMIN,
            parameters=[path_param("eventId", "The sender's event id.")],
        )
    },
    "/v1/admin/payments/events/{eventId}/dismiss": {
        "post": op(
            "Dismiss a pending event that can never apply, with a reason (recorded); the audit stops reporting it.",
            {200: ok("The event, dismissed.", ref("PaymentEvent"))},
            (*WRITE, 404, 409),
            tag="payments",
            security=ADMIN,
            request=body(obj({"reason": {"type": "string", "minLength": 1, "maxLength": 500}})),
            parameters=[path_param("eventId", "The sender's event id.")],
        )
    },
}


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document (a fresh copy: callers may change it). Pure."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "creditq",
                "version": VERSION,
                "description": "A credit-metered gateway for slow AI generation jobs. Errors are "
                '`{"error": {"code", "message", ...}}`; credits are integers; fields are camelCase.',
                "license": {"name": "MIT", "identifier": "MIT"},
            },
            "servers": [{"url": "/"}],
            "tags": [{"name": t} for t in ("jobs", "account", "webhooks", "payments", "admin", "operations")],
            "paths": OPERATIONS,
            "components": {
                "schemas": SCHEMAS,
                "securitySchemes": {
                    "apiKey": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "A caller's API key: `Authorization: Bearer <apiKey>`.",
                    },
                    "adminToken": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "The operator's token: `Authorization: Bearer <CREDITQ_ADMIN_TOKEN>`.",
                    },
                },
            },
        }
    )


_CACHED: dict[str, Any] | None = None


async def openapi_json(request: Request) -> JSONResponse:
    """``GET /openapi.json``: the document. Public, no database."""
    global _CACHED
    if _CACHED is None:
        _CACHED = document()
    return JSONResponse(_CACHED)


def markdown_index(doc: dict[str, Any] | None = None) -> str:
    """The endpoint index of ``docs/API.md`` (between its generated-section markers), from the document. Pure."""
    doc = doc or document()
    lines = ["| method | path | auth | success | summary |", "|---|---|---|---|---|"]
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            schemes = [next(iter(s), "none") for s in operation.get("security", [])] or ["none"]
            auth = {"apiKey": "API key", "adminToken": "admin token", "none": "none"}
            who = " or ".join(dict.fromkeys(auth[s] for s in schemes))
            success = ", ".join(s for s in operation["responses"] if s.startswith("2"))
            lines.append(f"| {method.upper()} | `{path}` | {who} | {success} | {operation['summary']} |")
    return "\n".join(lines) + "\n"


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]


BEGIN_MARK = "<!-- BEGIN ENDPOINT INDEX: generated from api/openapi.py by `python -m api.openapi`; do not edit -->"
END_MARK = "<!-- END ENDPOINT INDEX -->"


def with_index(markdown: str) -> str:
    """``markdown`` (docs/API.md) with its endpoint index replaced by the current one. Raises ValueError when
    the markers are missing. Pure."""
    start, end = markdown.index(BEGIN_MARK) + len(BEGIN_MARK), markdown.index(END_MARK)
    return markdown[:start] + "\n" + markdown_index() + markdown[end:]


def main() -> None:
    """``python -m api.openapi``: rewrite docs/API.md's endpoint index from the document."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "API.md"
    path.write_text(with_index(path.read_text()))
    print(f"wrote the endpoint index of {path}")


if __name__ == "__main__":
    main()
