"""``POST /v1/transfers``: credits move between accounts exactly once, never below zero."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from tests.apiserver import ADMIN, balance, bearer, error_of, job
from tests.conftest import MakeAccount


async def test_moves_credits_and_writes_both_entries(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    sender, key = await make_account(credits=100)
    recipient, recipient_key = await make_account()
    r = await client.post(
        "/v1/transfers", json={"toAccountId": recipient.id, "amount": 30, "memo": "rent"}, headers=bearer(key)
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["transferId"]
    assert (body["fromAccountId"], body["toAccountId"], body["amount"]) == (sender.id, recipient.id, 30)
    assert "createdAt" in body
    assert await balance(pool, sender.id) == (70, 0)
    assert await balance(pool, recipient.id) == (30, 0)
    out = (await client.get("/v1/account/transactions", headers=bearer(key))).json()["items"][0]
    into = (await client.get("/v1/account/transactions", headers=bearer(recipient_key))).json()["items"][0]
    assert (out["kind"], out["amount"], out["reason"]) == ("transfer_out", -30, "rent")
    assert (into["kind"], into["amount"]) == ("transfer_in", 30)


async def test_recipient_by_external_id(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    _, key = await make_account(credits=10)
    ext = f"friend-{uuid.uuid4().hex[:8]}"
    recipient, _ = await make_account(external_id=ext)
    r = await client.post("/v1/transfers", json={"toAccountId": ext, "amount": 4}, headers=bearer(key))
    assert r.status_code == 201, r.text
    assert r.json()["toAccountId"] == recipient.id
    assert await balance(pool, recipient.id) == (4, 0)


async def test_to_oneself_is_422(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    ext = f"me-{uuid.uuid4().hex[:8]}"
    me, key = await make_account(credits=10, external_id=ext)
    for ref in (me.id, ext):
        r = await client.post("/v1/transfers", json={"toAccountId": ref, "amount": 1}, headers=bearer(key))
        assert error_of(r, 422, "validation_error")["details"][0]["field"] == "toAccountId"


async def test_unknown_recipient_is_404(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=10)
    r = await client.post("/v1/transfers", json={"toAccountId": "acct_nobody", "amount": 1}, headers=bearer(key))
    error_of(r, 404, "not_found")


async def test_short_is_402_and_holds_count(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    sender, key = await make_account(credits=10)
    recipient, _ = await make_account()
    assert (await client.post("/v1/jobs", json=job(), headers=bearer(key))).status_code == 202  # holds 4
    r = await client.post("/v1/transfers", json={"toAccountId": recipient.id, "amount": 7}, headers=bearer(key))
    error = error_of(r, 402, "insufficient_credits")
    assert (error["required"], error["available"]) == (7, 6)
    assert await balance(pool, sender.id) == (10, 4)
    assert await balance(pool, recipient.id) == (0, 0)


async def test_idempotent_by_key(client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
    sender, key = await make_account(credits=100)
    recipient, _ = await make_account()
    headers = {**bearer(key), "Idempotency-Key": "pay-1"}
    body = {"toAccountId": recipient.id, "amount": 25}
    first = await client.post("/v1/transfers", json=body, headers=headers)
    again = await client.post("/v1/transfers", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["transferId"] == again.json()["transferId"]
    assert await balance(pool, sender.id) == (75, 0)
    error_of(
        await client.post("/v1/transfers", json={**body, "amount": 26}, headers=headers), 409, "idempotency_conflict"
    )
    concurrent = await asyncio.gather(
        *(
            client.post("/v1/transfers", json=body, headers={**bearer(key), "Idempotency-Key": "pay-2"})
            for _ in range(10)
        )
    )
    assert {r.status_code for r in concurrent} == {201}
    assert len({r.json()["transferId"] for r in concurrent}) == 1
    assert await balance(pool, sender.id) == (50, 0)
    assert await balance(pool, recipient.id) == (50, 0)


@pytest.mark.parametrize("amount", [0, -5, "5", 2.5, True, None])
async def test_bad_amounts_are_422(client: httpx.AsyncClient, make_account: MakeAccount, amount: object) -> None:
    _, key = await make_account(credits=10)
    recipient, _ = await make_account()
    r = await client.post("/v1/transfers", json={"toAccountId": recipient.id, "amount": amount}, headers=bearer(key))
    assert error_of(r, 422, "validation_error")["details"][0]["field"] == "amount"


async def test_racing_transfers_never_overspend(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    sender, key = await make_account(credits=100)
    recipient, _ = await make_account()
    answers = await asyncio.gather(
        *(
            client.post("/v1/transfers", json={"toAccountId": recipient.id, "amount": 10}, headers=bearer(key))
            for _ in range(25)
        )
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * 10 + [402] * 15
    assert await balance(pool, sender.id) == (0, 0)
    assert await balance(pool, recipient.id) == (100, 0)


async def test_suspended_recipient_still_receives(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    _, key = await make_account(credits=10)
    recipient, _ = await make_account()
    await client.patch(f"/v1/admin/accounts/{recipient.id}", json={"status": "suspended"}, headers=ADMIN)
    r = await client.post("/v1/transfers", json={"toAccountId": recipient.id, "amount": 3}, headers=bearer(key))
    assert r.status_code == 201
    assert await balance(pool, recipient.id) == (3, 0)
