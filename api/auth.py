"""Who is calling: an API key (``Authorization: Bearer <apiKey>``) or the admin token.

- No key or an unknown key → 401 ``unauthenticated``; a revoked or expired key → 403 ``forbidden``.
- A suspended account may still read (its account, its jobs); its writes (jobs, cancels, transfers) → 403.
- The admin token is compared in constant time; with ``CREDITQ_ADMIN_TOKEN`` unset the admin endpoints are
  disabled (403), so an empty token can never match.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from api.services import services
from shared.errors import Forbidden, Unauthenticated
from shared.ledger import accounts

# Real keys are ~46 characters; anything much longer is not worth a database lookup.
_MAX_KEY_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its account (as of this request) and the key it used."""

    account: accounts.Account
    key_id: str


def bearer(request: Request) -> str | None:
    """The bearer credential of the Authorization header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


async def caller(request: Request, *, write: bool = False, fresh: bool = False) -> Caller:
    """Authenticate the API key. With ``write``, also require an active (not suspended) account.

    Through the process's key cache (:mod:`api.authcache`: a revoked key, a suspended account, a tier change
    are seen within its documented bound), so ``Caller.account``'s tier and status are current but its
    balance and held credits may be old: with ``fresh`` the key is read from Postgres (for the account view,
    which shows the balance).

    Raises Unauthenticated (no key, unknown key), Forbidden (revoked/expired key; suspended on a write),
    Unavailable (Postgres down).
    """
    key = bearer(request)
    if key is None:
        raise Unauthenticated("an API key is required: send Authorization: Bearer <apiKey>")
    if len(key) > _MAX_KEY_LENGTH:
        raise Unauthenticated("unknown API key")
    svc = services(request)
    if fresh:
        check = await accounts.authenticate(await svc.db(), key)
    else:
        check = await svc.auth_cache.authenticate(await svc.db(), key)
    if check is None:
        raise Unauthenticated("unknown API key")
    if not check.usable:
        raise Forbidden(check.why)
    if write and check.account.status != "active":
        raise Forbidden("this account is suspended: it can read but not start jobs, cancel or transfer")
    return Caller(check.account, check.key_id)


def require_admin(request: Request, *, query: bool = False) -> str | None:
    """Require the admin token as the bearer header, or, with ``query`` (the operator's page, opened in a
    browser), as ``?token=``. Returns the query token when that is how it came (the page keeps it in its links),
    else None. Raises Forbidden (admin disabled) or Unauthenticated (missing/wrong token)."""
    token = services(request).settings.admin_token
    if not token:
        raise Forbidden("the admin endpoints are disabled: set CREDITQ_ADMIN_TOKEN to enable them")
    presented = bearer(request)
    if presented is not None and hmac.compare_digest(presented.encode(), token.encode()):
        return None
    if not query:
        raise Unauthenticated("the admin token is required: send Authorization: Bearer <CREDITQ_ADMIN_TOKEN>")
    in_query = request.query_params.get("token")
    if in_query is not None and hmac.compare_digest(in_query.encode(), token.encode()):
        return in_query
    raise Unauthenticated(
        "the admin token is required: send Authorization: Bearer <token> or open /admin?token=<token>"
    )


Endpoint = Callable[[Request], Awaitable[Response]]
ADMIN_PREFIX = "/v1/admin"


def _admin_only(endpoint: Endpoint) -> Endpoint:
    @functools.wraps(endpoint)
    async def checked(request: Request) -> Response:
        require_admin(request)
        return await endpoint(request)

    return checked


def admin_mount(routes: Sequence[Route]) -> Mount:
    """Every ``/v1/admin`` route under one Mount, each behind the one admin-token check (:func:`require_admin`,
    run once per request before its handler). ``routes`` have paths relative to ``/v1/admin``. The check runs
    after routing, as a handler's first line would: an unknown path is still 404 and a wrong method 405."""
    return Mount(
        ADMIN_PREFIX,
        routes=[Route(r.path, _admin_only(r.endpoint), methods=r.methods, name=r.name) for r in routes],
    )
