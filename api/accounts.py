"""The caller's own account: ``GET /v1/account`` and ``GET /v1/account/transactions``; and the account view
that the admin endpoints show too."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import caller
from api.parsing import query_limit
from api.services import Services, services
from shared import tier_limits
from shared.errors import Unavailable
from shared.ledger import accounts, money

log = structlog.get_logger("creditq.api")


async def account_view(svc: Services, account: accounts.Account) -> dict[str, Any]:
    """The account view of docs/API.md. ``limits`` shows the tier's limits and today's use; when Redis is down the
    use is ``null`` rather than the whole view a 503: the balance lives in Postgres and is still worth showing.
    """
    tier = svc.pricing.tier(account.tier)
    try:
        usage = await tier_limits.usage(await svc.arq(), svc.settings, account.id, tier)
    except Unavailable:
        usage = tier_limits.unknown_usage(tier)
    return {
        "accountId": account.id,
        "externalId": account.external_id,
        "tier": account.tier,
        "status": account.status,
        "balance": account.balance,
        "held": account.held,
        "available": account.available,
        "limits": usage,
        "createdAt": account.created_at.isoformat(),
        **await money_view(svc, account),
    }


async def money_view(svc: Services, account: accounts.Account) -> dict[str, Any]:
    """The account view's money-over-time fields: ``expiringNext`` (``{"credits", "expiresAt"}`` of the lots
    that expire soonest, or null) and ``owed`` (credits a refund or dispute took back after they were spent:
    ``-available`` while available is below zero, else 0; every job is 402 until it is paid)."""
    return {
        "expiringNext": await money.expiring_next(await svc.db(), account.id),
        "owed": max(0, -account.available),
    }


async def get_account(request: Request) -> JSONResponse:
    """``GET /v1/account``: the caller's account view (a suspended account may read it). The key is read fresh
    (not from the key cache): the view shows the balance."""
    who = await caller(request, fresh=True)
    return JSONResponse(await account_view(services(request), who.account))


async def list_transactions(request: Request) -> JSONResponse:
    """``GET /v1/account/transactions?limit=&cursor=``: the caller's ledger entries, newest first."""
    who = await caller(request)
    limit = query_limit(request)
    items, next_cursor = await accounts.list_entries(
        await services(request).db(), who.account.id, limit, request.query_params.get("cursor") or None
    )
    return JSONResponse({"items": items, "nextCursor": next_cursor})


routes = [
    Route("/v1/account", get_account, methods=["GET"]),
    Route("/v1/account/transactions", list_transactions, methods=["GET"]),
]
