"""The API's edge (api/parsing.py): what Postgres cannot store never reaches it, numbers are ASCII, cursors and
dates are validated, duplicates are refused, externalIds and memos follow their rules. A hypothesis property test
sends generated strings with NUL characters and unpaired surrogates through every route of the app and finds no
5xx but 503.

Everything runs against the real API (in-process uvicorn over real HTTP), Postgres and Redis.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import plain_routes
from shared.ledger import accounts, cursors
from shared.ledger.audit import audit
from shared.signature import sign
from tests.apiserver import ADMIN, Api, balance, bearer, error_of, job
from tests.conftest import MakeAccount

NUL = "\x00"
SURROGATE = "\ud800"


def raw_json(value: Any) -> bytes:
    """JSON with ``\\uXXXX`` escapes for everything non-ASCII: how a client sends a lone surrogate."""
    return json.dumps(value, ensure_ascii=True).encode()


def quoted(text: str) -> str:
    """``text`` as one path segment or query value (a lone surrogate as its WTF-8 bytes, as a client would)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


async def post_raw(client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})


# --- strings Postgres cannot store ------------------------------------------------------------------------------


class TestUnstorableStrings:
    @pytest.mark.parametrize("bad", [NUL, SURROGATE, "\udfff", "ok" + NUL + "ok"])
    @pytest.mark.parametrize(
        "body",
        [
            lambda s: job(prompt=s),
            lambda s: {"model": "google/nano-banana", "input": {"prompt": "p", s: "v"}},  # a key
            lambda s: {"model": "google/nano-banana", "input": {"prompt": "p", "nested": [{"deep": s}]}},
            lambda s: job(callbackUrl=f"https://example.com/{s}"),
            lambda s: {"model": s, "input": {"prompt": "p"}},
        ],
    )
    async def test_submit_body(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount, bad: str, body: Any
    ) -> None:
        account, key = await make_account(credits=100)
        error = error_of(await post_raw(client, "/v1/jobs", raw_json(body(bad)), bearer(key)), 422, "validation_error")
        assert error["details"] and all("field" in d for d in error["details"])
        assert await balance(pool, account.id) == (100, 0)

    @pytest.mark.parametrize("bad", [NUL, SURROGATE])
    async def test_other_bodies(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount, bad: str
    ) -> None:
        account, key = await make_account(credits=100)
        other, _ = await make_account()
        for path, body, headers in [
            ("/v1/transfers", {"toAccountId": other.id, "amount": 1, "memo": bad}, bearer(key)),
            ("/v1/transfers", {"toAccountId": bad, "amount": 1}, bearer(key)),
            ("/v1/admin/accounts", {"externalId": bad}, ADMIN),
            (f"/v1/admin/accounts/{account.id}/credits", {"amount": 5, "reason": bad}, ADMIN),
            (f"/v1/admin/accounts/{account.id}/keys", {"expiresAt": bad}, ADMIN),
        ]:
            r = await post_raw(client, path, raw_json(body), headers)
            error_of(r, 422, "validation_error")
        assert await balance(pool, account.id) == (100, 0)

    async def test_signed_payment_event_with_nul(self, client: httpx.AsyncClient) -> None:
        body = raw_json({"id": f"evt_{uuid.uuid4().hex}", "type": "checkout.session.completed", "x": NUL})
        headers = {"Stripe-Signature": sign(body, "whsec_test"), "Content-Type": "application/json"}
        error_of(await client.post("/v1/webhooks/payments", content=body, headers=headers), 422, "validation_error")

    @pytest.mark.parametrize(
        "path",
        [
            "/v1/jobs/%00",
            "/v1/jobs/%00/cancel",
            "/v1/admin/accounts/%00",
            "/v1/admin/accounts/%00/credits",
            "/v1/admin/keys/%00",
            "/v1/admin/payments/events/%00",
            "/v1/jobs/" + "x" * 300,
        ],
    )
    async def test_path_parameters_are_404(
        self, client: httpx.AsyncClient, make_account: MakeAccount, path: str
    ) -> None:
        _, key = await make_account()
        headers = ADMIN if path.startswith("/v1/admin") else bearer(key)
        for method in ("GET", "POST", "PATCH", "DELETE"):
            r = await client.request(method, path, headers=headers)
            assert r.status_code in (404, 405), (method, path, r.status_code, r.text)
            if r.status_code == 404:
                error_of(r, 404, "not_found")

    @pytest.mark.parametrize(
        "path",
        [
            "/v1/webhooks/kie?task=%00&token=x",  # no credentials needed
            "/v1/webhooks/kie?task=task_1&token=%00",
            "/v1/jobs?status=%00",
            "/v1/jobs?cursor=%00",
            "/v1/account/transactions?limit=%00",
            "/admin?account=%00&token=admin-secret",
            "/v1/jobs?" + "cursor=" + "a" * 3000,
        ],
    )
    async def test_query_parameters_are_422(
        self, client: httpx.AsyncClient, make_account: MakeAccount, path: str
    ) -> None:
        _, key = await make_account()
        method = "POST" if path.startswith("/v1/webhooks") else "GET"
        r = await client.request(method, path, headers=bearer(key))
        error = error_of(r, 422, "validation_error")
        assert error["details"][0]["field"] in ("task", "token", "status", "cursor", "limit", "account")


