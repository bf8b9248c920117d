"""Every row of docs/API.md's error table, in the one shape ``{"error": {"code", "message", ...}}``; unknown
routes and methods; a bug's 500; and Postgres or Redis down → 503, never a 500 or a hang."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.app import create_app
from shared.config import Settings
from tests.apiserver import ADMIN, VIDEO, balance, bearer, error_of, free_port, job, serve
from tests.conftest import MakeAccount


class TestInvalidJson:
    @pytest.mark.parametrize(
        "content",
        [
            b"not json",
            b"[1, 2]",
            b'"text"',
            b"",
            b"{",
            b'{"a": NaN}',
            b"\xff\xfe",
            # A float that overflows: Postgres' jsonb could not store it, so it must be refused here, not a 500.
            b'{"model": "google/nano-banana", "input": {"prompt": "p", "strength": 1e999}}',
        ],
    )
    async def test_not_a_json_object(
        self, client: httpx.AsyncClient, make_account: MakeAccount, content: bytes
    ) -> None:
        _, key = await make_account(credits=100)
        r = await client.post("/v1/jobs", content=content, headers={**bearer(key), "Content-Type": "application/json"})
        error_of(r, 400, "invalid_json")


class TestUnauthenticated:
    @pytest.mark.parametrize("header", [None, "Bearer cq_unknown", "Basic dXNlcjpwdw==", "Bearer", "cq_nobearer"])
    async def test_no_or_unknown_key(self, client: httpx.AsyncClient, header: str | None) -> None:
        headers = {"Authorization": header} if header is not None else {}
        error_of(await client.get("/v1/account", headers=headers), 401, "unauthenticated")
        error_of(await client.post("/v1/jobs", json=job(), headers=headers), 401, "unauthenticated")


async def test_insufficient_credits_names_required_and_available(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    _, key = await make_account(credits=50)
    error = error_of(
        await client.post("/v1/jobs", json=job(model=VIDEO), headers=bearer(key)), 402, "insufficient_credits"
    )
    assert (error["required"], error["available"]) == (60, 50)


class TestForbidden:
    async def test_revoked_key(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=100)
        made = (await client.post(f"/v1/admin/accounts/{account.id}/keys", headers=ADMIN)).json()
        await client.delete(f"/v1/admin/keys/{made['keyId']}", headers=ADMIN)
        error = error_of(await client.post("/v1/jobs", json=job(), headers=bearer(made["apiKey"])), 403, "forbidden")
        assert "revoked" in error["message"]

    async def test_expired_key(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, _ = await make_account(credits=100)
        made = (
            await client.post(
                f"/v1/admin/accounts/{account.id}/keys", json={"expiresAt": "2020-01-01T00:00:00Z"}, headers=ADMIN
            )
        ).json()
        error = error_of(await client.get("/v1/account", headers=bearer(made["apiKey"])), 403, "forbidden")
        assert "expired" in error["message"]

    async def test_suspended_account_reads_but_does_not_write(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100)
        other, _ = await make_account()
        task_id = (await client.post("/v1/jobs", json=job(), headers=bearer(key))).json()["taskId"]
        await client.patch(f"/v1/admin/accounts/{account.id}", json={"status": "suspended"}, headers=ADMIN)
        error_of(await client.post("/v1/jobs", json=job(), headers=bearer(key)), 403, "forbidden")
        error_of(await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key)), 403, "forbidden")
        transfer = await client.post("/v1/transfers", json={"toAccountId": other.id, "amount": 1}, headers=bearer(key))
        error_of(transfer, 403, "forbidden")
        assert (await client.get("/v1/account", headers=bearer(key))).json()["status"] == "suspended"
        assert (await client.get(f"/v1/jobs/{task_id}", headers=bearer(key))).status_code == 200
        assert (await client.get("/v1/jobs", headers=bearer(key))).status_code == 200
        assert (await client.get("/v1/account/transactions", headers=bearer(key))).status_code == 200
        assert await balance(pool, account.id) == (100, 4)


class TestNotFound:
    async def test_another_accounts_task(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100)
        _, other = await make_account(credits=100)
        task_id = (await client.post("/v1/jobs", json=job(), headers=bearer(key))).json()["taskId"]
        error_of(await client.get(f"/v1/jobs/{task_id}", headers=bearer(other)), 404, "not_found")

    async def test_unknown_route_and_method(self, client: httpx.AsyncClient) -> None:
        error_of(await client.get("/v2/nothing"), 404, "not_found")
        r = await client.delete("/v1/models")
        error_of(r, 405, "method_not_allowed")
        assert "GET" in r.headers["allow"]
        error_of(await client.put("/v1/jobs"), 405, "method_not_allowed")


async def test_idempotency_conflict(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=100)
    headers = {**bearer(key), "Idempotency-Key": "conflict"}
    assert (await client.post("/v1/jobs", json=job("one"), headers=headers)).status_code == 202
    error_of(await client.post("/v1/jobs", json=job("two"), headers=headers), 409, "idempotency_conflict")
    too_long = {**bearer(key), "Idempotency-Key": "k" * 300}
    error = error_of(await client.post("/v1/jobs", json=job(), headers=too_long), 422, "validation_error")
    assert error["details"][0]["field"] == "Idempotency-Key"


async def test_not_cancelable(client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=100)
    task_id = (await client.post("/v1/jobs", json=job(), headers=bearer(key))).json()["taskId"]
    await pool.execute("UPDATE tasks SET submit_started_at = now() WHERE id = $1", task_id)  # a worker is creating it
    error_of(await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key)), 409, "not_cancelable")


class TestPayloadTooLarge:
    async def test_declared_length(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100)
        body = job("x" * (65 * 1024))
        error_of(await client.post("/v1/jobs", json=body, headers=bearer(key)), 413, "payload_too_large")

    async def test_chunked_body_is_cut_off(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100)

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"model": "google/nano-banana", "input": {"prompt": "'
            for _ in range(100):
                yield b"x" * 1024
            yield b'"}}'

        r = await client.post("/v1/jobs", content=chunks(), headers=bearer(key))
        assert "content-length" not in r.request.headers
        error_of(r, 413, "payload_too_large")

    async def test_just_under_the_cap_is_fine(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100)
        r = await client.post("/v1/jobs", json=job("x" * 5_000, pad="y" * 58_000), headers=bearer(key))
        assert r.status_code == 202, r.text


async def test_validation_error_lists_details(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=100)
    r = await client.post("/v1/jobs", json={"model": "gpt-nope", "input": {"prompt": ""}}, headers=bearer(key))
    error = error_of(r, 422, "validation_error")
    assert error["details"] == [
        {"field": "model", "message": "unknown model 'gpt-nope': see GET /v1/models"},
        {"field": "input.prompt", "message": "must be a non-empty string"},
    ]


async def test_rate_limited_has_retry_after(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    _, key = await make_account(credits=1000)
    assert (await client.post("/v1/jobs", json=job(model=VIDEO), headers=bearer(key))).status_code == 202
    r = await client.post("/v1/jobs", json=job(model=VIDEO), headers=bearer(key))
    error = error_of(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) == error["retryAfter"]
    assert 170 <= error["retryAfter"] <= 180


class TestUnavailable:
    async def test_postgres_down_is_503_fast(self, api_settings: Settings) -> None:
        down = dataclasses.replace(api_settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/creditq")
        async with serve(down) as local:
            for _ in range(3):
                started = time.monotonic()
                r = await local.client.get("/v1/account", headers=bearer("cq_whatever"))
                assert time.monotonic() - started < 6
                error_of(r, 503, "unavailable")
                assert r.headers["Retry-After"] == "1"
            error_of(await local.client.post("/v1/jobs", json=job(), headers=bearer("cq_x")), 503, "unavailable")
            ready = await local.client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["postgres"] == "down"
            assert ready.json()["checks"]["redis"] == "ok"
            assert (await local.client.get("/healthz")).status_code == 200

    async def test_redis_down_fails_submits_closed(
        self, api_settings: Settings, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100)
        down = dataclasses.replace(api_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
        async with serve(down) as local:
            started = time.monotonic()
            error_of(await local.client.post("/v1/jobs", json=job(), headers=bearer(key)), 503, "unavailable")
            assert time.monotonic() - started < 6
            # Reads that need only Postgres still work; the limits' use is unknown.
            view = await local.client.get("/v1/account", headers=bearer(key))
            assert view.status_code == 200
            assert view.json()["limits"]["dailyJobs"] == {"limit": 10, "used": None}
            ready = await local.client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"postgres": "ok", "redis": "down", "provider": "unknown"}
        assert await balance(pool, account.id) == (100, 0)


async def test_a_bug_is_a_logged_500(api_settings: Settings) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("kaboom")

    app = create_app(api_settings)
    app.router.routes.append(Route("/boom", boom))
    async with serve(api_settings, app) as local:
        with structlog.testing.capture_logs() as logs:
            r = await local.client.get("/boom")
    error_of(r, 500, "internal_error")
    assert "kaboom" not in r.text
    [entry] = [e for e in logs if e["event"] == "request.internal_error"]
    assert (entry["log_level"], entry["path"], entry["exc_info"]) == ("error", "/boom", True)
