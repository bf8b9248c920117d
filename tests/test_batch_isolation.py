"""Group commit keeps each request's outcome its own: a submit the database refuses fails alone (422) and every
other submit batched with it commits.

The poison of the issue (a NUL prompt among 31 concurrent submits of one account) is refused at the API's edge
now, so it never reaches the batch: the HTTP test shows that. To prove the batch itself isolates, the batcher
is driven directly (the test seam: requests that skip the edge) with poisons that fail inside the statement, on
the real Postgres, under real concurrency, and the statements it ran are counted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import pytest

from shared import pricing
from shared.config import Settings
from shared.errors import InvalidInput
from shared.ledger import accounts, tasks
from shared.ledger.audit import audit
from tests.apiserver import balance, bearer, error_of, job
from tests.conftest import MakeAccount

CONCURRENT = 31
POISON_AT = 15


class CountingPool:
    """The real pool, with a record of the batch size of each submit statement it runs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.batches: list[int] = []

    async def fetch(self, query: str, *args: Any) -> Any:
        if "cq_submit_multi" in query:  # one statement for every account's requests: count them all
            self.batches.append(sum(len(b["tasks"]) for b in args[0]))
        return await self.pool.fetch(query, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


def _requests(model: pricing.Model, poison: dict[str, Any] | None, task_id: str | None) -> list[tasks.SubmitRequest]:
    out = []
    for i in range(CONCURRENT):
        if i == POISON_AT:
            out.append(
                tasks.SubmitRequest(
                    model, poison or {"prompt": f"p{i}"}, None, None, None, task_id or tasks.new_task_id()
                )
            )
        else:
            out.append(tasks.SubmitRequest(model, {"prompt": f"p{i}"}, None, f"k{i}", f"h{i}"))
    return out


@pytest.mark.parametrize(
    "poison",
    [
        {"prompt": "nul \x00 in the prompt"},  # Postgres refuses it in jsonb (SQLSTATE 22P05)
        {"prompt": "ok", "a\x00key": 1},
        {"prompt": "lone \ud800 surrogate"},  # asyncpg cannot encode it
        "duplicate task id",  # a unique violation inside the statement
    ],
)
async def test_a_poison_fails_alone_and_the_batch_commits(
    pool: asyncpg.Pool, settings: Settings, poison: dict[str, Any] | str
) -> None:
    model = pricing.load(settings.pricing_path).model("google/nano-banana")
    assert model is not None
    account, _, _ = await accounts.create_account(pool, "pro_plus", 1000)
    taken = None
    if isinstance(poison, str):
        taken = (await tasks.submit(pool, account.id, model, {"prompt": "first"}, None, None, None)).task["id"]
    reqs = _requests(model, poison if isinstance(poison, dict) else None, taken)
    batcher = tasks.SubmitBatcher()
    counting = CountingPool(pool)

    results = await asyncio.gather(*(batcher.submit(counting, account.id, r) for r in reqs), return_exceptions=True)

    poisoned = results[POISON_AT]
    if isinstance(poison, dict):
        assert isinstance(poisoned, InvalidInput), poisoned
    else:
        assert isinstance(poisoned, asyncpg.UniqueViolationError), poisoned
    good = [r for i, r in enumerate(results) if i != POISON_AT]
    assert all(isinstance(r, tasks.Submitted) and r.inserted for r in good), good
    # All 31 were in the first statement (they arrived together); that one failed and rolled back whole; the
    # halves were tried again down to the poison: a few statements, not 31.
    assert counting.batches[0] == CONCURRENT
    assert len(counting.batches) <= 12, counting.batches
    committed = [r.task["id"] for r in good if isinstance(r, tasks.Submitted)]
    rows = await pool.fetch("SELECT id, xmin::text AS tx FROM tasks WHERE id = ANY($1)", committed)
    assert len(rows) == 30
    assert len({r["tx"] for r in rows}) < 10  # committed in a few transactions: group commit survived
    earlier = 4 if taken else 0
    assert await balance_of(pool, account.id) == (1000, 30 * model.cost + earlier)
    # Admission stayed in arrival order: the entries' ids follow the requests' order.
    order = await pool.fetch(
        "SELECT t.input->>'prompt' AS prompt FROM ledger_entries e JOIN tasks t ON t.id = e.task_id "
        "WHERE e.account_id = $1 AND e.kind = 'hold' AND t.id = ANY($2) ORDER BY e.id",
        account.id,
        committed,
    )
    assert [r["prompt"] for r in order] == [f"p{i}" for i in range(CONCURRENT) if i != POISON_AT]
    report = await audit(pool, 2)
    assert not [p for p in report.problems if p.accountId == account.id], report.problems


async def test_the_whole_batch_shares_an_account_refusal(pool: asyncpg.Pool, settings: Settings) -> None:
    """A cause every request shares (the account is suspended) is everyone's answer, in one statement."""
    model = pricing.load(settings.pricing_path).model("google/nano-banana")
    assert model is not None
    account, _, _ = await accounts.create_account(pool, "pro_plus", 1000)
    await accounts.update_account(pool, account.id, status="suspended")
    batcher = tasks.SubmitBatcher()
    counting = CountingPool(pool)
    reqs = _requests(model, None, None)
    results = await asyncio.gather(*(batcher.submit(counting, account.id, r) for r in reqs), return_exceptions=True)
    assert all(type(r).__name__ == "Forbidden" for r in results), results
    assert counting.batches == [CONCURRENT]


async def balance_of(pool: asyncpg.Pool, account_id: str) -> tuple[int, int]:
    return await balance(pool, account_id)


async def test_http_poison_is_refused_and_the_others_answer_202(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    """The issue's case over HTTP: 31 concurrent submits of one account, one with a NUL prompt → 202 for the 30 and
    422 for the one, whatever batches they share; the money follows."""
    account, key = await make_account(credits=1000, tier="pro_plus")
    bodies = [job(f"fine {i}") for i in range(CONCURRENT)]
    bodies[POISON_AT] = job("nul \x00 prompt")
    answers = await asyncio.gather(
        *(
            client.post(
                "/v1/jobs", content=json.dumps(b).encode(), headers={**bearer(key), "Content-Type": "application/json"}
            )
            for b in bodies
        )
    )
    error_of(answers[POISON_AT], 422, "validation_error")
    assert [a.status_code for i, a in enumerate(answers) if i != POISON_AT] == [202] * 30
    assert await balance(pool, account.id) == (1000, 30 * 4)