async def test_provider_callback_bodies_are_hints_never_500s(
    api: Api, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    """A callback with the right token whose body is nested too deep, or names a provider id with a NUL, is
    answered 200 (the body is a hint) and notes nothing; a sane one is noted."""
    from arq.connections import ArqRedis

    from shared.ledger import tasks
    from shared.provider import noted_provider_task

    _, key = await make_account(credits=100)
    task_id = (await api.client.post("/v1/jobs", json=job(), headers=bearer(key))).json()["taskId"]
    params = {"task": task_id, "token": (await tasks.get(pool, task_id))["callback_token"]}
    arq = ArqRedis.from_url(api.settings.redis_url)
    try:
        for body in [b"[" * 30_000 + b"]" * 30_000, raw_json({"data": {"taskId": "kie\x00x"}}), b"\xff"]:
            r = await api.client.post("/v1/webhooks/kie", params=params, content=body)
            assert (r.status_code, r.json()) == (200, {"ok": True})
            assert await noted_provider_task(arq, api.settings, task_id) is None
        r = await api.client.post("/v1/webhooks/kie", params=params, json={"data": {"taskId": "kie_123"}})
        assert r.status_code == 200
        assert await noted_provider_task(arq, api.settings, task_id) == "kie_123"
    finally:
        await arq.aclose()


# --- numbers, cursors, dates ------------------------------------------------------------------------------------


class TestNumbersCursorsDates:
    @pytest.mark.parametrize("limit", ["²", "¹²", "①", "٣", "1_0", " 5", "0", "101", "9" * 40, "-1", "+5", "5.0"])
    @pytest.mark.parametrize("path", ["/v1/jobs", "/v1/account/transactions"])
    async def test_limit_is_ascii_and_in_range(
        self, client: httpx.AsyncClient, make_account: MakeAccount, limit: str, path: str
    ) -> None:
        _, key = await make_account()
        error_of(await client.get(path, params={"limit": limit}, headers=bearer(key)), 422, "validation_error")

    async def test_admin_limit(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/admin/payments/events", params={"limit": "²"}, headers=ADMIN)
        error_of(r, 422, "validation_error")

    @pytest.mark.parametrize(
        "inner",
        [
            "²",  # a non-ASCII digit
            "٣٤",
            "99999999999999999999",  # beyond bigint
            "9223372036854775808",
            "-5",
            "9999-12-31T23:59:59-05:00|task_x",  # a date whose UTC is year 10000
            "0001-01-01T00:00:00+05:00|task_x",  # year 0
            "\uff12\uff10\uff13\uff10-01-01T00:00:00|task_x",
            "2030-01-01T00:00:00|",
            "2030-01-01T00:00:00|task\x00x",
            "not a date|task_x",
        ],
    )
    async def test_cursors(self, client: httpx.AsyncClient, make_account: MakeAccount, inner: str) -> None:
        _, key = await make_account()
        cursor = cursors.encode(inner)
        for path, headers in [
            ("/v1/jobs", bearer(key)),
            ("/v1/account/transactions", bearer(key)),
            ("/v1/admin/payments/events", ADMIN),
        ]:
            r = await client.get(path, params={"cursor": cursor}, headers=headers)
            error_of(r, 422, "validation_error")
        for garbage in ["%%%", "Zm9v\u00e9", "a" * 700]:
            r = await client.get("/v1/jobs", params={"cursor": garbage}, headers=bearer(key))
            error_of(r, 422, "validation_error")

    async def test_cursors_still_page(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=100, tier="pro")
        for i in range(3):
            assert (await client.post("/v1/jobs", json=job(f"p{i}"), headers=bearer(key))).status_code == 202
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/jobs", params=params, headers=bearer(key))).json()
            seen += [t["taskId"] for t in page["items"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 3
        entries = (await client.get("/v1/account/transactions", params={"limit": "2"}, headers=bearer(key))).json()
        more = await client.get(
            "/v1/account/transactions", params={"cursor": entries["nextCursor"]}, headers=bearer(key)
        )
        assert more.status_code == 200 and len(more.json()["items"]) == 2  # 4 entries: grant + 3 holds

    @pytest.mark.parametrize(
        "when",
        [
            "9999-12-31T23:00:00-05:00",
            "0001-01-01T00:30:00+01:00",
            "\uff12\uff10\uff13\uff10-01-01T00:00:00Z",
            "2030-13-01",
        ],
    )
    async def test_expires_at_out_of_range(
        self, client: httpx.AsyncClient, make_account: MakeAccount, when: str
    ) -> None:
        account, _ = await make_account()
        r = await client.post(f"/v1/admin/accounts/{account.id}/keys", json={"expiresAt": when}, headers=ADMIN)
        error_of(r, 422, "validation_error")

    async def test_expires_at_far_future_works(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, _ = await make_account()
        made = await client.post(
            f"/v1/admin/accounts/{account.id}/keys", json={"expiresAt": "9999-12-31T23:00:00+05:00"}, headers=ADMIN
        )
        assert made.status_code == 201, made.text
        assert made.json()["expiresAt"] == "9999-12-31T18:00:00+00:00"
        assert (await client.get("/v1/account", headers=bearer(made.json()["apiKey"]))).status_code == 200

    async def test_balance_overflow_is_422(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        big = 2**53 - 1
        account, _ = await make_account()
        # 1,024 grants of 2^53-1 in one statement (each through cq_credit, as the API's would be): the balance
        # is then 2^63 - 1024, and the next grant cannot fit a bigint.
        await pool.execute(
            "SELECT cq_credit($1, 'grant', $2, 'fill', NULL, NULL) FROM generate_series(1, 1024)", account.id, big
        )
        before = await balance(pool, account.id)
        assert before == (1024 * big, 0)
        r = await client.post(
            f"/v1/admin/accounts/{account.id}/credits", json={"amount": big, "reason": "one more"}, headers=ADMIN
        )
        error = error_of(r, 422, "validation_error")
        assert error["details"][0]["field"] == "amount"
        assert await balance(pool, account.id) == before
        other, key = await make_account(credits=2000)  # 2^63 - 1024 + 2000 cannot fit a bigint either
        r = await client.post("/v1/transfers", json={"toAccountId": account.id, "amount": 2000}, headers=bearer(key))
        error_of(r, 422, "validation_error")
        assert await balance(pool, other.id) == (2000, 0)
        report = await audit(pool, 2)
        assert not [p for p in report.problems if p.accountId in (account.id, other.id)], report.problems


# --- duplicates ------------------------------------------------------------------------------------------------


class TestDuplicates:
    @pytest.mark.parametrize(
        "body",
        [
            b'{"model": "google/nano-banana", "model": "kling/v2-1-standard", "input": {"prompt": "p"}}',
            b'{"model": "google/nano-banana", "input": {"prompt": "a", "prompt": "b"}}',
        ],
    )
    async def test_duplicate_json_keys_are_400(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount, body: bytes
    ) -> None:
        account, key = await make_account(credits=100)
        error = error_of(await post_raw(client, "/v1/jobs", body, bearer(key)), 400, "invalid_json")
        assert "duplicate key" in error["message"]
        assert await balance(pool, account.id) == (100, 0)

    async def test_two_idempotency_keys_are_422(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100)
        headers = [("Authorization", f"Bearer {key}"), ("Idempotency-Key", "one"), ("Idempotency-Key", "two")]
        r = await client.post("/v1/jobs", json=job(), headers=headers)
        error = error_of(r, 422, "validation_error")
        assert error["details"] == [{"field": "Idempotency-Key", "message": "must be sent once"}]
        assert await balance(pool, account.id) == (100, 0)

    @pytest.mark.parametrize("bad", ["", "x" * 256, "caf\u00e9", "tab\there"])
    async def test_idempotency_key_charset(
        self, client: httpx.AsyncClient, make_account: MakeAccount, bad: str
    ) -> None:
        _, key = await make_account(credits=100)
        headers = [(b"Authorization", f"Bearer {key}".encode()), (b"Idempotency-Key", bad.encode("latin-1"))]
        error_of(await client.post("/v1/jobs", json=job(), headers=headers), 422, "validation_error")


# --- externalIds and memos ---------------------------------------------------------------------------------------


class TestExternalIds:
    async def test_nfc_and_nfd_are_one_id(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        tag = uuid.uuid4().hex[:6]
        nfc, nfd = unicodedata.normalize("NFC", f"café-{tag}"), unicodedata.normalize("NFD", f"café-{tag}")
        assert nfc != nfd
        made = await client.post("/v1/admin/accounts", json={"externalId": nfd}, headers=ADMIN)
        assert made.status_code == 201, made.text
        assert made.json()["externalId"] == nfc
        error_of(await client.post("/v1/admin/accounts", json={"externalId": nfc}, headers=ADMIN), 409, "conflict")
        for ref in (nfc, nfd):
            found = await client.get(f"/v1/admin/accounts/{quote(ref)}", headers=ADMIN)
            assert found.status_code == 200 and found.json()["accountId"] == made.json()["accountId"]
        _, key = await make_account(credits=5)
        sent = await client.post("/v1/transfers", json={"toAccountId": nfd, "amount": 2}, headers=bearer(key))
        assert sent.status_code == 201, sent.text
        assert sent.json()["toAccountId"] == made.json()["accountId"]

    @pytest.mark.parametrize(
        "bad",
        ["acct_" + "0" * 32, "ACCT_anything", "a/b", "a b", "..", ".", "a?b", "a#b", "a%2Fb", "x" * 201, "", "tab\t"],
    )
    async def test_refused(self, client: httpx.AsyncClient, bad: str) -> None:
        r = await client.post("/v1/admin/accounts", json={"externalId": bad}, headers=ADMIN)
        error = error_of(r, 422, "validation_error")
        assert error["details"][0]["field"] == "externalId"

    async def test_cannot_shadow_an_account_id(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        victim, _ = await make_account()
        r = await client.post("/v1/admin/accounts", json={"externalId": victim.id}, headers=ADMIN)
        error_of(r, 422, "validation_error")

    @pytest.mark.parametrize("ok", ["user-1", "a.b_c:d@e+f~g", "Ünïcödé", "用户42", "x" * 200])
    async def test_allowed_ids_work_in_paths(self, client: httpx.AsyncClient, ok: str) -> None:
        ext = f"{ok[:190]}{uuid.uuid4().hex[:6]}" if len(ok) < 200 else ok[:194] + uuid.uuid4().hex[:6]
        made = await client.post("/v1/admin/accounts", json={"externalId": ext, "credits": 3}, headers=ADMIN)
        assert made.status_code == 201, made.text
        found = await client.get(f"/v1/admin/accounts/{quote(ext, safe='')}", headers=ADMIN)
        assert found.status_code == 200, found.text
        assert found.json()["accountId"] == made.json()["accountId"]
        granted = await client.post(
            f"/v1/admin/accounts/{quote(ext, safe='')}/credits", json={"amount": 1, "reason": "hi"}, headers=ADMIN
        )
        assert granted.status_code == 201 and granted.json()["account"]["balance"] == 4


class TestMemos:
    @pytest.mark.parametrize(
        "bad", ["line\nbreak", "tab\there", "bell\x07", "\u202eevil", "\u2066iso\u2069", "x" * 501]
    )
    async def test_memo_must_be_plain_text(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount, bad: str
    ) -> None:
        sender, key = await make_account(credits=10)
        to, _ = await make_account()
        r = await client.post(
            "/v1/transfers", json={"toAccountId": to.id, "amount": 1, "memo": bad}, headers=bearer(key)
        )
        error = error_of(r, 422, "validation_error")
        assert error["details"][0]["field"] == "memo"
        assert await balance(pool, sender.id) == (10, 0)

    async def test_plain_memo_is_kept(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=10)
        to, to_key = await make_account()
        memo = "Thanks 🎉 — café, 50% off"
        r = await client.post(
            "/v1/transfers", json={"toAccountId": to.id, "amount": 1, "memo": memo}, headers=bearer(key)
        )
        assert r.status_code == 201, r.text
        items = (await client.get("/v1/account/transactions", headers=bearer(to_key))).json()["items"]
        assert items[0]["reason"] == memo

    async def test_reason_must_be_plain_text(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        account, _ = await make_account()
        r = await client.post(
            f"/v1/admin/accounts/{account.id}/credits", json={"amount": 1, "reason": "a\nb"}, headers=ADMIN
        )
        error_of(r, 422, "validation_error")


# --- the property test: every route, generated hostile strings --------------------------------------------------

# Strings made of the characters that broke things: NUL, unpaired surrogates, non-ASCII digits, decomposed
# accents, path and query separators, bidi controls, an accountId's prefix; plus anything else.
_PIECES = ["\x00", "\ud800", "\udfff", "\udbff", "²", "①", "٣", "e\u0301", "/", "%", "?", "&", "#", "\u202e", "acct_"]
hostile = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.characters(max_codepoint=0x10FFFF, exclude_categories=())),
    min_size=0,
    max_size=10,
).map("".join)

# Every query parameter any route reads.
_QUERY = ["limit", "cursor", "status", "task", "token", "fix", "account"]
# Every body field any route reads, with a value that passes its own check (so the hostile one is what fails).
_FIELDS: dict[str, Any] = {
    "model": "google/nano-banana",
    "input": {"prompt": "a lighthouse"},
    "toAccountId": "nobody",
    "amount": 1,
    "memo": "m",
    "reason": "r",
    "externalId": None,
    "tier": "free",
    "status": "active",
    "credits": 0,
    "expiresAt": "2031-01-01T00:00:00Z",
    "id": "evt_x",
    "type": "checkout.session.completed",
}


def _routes(api: Api) -> list[tuple[str, str]]:
    out = []
    for path, route in plain_routes(api.app.routes):
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            out.append((method, path))
    return out


@st.composite
def hostile_requests(draw: st.DrawFn, routes: list[tuple[str, str]]) -> tuple[str, str, dict[str, str], Any]:
    method, template = draw(st.sampled_from(routes))
    path = template
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + quoted(draw(hostile)) + path[end + 1 :]
    query = {name: draw(hostile) for name in draw(st.lists(st.sampled_from(_QUERY), max_size=3, unique=True))}
    body: dict[str, Any] = {k: v for k, v in _FIELDS.items() if v is not None}
    where = draw(st.sampled_from([*_FIELDS, "input.prompt", "input.<key>", "<key>"]))
    text = draw(hostile)
    if where == "input.prompt":
        body["input"] = {"prompt": text}
    elif where == "input.<key>":
        body["input"] = {"prompt": "p", text: "v"}
    elif where == "<key>":
        body[text] = 1
    else:
        body[where] = text
    return (
        method,
        path + ("?" + "&".join(f"{quoted(k)}={quoted(v)}" for k, v in query.items()) if query else ""),
        {},
        body,
    )


@pytest.fixture(scope="module")
async def property_key(pool: asyncpg.Pool) -> str:
    _, _, key = await accounts.create_account(pool, "pro_plus", 10**9)
    return key


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
async def test_no_5xx_but_503_on_any_route(data: st.DataObject, api: Api, property_key: str) -> None:
    routes = _routes(api)
    assert len(routes) >= 15, routes
    method, url, _, body = data.draw(hostile_requests(routes))
    path = url.split("?", 1)[0]
    headers = {"Content-Type": "application/json"}
    if path.startswith(("/v1/admin", "/admin")):
        headers.update(ADMIN)
    elif not path.startswith("/v1/webhooks"):
        headers.update(bearer(property_key))
    content = raw_json(body)
    if path == "/v1/webhooks/payments":
        headers["Stripe-Signature"] = sign(content, "whsec_test")
    r = await api.client.request(method, url, content=content if method in ("POST", "PATCH") else None, headers=headers)
    assert r.status_code < 500 or r.status_code == 503, (method, url, body, r.status_code, r.text)
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        assert set(r.json()) == {"error"}, r.text
