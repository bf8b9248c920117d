"""The operator's account endpoints under ``/v1/admin`` (admin token required): create, read and change
accounts, grant or adjust credits, issue and revoke API keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.accounts import account_view
from api.parsing import Fields, idempotency_key, json_object
from api.services import services
from shared.ledger import accounts, money

MAX_REASON_LENGTH = 500


async def create_account(request: Request) -> JSONResponse:
    """``POST /v1/admin/accounts`` ``{"tier"?, "credits"?, "externalId"?}`` → 201 account view plus ``apiKey``
    (shown once) and ``keyId``. Raises InvalidInput, Conflict (externalId taken)."""
    svc = services(request)
    fields = Fields(await json_object(request, optional=True))
    tier = fields.string("tier", choices=list(svc.pricing.tiers)) or "free"
    credits = fields.integer("credits", minimum=0) or 0
    external_id = fields.external_id("externalId")
    fields.check()
    account, key_id, api_key = await accounts.create_account(await svc.db(), tier, credits, external_id)
    view = await account_view(svc, account)
    return JSONResponse({**view, "apiKey": api_key, "keyId": key_id}, 201)


async def account(request: Request) -> JSONResponse:
    """``GET /v1/admin/accounts/{id}`` → account view; ``PATCH`` ``{"tier"?, "status"?}`` changes it first.
    ``{id}`` is the accountId or the externalId. Raises NotFound, InvalidInput."""
    svc = services(request)
    ref = request.path_params["ref"]
    if request.method == "PATCH":
        fields = Fields(await json_object(request))
        tier = fields.string("tier", choices=list(svc.pricing.tiers))
        status = fields.string("status", choices=("active", "suspended"))
        fields.check()
        found = await accounts.update_account(await svc.db(), ref, tier, status)
        # Other processes learn it from Postgres's notification; this one at once.
        svc.auth_cache.invalidate(found.id)
    else:
        found = await accounts.get_account(await svc.db(), ref)
    return JSONResponse(await account_view(svc, found))


async def add_credits(request: Request) -> JSONResponse:
    """``POST /v1/admin/accounts/{id}/credits`` ``{"amount": int ≠ 0, "reason", "expiresAt"?}`` with an
    optional ``Idempotency-Key`` → 201 ``{"entry", "account"}``. A positive amount is a ``grant`` (a lot that
    expires at ``expiresAt``, ISO 8601 in the future, or never), a negative one an ``adjustment`` that never
    takes available below 0 (402) and may not carry ``expiresAt`` (422). A repeated key answers the first
    entry; the same key with another amount is 409. Raises NotFound, InvalidInput, InsufficientCredits,
    IdempotencyConflict."""
    svc = services(request)
    body = await json_object(request)
    key = idempotency_key(request)
    fields = Fields(body)
    amount = fields.integer("amount", required=True, nonzero=True)
    reason = fields.text("reason", required=True, max_length=MAX_REASON_LENGTH)
    expires_at = future_expiry(fields, amount)
    fields.check()
    pool = await svc.db()
    target = await accounts.get_account(pool, request.path_params["ref"])
    entry = await money.credit(pool, target.id, amount, reason, key, expires_at=expires_at)
    after = await accounts.get_account(pool, target.id)
    return JSONResponse({"entry": accounts.entry_view(entry), "account": await account_view(svc, after)}, 201)


MAX_EXPIRY = timedelta(days=100 * 366)


def future_expiry(fields: Fields, amount: int) -> datetime | None:
    """``expiresAt`` of a credit: absent (never expires), or a date-time in the future (within a century) on a
    positive amount; a problem is added to ``fields``. Pure apart from reading the clock."""
    expires_at = fields.timestamp("expiresAt")
    if expires_at is None:
        return None
    now = datetime.now(UTC)
    try:
        in_range = now < expires_at <= now + MAX_EXPIRY
    except OverflowError:  # an offset that takes the date past year 9999
        in_range = False
    if not in_range:
        fields.add("expiresAt", "must be in the future (and within 100 years)")
        return None
    if amount < 0:
        fields.add("expiresAt", "only a positive amount can expire")
        return None
    return expires_at


async def create_key(request: Request) -> JSONResponse:
    """``POST /v1/admin/accounts/{id}/keys`` (optional body ``{"expiresAt": ISO 8601}``) → 201
    ``{"keyId", "apiKey"}``; the key is shown once. Raises NotFound, InvalidInput."""
    fields = Fields(await json_object(request, optional=True))
    expires_at = fields.timestamp("expiresAt")
    fields.check()
    key_id, api_key = await accounts.create_key(await services(request).db(), request.path_params["ref"], expires_at)
    view = {"keyId": key_id, "apiKey": api_key}
    if expires_at is not None:
        view["expiresAt"] = expires_at.isoformat()
    return JSONResponse(view, 201)


async def revoke_key(request: Request) -> Response:
    """``DELETE /v1/admin/keys/{keyId}`` → 204; the key stops working at once in this process, and in the
    others when Postgres's notification reaches them (api.authcache). Idempotent. Raises NotFound."""
    svc = services(request)
    svc.auth_cache.invalidate(await accounts.revoke_key(await svc.db(), request.path_params["key_id"]))
    return Response(status_code=204)


# Under /v1/admin, behind the admin token (api.auth.admin_mount).
admin_routes = [
    Route("/accounts", create_account, methods=["POST"]),
    Route("/accounts/{ref}", account, methods=["GET", "PATCH"]),
    Route("/accounts/{ref}/credits", add_credits, methods=["POST"]),
    Route("/accounts/{ref}/keys", create_key, methods=["POST"]),
    Route("/keys/{key_id}", revoke_key, methods=["DELETE"]),
]
