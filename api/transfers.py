"""``POST /v1/transfers``: move credits from the caller to another account."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import caller
from api.requests import Fields, idempotency_key, json_object, request_hash
from api.services import services
from shared.errors import InvalidInput
from shared.ledger import accounts, money

MAX_MEMO_LENGTH = 500


async def create_transfer(request: Request) -> JSONResponse:
    """``{"toAccountId", "amount", "memo"?}`` with an optional ``Idempotency-Key`` → 201 transfer.

    ``toAccountId`` may be an accountId or an externalId. Raises InvalidInput (bad fields, to oneself),
    NotFound (no such recipient), InsufficientCredits, Forbidden (caller suspended), IdempotencyConflict (the
    same key with another body). A repeat with the same key and body answers the first transfer again (201).
    """
    who = await caller(request, write=True)
    body = await json_object(request)
    key = idempotency_key(request)
    fields = Fields(body)
    to_ref = fields.string("toAccountId", required=True)
    amount = fields.integer("amount", required=True, minimum=1)
    memo = fields.text("memo", max_length=MAX_MEMO_LENGTH)
    fields.check()
    pool = await services(request).db()
    recipient = await accounts.get_account(pool, to_ref)
    if recipient.id == who.account.id:
        raise InvalidInput(
            "cannot transfer to your own account",
            details=[{"field": "toAccountId", "message": "is your own account"}],
        )
    digest = request_hash(body) if key is not None else None
    transfer = await money.transfer(pool, who.account.id, recipient.id, amount, memo, key, digest)
    return JSONResponse(money.transfer_view(transfer), 201)


routes = [Route("/v1/transfers", create_transfer, methods=["POST"])]
