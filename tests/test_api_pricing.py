"""Prices that follow the input, through the API: ``GET /v1/models`` shows inputs and rules, ``POST /v1/quotes``
answers what a submit would hold (holding nothing), a submit holds exactly that and keeps the breakdown and the
validated input, steering fields in ``input`` are refused with nothing held, and an Idempotency-Key repeat answers
the first task at its first price, even after the price list changed.

With a real worker and the simulator (``slow``): the bundled Veo, Kling and seedream prices are quote = hold =
capture, the provider receives the validated input that was priced, and a price-list change between submit and
settle (the worker restarted with another CREDITQ_PRICING) does not move a task's price."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared.config import BUNDLED_PRICING, Settings
from shared.ledger import audit
from tests.apiserver import bearer, serve
from tests.conftest import MakeAccount, Processes

VEO = "veo3_fast"
KLING = "kling/v2-1-standard"
SEEDREAM = "bytedance/seedream-v4-text-to-image"


def body(model: str, prompt: str = "a lighthouse at dawn", **fields: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": prompt, **fields}}


async def account_state(pool: asyncpg.Pool, account_id: str) -> tuple[int, int]:
    r = await pool.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", account_id)
    assert r is not None
    return int(r["balance"]), int(r["held"])


async def money_rows(pool: asyncpg.Pool, account_id: str) -> tuple[int, int]:
    """(tasks, ledger entries) of the account."""
    n_tasks = await pool.fetchval("SELECT count(*) FROM tasks WHERE account_id = $1", account_id)
    n_entries = await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE account_id = $1", account_id)
    return int(n_tasks), int(n_entries)


async def clean_audit(pool: asyncpg.Pool, account_ids: set[str]) -> None:
    problems = [p for p in await audit.check(pool, 2) if p.accountId in account_ids]
    assert problems == []


def price_list(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    """The bundled price list with text replacements, as a file."""
    text = BUNDLED_PRICING.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


# Another price list: veo3_fast dearer at every resolution and without the watermark input.
DEARER_VEO = (
    ('by_value = { resolution = { "720p" = 80, "1080p" = 120, "4k" = 160 } }',
     'by_value = { resolution = { "720p" = 99, "1080p" = 999, "4k" = 1999 } }'),
    ('seeds = { type = "integer", minimum = 10000, maximum = 99999 }\nwatermark = { type = "string", max_length = 50 }'
     '\n\n[models.pricing]\nbase = 0\nby_value = { resolution = { "720p" = 99',
     'seeds = { type = "integer", minimum = 10000, maximum = 99999 }'
     '\n\n[models.pricing]\nbase = 0\nby_value = { resolution = { "720p" = 99'),
)  # fmt: skip


class TestModels:
    async def test_items_carry_inputs_and_pricing(self, client: httpx.AsyncClient) -> None:
        items = {m["model"]: m for m in (await client.get("/v1/models")).json()["items"]}
        veo = items[VEO]
        assert veo["cost"] == 80  # the default input's price, as before
        assert veo["inputs"]["resolution"] == {
            "type": "string",
            "required": False,
            "default": "720p",
            "enum": ["720p", "1080p", "4k"],
        }
        assert veo["inputs"]["prompt"] == {"type": "string", "required": True, "minLength": 1, "maxLength": 5000}
        assert veo["inputs"]["image_urls"]["items"]["format"] == "url"
        assert veo["pricing"] == {
            "base": 0,
            "rules": [{"field": "resolution", "byValue": {"720p": 80, "1080p": 120, "4k": 160}}],
        }
        assert items[KLING]["pricing"]["rules"] == [{"field": "duration", "byValue": {"5": 60, "10": 120}}]
        assert items[SEEDREAM]["pricing"]["rules"] == [{"field": "max_images", "perUnit": 6}]
        assert items["google/nano-banana"]["pricing"] == {"base": 4, "rules": []}
        assert items["suno/v4-5"]["inputs"]["custom_mode"] == {"type": "boolean", "required": False, "default": False}


class TestQuotes:
    @pytest.mark.parametrize(
        ("model", "fields", "cost", "breakdown"),
        [
            (VEO, {}, 80, [{"field": "resolution", "value": "720p", "credits": 80}]),
            (VEO, {"resolution": "4k"}, 160, [{"field": "resolution", "value": "4k", "credits": 160}]),
            ("veo3", {"resolution": "1080p"}, 375, [{"field": "resolution", "value": "1080p", "credits": 375}]),
            (KLING, {"duration": "10"}, 120, [{"field": "duration", "value": "10", "credits": 120}]),
            (SEEDREAM, {"max_images": 3}, 18, [{"field": "max_images", "value": 3, "credits": 18}]),
            ("google/nano-banana", {"image_size": "16:9"}, 4, [{"credits": 4}]),
        ],
    )
    async def test_quote_answers_cost_and_breakdown_and_holds_nothing(
        self,
        client: httpx.AsyncClient,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
        model: str,
        fields: dict[str, Any],
        cost: int,
        breakdown: list[dict[str, Any]],
    ) -> None:
        account, key = await make_account(credits=1000)
        r = await client.post("/v1/quotes", json=body(model, **fields), headers=bearer(key))
        assert r.status_code == 200, r.text
        assert r.json() == {"model": model, "cost": cost, "breakdown": breakdown}
        assert await account_state(pool, account.id) == (1000, 0)
        assert await money_rows(pool, account.id) == (0, 1)  # the grant only

    async def test_quote_needs_a_key(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/quotes", json=body(VEO))
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthenticated"

    async def test_quote_is_not_limited_by_credits(self, client: httpx.AsyncClient, make_account: MakeAccount) -> None:
        _, key = await make_account(credits=0)
        r = await client.post("/v1/quotes", json=body("veo3", resolution="4k"), headers=bearer(key))
        assert r.status_code == 200
        assert r.json()["cost"] == 500

    @pytest.mark.parametrize(
        ("payload", "fields"),
        [
            (body(VEO, resolution="8k"), {"input.resolution"}),
            (body(VEO, resolution="4k", colour="red"), {"input.colour"}),
            (body(SEEDREAM, max_images=True), {"input.max_images"}),
            (body(SEEDREAM, max_images=2.0), {"input.max_images"}),
            (body(SEEDREAM, max_images=7), {"input.max_images"}),
            (body(KLING, duration=10), {"input.duration"}),
            (body(KLING, cfg_scale=1.5, negative_prompt="x" * 501), {"input.cfg_scale", "input.negative_prompt"}),
            ({"model": VEO, "input": {"resolution": "4k"}}, {"input.prompt"}),
            ({"model": "nope", "input": {"prompt": "p"}}, {"model"}),
            ({"model": VEO}, {"input"}),
            ({"model": VEO, "input": []}, {"input"}),
        ],
    )
    async def test_quote_validates_as_a_submit(
        self, client: httpx.AsyncClient, make_account: MakeAccount, payload: dict[str, Any], fields: set[str]
    ) -> None:
        _, key = await make_account(credits=1000)
        for path in ("/v1/quotes", "/v1/jobs"):
            r = await client.post(path, json=payload, headers=bearer(key))
            assert r.status_code == 422, (path, r.text)
            error = r.json()["error"]
            assert error["code"] == "validation_error"
            assert {d["field"] for d in error["details"]} == fields

    async def test_quote_of_a_non_object_body_is_400(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, key = await make_account()
        r = await client.post("/v1/quotes", content=b"[1]", headers=bearer(key))
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_json"


class TestSubmit:
    async def test_submit_holds_the_quote_and_keeps_breakdown_and_validated_input(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=1000, tier="pro_plus")
        payload = body(VEO, resolution="1080p", image_urls=["https://img.example/a.png"])
        quote = (await client.post("/v1/quotes", json=payload, headers=bearer(key))).json()
        r = await client.post("/v1/jobs", json=payload, headers=bearer(key))
        assert r.status_code == 202, r.text
        view = r.json()
        assert view["cost"] == quote["cost"] == 120
        assert view["breakdown"] == quote["breakdown"]
        assert await account_state(pool, account.id) == (1000, 120)
        hold = await pool.fetchval(
            "SELECT held_delta FROM ledger_entries WHERE task_id = $1 AND kind = 'hold'", view["taskId"]
        )
        assert hold == 120
        row = await pool.fetchrow("SELECT input, price_breakdown FROM tasks WHERE id = $1", view["taskId"])
        assert row is not None
        # The validated input, defaults applied: what the worker will send.
        assert row["input"] == {
            "prompt": "a lighthouse at dawn",
            "aspect_ratio": "16:9",
            "resolution": "1080p",
            "image_urls": ["https://img.example/a.png"],
        }
        assert row["price_breakdown"] == [{"field": "resolution", "value": "1080p", "credits": 120}]
        got = (await client.get(f"/v1/jobs/{view['taskId']}", headers=bearer(key))).json()
        assert got["cost"] == 120
        assert got["breakdown"] == quote["breakdown"]

    async def test_every_priced_value_of_the_bundled_list_holds_its_quote(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100_000, tier="pro_plus")
        models = (await client.get("/v1/models")).json()["items"]
        held = 0
        for m in models:
            cases: list[dict[str, Any]] = [{}]
            for rule in m["pricing"]["rules"]:
                spec = m["inputs"][rule["field"]]
                values = spec["enum"] if "byValue" in rule else range(spec["minimum"], spec["maximum"] + 1)
                cases += [{rule["field"]: v} for v in values]
            for fields in cases:
                payload = body(m["model"], **fields)
                quote = (await client.post("/v1/quotes", json=payload, headers=bearer(key))).json()
                r = await client.post("/v1/jobs", json=payload, headers=bearer(key))
                assert r.status_code == 202, r.text
                assert (r.json()["cost"], r.json()["breakdown"]) == (quote["cost"], quote["breakdown"])
                assert sum(line["credits"] for line in quote["breakdown"]) == quote["cost"]
                hold = await pool.fetchval(
                    "SELECT held_delta FROM ledger_entries WHERE task_id = $1 AND kind = 'hold'", r.json()["taskId"]
                )
                assert hold == quote["cost"]
                held += quote["cost"]
        assert await account_state(pool, account.id) == (100_000, held)

    @pytest.mark.parametrize("field", ["callBackUrl", "callbackUrl", "model", "input"])
    async def test_steering_fields_in_input_are_refused_and_nothing_is_held(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount, field: str
    ) -> None:
        account, key = await make_account(credits=1000, tier="pro_plus")
        for model in (VEO, KLING, "suno/v4-5"):
            value = "veo3" if field == "model" else "http://127.0.0.1:1/steal"
            payload = {"model": model, "input": {"prompt": "p", field: value}}
            r = await client.post("/v1/jobs", json=payload, headers={**bearer(key), "Idempotency-Key": field + model})
            assert r.status_code == 422, r.text
            details = r.json()["error"]["details"]
            assert details == [
                {"field": f"input.{field}", "message": "steers the provider request and is never taken from input"}
            ]
        assert await account_state(pool, account.id) == (1000, 0)
        assert await money_rows(pool, account.id) == (0, 1)

    async def test_insufficient_credits_names_the_input_price(
        self, client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
    ) -> None:
        account, key = await make_account(credits=100, tier="pro_plus")
        r = await client.post("/v1/jobs", json=body(VEO, resolution="4k"), headers=bearer(key))
        assert r.status_code == 402
        assert (r.json()["error"]["required"], r.json()["error"]["available"]) == (160, 100)
        assert await account_state(pool, account.id) == (100, 0)
        r = await client.post("/v1/jobs", json=body(VEO), headers=bearer(key))
        assert r.status_code == 202  # 720p fits
        assert await account_state(pool, account.id) == (100, 80)

    async def test_idempotency_key_is_bound_to_the_body_as_sent(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, key = await make_account(credits=1000, tier="pro_plus")
        headers = {**bearer(key), "Idempotency-Key": "sent-body"}
        first = await client.post("/v1/jobs", json=body(VEO), headers=headers)
        again = await client.post("/v1/jobs", json=body(VEO), headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json()["taskId"] == first.json()["taskId"]
        # Spelling out the default is another body (the key is bound to what was sent, not to what it means).
        spelled = await client.post("/v1/jobs", json=body(VEO, resolution="720p"), headers=headers)
        assert spelled.status_code == 409
        assert spelled.json()["error"]["code"] == "idempotency_conflict"

    async def test_a_repeat_after_a_price_change_answers_the_first_task_at_its_first_price(
        self,
        api_settings: Settings,
        pool: asyncpg.Pool,
        make_account: MakeAccount,
        tmp_path: Path,
        client: httpx.AsyncClient,
    ) -> None:
        account, key = await make_account(credits=1000, tier="pro_plus")
        payload = body(VEO, resolution="1080p", watermark="cq")
        headers = {**bearer(key), "Idempotency-Key": "before-the-change"}
        first = await client.post("/v1/jobs", json=payload, headers=headers)
        assert first.status_code == 202
        assert first.json()["cost"] == 120
        dearer = dataclasses.replace(api_settings, pricing_path=price_list(tmp_path, "dearer.toml", *DEARER_VEO))
        async with serve(dearer) as changed:
            # Under the new list this body is not even valid (watermark was dropped), and 1080p costs 999.
            quote = await changed.client.post("/v1/quotes", json=body(VEO, resolution="1080p"), headers=bearer(key))
            assert quote.json()["cost"] == 999
            refused = await changed.client.post("/v1/quotes", json=payload, headers=bearer(key))
            assert refused.status_code == 422
            again = await changed.client.post("/v1/jobs", json=payload, headers=headers)
            assert again.status_code == 202, again.text
            assert again.json()["taskId"] == first.json()["taskId"]
            assert again.json()["cost"] == 120
            # Valid under both lists: still the first task and its first price.
            headers2 = {**bearer(key), "Idempotency-Key": "valid-under-both"}
            payload2 = body(VEO, resolution="4k")
            first2 = await client.post("/v1/jobs", json=payload2, headers=headers2)
            again2 = await changed.client.post("/v1/jobs", json=payload2, headers=headers2)
            assert (first2.json()["cost"], again2.json()["cost"]) == (160, 160)
            assert again2.json()["taskId"] == first2.json()["taskId"]
            # Another body under a used key is still refused as invalid (422) before anything else.
            other = await changed.client.post("/v1/jobs", json=body(VEO, watermark="x"), headers=headers)
            assert other.status_code == 422
        assert await account_state(pool, account.id) == (1000, 120 + 160)


# --- With a real worker and the simulator ---------------------------------------------------------------------


async def wait_terminal(client: httpx.AsyncClient, key: str, task_ids: list[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        views = [(await client.get(f"/v1/jobs/{t}", headers=bearer(key))).json() for t in task_ids]
        if all(v["status"] in ("succeeded", "failed", "canceled") for v in views):
            return views
        if time.monotonic() > deadline:
            raise AssertionError(f"not terminal after {timeout}s: {[(v['taskId'], v['status']) for v in views]}")
        await asyncio.sleep(0.3)


async def task_money(pool: asyncpg.Pool, task_id: str) -> dict[str, int]:
    """Per entry kind of the task: Σ heldDelta for holds, minus Σ amount for captures."""
    rows = await pool.fetch("SELECT kind, amount, held_delta FROM ledger_entries WHERE task_id = $1", task_id)
    out: dict[str, int] = {}
    for r in rows:
        out[r["kind"]] = out.get(r["kind"], 0) + (int(r["held_delta"]) if r["kind"] == "hold" else -int(r["amount"]))
    return out


def sent_to_provider(sim_url: str, family: str, provider_task_id: str) -> dict[str, Any]:
    """The create request the simulator received for the task (its record echoes it as ``param``)."""
    path = {"veo": "/api/v1/veo/record-info", "suno": "/api/v1/generate/record-info"}.get(
        family, "/api/v1/jobs/recordInfo"
    )
    for _ in range(50):  # the simulator's query limit (10/s per key) is shared with the worker
        answer = httpx.get(sim_url + path, params={"taskId": provider_task_id}, headers=bearer("sim-key")).json()
        if answer["code"] == 200:
            break
        time.sleep(0.2)
    data = answer["data"]
    raw = data.get("paramJson", data.get("param"))
    sent = dict(json.loads(raw) if isinstance(raw, str) else raw)
    if isinstance(sent.get("input"), str):  # some models echo their input as a JSON string, as the provider does
        sent["input"] = json.loads(sent["input"])
    return sent


@pytest.mark.slow
async def test_bundled_prices_quote_hold_capture(
    procs: Processes, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    # --strict: the simulator refuses any field a model does not take, as the provider does.
    sim = procs.sim("--time-scale", "0.2", "--strict")
    api = procs.api()
    procs.worker(env={"KIE_TIMEOUT": "3"})
    account, key = await make_account(credits=5000, tier="pro_plus")
    fast = "[sim:seconds=2]"
    cases = [
        (body(VEO, f"veo 720p {fast}"), 80),
        (body(VEO, f"veo 1080p {fast}", resolution="1080p"), 120),
        (body(VEO, f"veo 4k {fast}", resolution="4k", aspect_ratio="9:16"), 160),
        (body("veo3", f"veo3 4k {fast}", resolution="4k"), 500),
        (body(KLING, f"kling 5 {fast}"), 60),
        (body(KLING, f"kling 10 {fast}", duration="10", cfg_scale=1), 120),
        (body(SEEDREAM, f"one image {fast}"), 6),
        (body(SEEDREAM, f"four images {fast}", max_images=4, seed=7), 24),
        (body(SEEDREAM, f"six images {fast}", max_images=6, image_resolution="4K"), 36),
        (body("google/nano-banana", f"banana {fast}", image_size="21:9"), 4),
        (body("suno/v4-5", f"a song {fast}", custom_mode=True, style="jazz", title="Dawn"), 12),
    ]
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        ids = []
        for payload, cost in cases:
            quote = await client.post("/v1/quotes", json=payload, headers=bearer(key))
            assert quote.json()["cost"] == cost, quote.text
            r = await client.post("/v1/jobs", json=payload, headers=bearer(key))
            assert r.status_code == 202, r.text
            assert r.json()["cost"] == cost
            ids.append(r.json()["taskId"])
        total = sum(c for _, c in cases)
        assert await account_state(pool, account.id) == (5000, total)
        views = await wait_terminal(client, key, ids, 60)
    for view, (payload, cost) in zip(views, cases, strict=True):
        assert (view["status"], view["cost"], view["charged"]) == ("succeeded", cost, cost), view
        assert await task_money(pool, view["taskId"]) == {"hold": cost, "capture": cost}
        row = await pool.fetchrow("SELECT family, input, provider_task_id FROM tasks WHERE id = $1", view["taskId"])
        assert row is not None
        # What was sent is what was priced: the stored validated input, defaults included.
        sent = sent_to_provider(sim.url, row["family"], row["provider_task_id"])
        for name, value in payload["input"].items():
            assert row["input"][name] == value
        stored = row["input"]
        if row["family"] == "jobs":
            assert sent["input"] == stored
        elif row["family"] == "veo":
            assert sent["prompt"] == stored["prompt"]
            assert (sent["resolution"], sent["aspect_ratio"]) == (stored["resolution"], stored["aspect_ratio"])
        else:
            assert sent["prompt"] == stored["prompt"]
            assert (sent["customMode"], sent["instrumental"]) == (stored["custom_mode"], stored["instrumental"])
            assert (sent["style"], sent["title"]) == (stored["style"], stored["title"])
    assert await account_state(pool, account.id) == (5000 - total, 0)
    await clean_audit(pool, {account.id})


@pytest.mark.slow
async def test_a_price_change_between_submit_and_settle_does_not_move_the_price(
    procs: Processes, pool: asyncpg.Pool, make_account: MakeAccount, tmp_path: Path
) -> None:
    procs.sim("--time-scale", "0.2", "--strict")
    api = procs.api()
    worker = procs.worker(env={"KIE_TIMEOUT": "3"})
    account, key = await make_account(credits=1000, tier="pro_plus")
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        queued = body(VEO, "long [sim:seconds=40]", resolution="1080p")
        r = await client.post("/v1/jobs", json=queued, headers=bearer(key))
        task_id = r.json()["taskId"]
        assert r.json()["cost"] == 120
        deadline = time.monotonic() + 20
        while (await client.get(f"/v1/jobs/{task_id}", headers=bearer(key))).json()["status"] != "running":
            assert time.monotonic() < deadline, "the task never reached the provider"
            await asyncio.sleep(0.2)
        # The price list changes while the task runs: another worker (and API) with a dearer Veo.
        worker.kill()
        dearer = price_list(tmp_path, "dearer.toml", *DEARER_VEO)
        procs.worker(env={"KIE_TIMEOUT": "3", "CREDITQ_PRICING": str(dearer)})
        api2 = procs.api(env={"CREDITQ_PRICING": str(dearer)})
        async with httpx.AsyncClient(base_url=api2.url, timeout=10) as client2:
            quote = await client2.post("/v1/quotes", json=body(VEO, resolution="1080p"), headers=bearer(key))
            assert quote.json()["cost"] == 999
            (view,) = await wait_terminal(client2, key, [task_id], 60)
    assert (view["status"], view["cost"], view["charged"]) == ("succeeded", 120, 120)
    assert view["breakdown"] == [{"field": "resolution", "value": "1080p", "credits": 120}]
    assert await task_money(pool, task_id) == {"hold": 120, "capture": 120}
    assert await account_state(pool, account.id) == (880, 0)
    await clean_audit(pool, {account.id})
