"""``POST /v1/transfers``: move credits from the caller to another account."""

from __future__ import annotations

import unicodedata

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import caller
from api.parsing import Fields, idempotency_key, json_object, request_hash
from api.services import services
from shared.errors import InvalidInput
from shared.ledger import money

MAX_MEMO_LENGTH = 500


async def create_transfer(request: Request) -> JSONResponse:
    """``{"toAccountId", "amount", "memo"?}`` with an optional ``Idempotency-Key`` → 201 transfer.

    ``toAccountId`` may be an accountId or an externalId. The recipient is looked up inside the transfer's one
    SQL call, after the sender's own checks: a sender who cannot pay is told so (402) whether or not the
    recipient exists, and an unknown recipient is 404 whatever the amount. Raises InvalidInput (bad fields, to
    oneself), Forbidden (caller suspended), InsufficientCredits, NotFound (no such recipient),
    IdempotencyConflict (the same key with another body). A repeat with the same key and body answers the first
    transfer again (201).
    """
    who = await caller(request, write=True)
    body = await json_object(request)
    key = idempotency_key(request)
    fields = Fields(body)
    to_ref = fields.string("toAccountId", required=True)
    amount = fields.integer("amount", required=True, minimum=1)
    memo = fields.text("memo", max_length=MAX_MEMO_LENGTH)
    fields.check()
    to_ref = unicodedata.normalize("NFC", to_ref)  # as externalIds are stored
    if to_ref in (who.account.id, who.account.external_id):
        raise InvalidInput(
            "cannot transfer to your own account",
            details=[{"field": "toAccountId", "message": "is your own account"}],
        )
    pool = await services(request).db()
    digest = request_hash(body) if key is not None else None
    transfer = await money.transfer(pool, who.account.id, to_ref, amount, memo, key, digest)
    return JSONResponse(money.transfer_view(transfer), 201)


routes = [Route("/v1/transfers", create_transfer, methods=["POST"])]
