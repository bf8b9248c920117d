"""Lots: ``GET /v1/account/lots`` (the caller's) and ``GET /v1/admin/accounts/{id}/lots`` (admin token).

Both answer ``{"items": [{"lotId", "kind", "granted", "remaining", "expiresAt"|null, "createdAt"}]}`` in the
order the lots are spent (soonest expiry first, never-expiring last). Only lots with credits left, unless
``?all=true``. Read-only.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import caller
from api.parsing import query_choice
from api.services import services
from shared.ledger import accounts, money


def _include_spent(request: Request) -> bool:
    return query_choice(request, "all", ("true", "false")) == "true"


async def my_lots(request: Request) -> JSONResponse:
    """``GET /v1/account/lots[?all=true]``: the caller's lots (a suspended account may read them). Errors:
    Unauthenticated, InvalidInput (``all``), Unavailable."""
    who = await caller(request)
    items = await money.lots(await services(request).db(), who.account.id, _include_spent(request))
    return JSONResponse({"items": [lot.view() for lot in items]})


async def account_lots(request: Request) -> JSONResponse:
    """``GET /v1/admin/accounts/{id}/lots[?all=true]``: an account's lots; ``{id}`` is the accountId or the
    externalId. Errors: NotFound, Forbidden (admin disabled), Unauthenticated, InvalidInput, Unavailable."""
    pool = await services(request).db()
    account = await accounts.get_account(pool, request.path_params["ref"])
    items = await money.lots(pool, account.id, _include_spent(request))
    return JSONResponse({"items": [lot.view() for lot in items]})


routes = [Route("/v1/account/lots", my_lots, methods=["GET"])]
# Under /v1/admin, behind the admin token (api.auth.admin_mount).
admin_routes = [Route("/accounts/{ref}/lots", account_lots, methods=["GET"])]
