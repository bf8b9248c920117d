"""The account endpoints: admin create/read/change, credits, keys, the caller's view and statement."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from tests.apiserver import ADMIN, balance, bearer, error_of, job
from tests.conftest import MakeAccount

VIEW_FIELDS = {"accountId", "externalId", "tier", "status", "balance", "held", "available", "limits"}


class TestAdminAccounts:
    async def test_create_shows_the_view_and_a_working_key(self, client: httpx.AsyncClient) -> None:
        ext = f"user-{uuid.uuid4().hex[:8]}"
        r = await client.post("/v1/admin/accounts", json={"credits": 50, "externalId": ext}, headers=ADMIN)
        assert r.status_code == 201, r.text
        view = r.json()
        assert VIEW_FIELDS | {"apiKey"} <= set(view)
        assert (view["tier"], view["status"], view["externalId"]) == ("free", "active", ext)
        assert (view["balance"], view["held"], view["available"]) == (50, 0, 50)
        assert view["limits"] == {
            "dailyJobs": {"limit": 10, "used": 0},
            "concurrentJobs": {"limit": 2, "used": 0},
            "cooldownSeconds": {"video": 180},
            "cooldownRemaining": {"video": 0},
        }
        me = await client.get("/v1/account", headers=bearer(view["apiKey"]))
        assert me.status_code == 200
        assert me.json()["accountId"] == view["accountId"]
        assert "apiKey" not in me.json()

    async def test_create_with_defaults_and_empty_body(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/admin/accounts", headers=ADMIN)
        assert r.status_code == 201, r.text
        assert (r.json()["tier"], r.json()["balance"], r.json()["externalId"]) == ("free", 0, None)

    async def test_pro_tier_has_no_daily_limit(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/admin/accounts", json={"tier": "pro"}, headers=ADMIN)
        assert r.status_code == 201
        assert r.json()["limits"]["dailyJobs"] == {"limit": None, "used": 0}
        assert r.json()["limits"]["concurrentJobs"] == {"limit": 20, "used": 0}
        assert r.json()["limits"]["cooldownSeconds"] == {}

    async def test_taken_external_id_is_a_conflict(self, client: httpx.AsyncClient) -> None:
        ext = f"dup-{uuid.uuid4().hex[:8]}"
        assert (await client.post("/v1/admin/accounts", json={"externalId": ext}, headers=ADMIN)).status_code == 201
        r = await client.post("/v1/admin/accounts", json={"externalId": ext}, headers=ADMIN)
        error_of(r, 409, "conflict")

    async def test_bad_fields_are_listed(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/admin/accounts", json={"tier": "gold", "credits": -1, "externalId": 7}, headers=ADMIN
        )
        error = error_of(r, 422, "validation_error")
        assert {d["field"] for d in error["details"]} == {"tier", "credits", "externalId"}

    async def test_get_by_id_or_external_id(self, client: httpx.AsyncClient) -> None:
        ext = f"ext-{uuid.uuid4().hex[:8]}"
        created = (await client.post("/v1/admin/accounts", json={"externalId": ext}, headers=ADMIN)).json()
        by_id = await client.get(f"/v1/admin/accounts/{created['accountId']}", headers=ADMIN)
        by_ext = await client.get(f"/v1/admin/accounts/{ext}", headers=ADMIN)
        assert by_id.status_code == by_ext.status_code == 200
        assert by_id.json()["accountId"] == by_ext.json()["accountId"] == created["accountId"]
        error_of(await client.get("/v1/admin/accounts/acct_nope", headers=ADMIN), 404, "not_found")

    async def test_patch_tier_and_status(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, _ = await make_account()
        r = await client.patch(
            f"/v1/admin/accounts/{account.id}", json={"tier": "pro_plus", "status": "suspended"}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        assert (r.json()["tier"], r.json()["status"]) == ("pro_plus", "suspended")
        assert r.json()["limits"]["concurrentJobs"]["limit"] == 50
        bad = await client.patch(
            f"/v1/admin/accounts/{account.id}", json={"tier": "gold", "status": "gone"}, headers=ADMIN
        )
        assert {d["field"] for d in error_of(bad, 422, "validation_error")["details"]} == {"tier", "status"}
        error_of(await client.patch("/v1/admin/accounts/acct_nope", json={}, headers=ADMIN), 404, "not_found")

    async def test_admin_token_is_required(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account()
        error_of(await client.post("/v1/admin/accounts"), 401, "unauthenticated")
        error_of(await client.post("/v1/admin/accounts", headers=bearer("admin-secreT")), 401, "unauthenticated")
        # A caller's own API key is not the admin token.
        error_of(await client.get("/v1/admin/accounts/x", headers=bearer(key)), 401, "unauthenticated")


class TestCredits:
    async def test_grant_answers_entry_and_account(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=5)
        r = await client.post(
            f"/v1/admin/accounts/{account.id}/credits",
            json={"amount": 20, "reason": "welcome"},
            headers={**ADMIN, "Idempotency-Key": "g1"},
        )
        assert r.status_code == 201, r.text
        entry, view = r.json()["entry"], r.json()["account"]
        assert (entry["kind"], entry["amount"], entry["balanceBefore"], entry["balanceAfter"]) == ("grant", 20, 5, 25)
        assert entry["reason"] == "welcome"
        assert view["balance"] == 25

    async def test_same_key_grants_once_and_other_amount_conflicts(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, _ = await make_account()
        url = f"/v1/admin/accounts/{account.id}/credits"
        headers = {**ADMIN, "Idempotency-Key": "same"}
        first = await client.post(url, json={"amount": 7, "reason": "r"}, headers=headers)
        again = await client.post(url, json={"amount": 7, "reason": "r"}, headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json()["entry"]["id"] == again.json()["entry"]["id"]
        assert await balance(pool, account.id) == (7, 0)
        error_of(
            await client.post(url, json={"amount": 8, "reason": "r"}, headers=headers), 409, "idempotency_conflict"
        )

    async def test_external_id_names_the_account(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        ext = f"c-{uuid.uuid4().hex[:8]}"
        await make_account(external_id=ext)
        r = await client.post(f"/v1/admin/accounts/{ext}/credits", json={"amount": 3, "reason": "r"}, headers=ADMIN)
        assert r.status_code == 201
        assert r.json()["account"]["externalId"] == ext

    async def test_adjustment_never_below_available(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=10)
        assert (await client.post("/v1/jobs", json=job(), headers=bearer(key))).status_code == 202  # holds 4
        url = f"/v1/admin/accounts/{account.id}/credits"
        error = error_of(
            await client.post(url, json={"amount": -7, "reason": "fix"}, headers=ADMIN), 402, "insufficient_credits"
        )
        assert (error["required"], error["available"]) == (7, 6)
        r = await client.post(url, json={"amount": -6, "reason": "fix"}, headers=ADMIN)
        assert r.status_code == 201
        assert r.json()["entry"]["kind"] == "adjustment"
        assert (r.json()["account"]["balance"], r.json()["account"]["available"]) == (4, 0)
        assert await balance(pool, account.id) == (4, 4)

    async def test_bad_amounts_and_missing_reason(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, _ = await make_account()
        url = f"/v1/admin/accounts/{account.id}/credits"
        for amount in (0, "5", 2.0, True, None, 10**20):
            r = await client.post(url, json={"amount": amount, "reason": "r"}, headers=ADMIN)
            assert error_of(r, 422, "validation_error")["details"][0]["field"] == "amount", amount
        r = await client.post(url, json={"amount": 5}, headers=ADMIN)
        assert error_of(r, 422, "validation_error")["details"] == [{"field": "reason", "message": "is required"}]
        error_of(
            await client.post("/v1/admin/accounts/acct_nope/credits", json={"amount": 1, "reason": "r"}, headers=ADMIN),
            404,
            "not_found",
        )


class TestKeys:
    async def test_new_key_works_and_revoked_key_is_forbidden(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        account, old_key = await make_account()
        r = await client.post(f"/v1/admin/accounts/{account.id}/keys", headers=ADMIN)
        assert r.status_code == 201, r.text
        assert set(r.json()) == {"keyId", "apiKey"}
        new_key = r.json()["apiKey"]
        assert (await client.get("/v1/account", headers=bearer(new_key))).json()["accountId"] == account.id
        assert (await client.delete(f"/v1/admin/keys/{r.json()['keyId']}", headers=ADMIN)).status_code == 204
        assert (await client.delete(f"/v1/admin/keys/{r.json()['keyId']}", headers=ADMIN)).status_code == 204
        error_of(await client.get("/v1/account", headers=bearer(new_key)), 403, "forbidden")
        assert (await client.get("/v1/account", headers=bearer(old_key))).status_code == 200
        error_of(await client.delete("/v1/admin/keys/key_nope", headers=ADMIN), 404, "not_found")

    async def test_expiry(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, _ = await make_account()
        url = f"/v1/admin/accounts/{account.id}/keys"
        past = await client.post(url, json={"expiresAt": "2001-01-01T00:00:00Z"}, headers=ADMIN)
        future = await client.post(url, json={"expiresAt": "2999-01-01T00:00:00+00:00"}, headers=ADMIN)
        assert past.status_code == future.status_code == 201
        assert future.json()["expiresAt"].startswith("2999-01-01")
        error_of(await client.get("/v1/account", headers=bearer(past.json()["apiKey"])), 403, "forbidden")
        assert (await client.get("/v1/account", headers=bearer(future.json()["apiKey"]))).status_code == 200
        bad = await client.post(url, json={"expiresAt": "next tuesday"}, headers=ADMIN)
        assert error_of(bad, 422, "validation_error")["details"][0]["field"] == "expiresAt"
        error_of(await client.post("/v1/admin/accounts/acct_nope/keys", headers=ADMIN), 404, "not_found")


class TestOwnAccount:
    async def test_view_counts_todays_jobs(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100)
        assert (await client.post("/v1/jobs", json=job(), headers=bearer(key))).status_code == 202
        view = (await client.get("/v1/account", headers=bearer(key))).json()
        assert set(view) >= VIEW_FIELDS
        assert (view["balance"], view["held"], view["available"]) == (100, 4, 96)
        assert view["limits"]["dailyJobs"] == {"limit": 10, "used": 1}
        assert view["limits"]["concurrentJobs"] == {"limit": 2, "used": 1}

    async def test_transactions_newest_first_with_cursor(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=10)
        for i in range(4):
            await client.post(
                f"/v1/admin/accounts/{account.id}/credits", json={"amount": i + 1, "reason": f"r{i}"}, headers=ADMIN
            )
        seen: list[dict[str, object]] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/account/transactions", params=params, headers=bearer(key))).json()
            seen += page["items"]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert [e["amount"] for e in seen] == [4, 3, 2, 1, 10]
        assert seen[0]["kind"] == "grant"
        assert {"id", "kind", "amount", "heldDelta", "balanceBefore", "balanceAfter", "heldAfter", "createdAt"} <= set(
            seen[0]
        )
        assert seen[-1]["reason"] == "opening balance"

    async def test_transactions_limit_is_checked(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account()
        for limit in ("0", "101", "x", "-1", "2.5"):
            r = await client.get("/v1/account/transactions", params={"limit": limit}, headers=bearer(key))
            assert error_of(r, 422, "validation_error")["details"][0]["field"] == "limit"
        r = await client.get("/v1/account/transactions", params={"cursor": "!!nope"}, headers=bearer(key))
        error_of(r, 422, "validation_error")
