"""Group commit across accounts (tasks.SubmitBatcher → SQL cq_submit_multi): concurrent submits of different
accounts in one process share statements and commits, and each request's outcome stays its own: 402, 403 (a
suspended account), an unknown account, an idempotent repeat and a conflict, a value the database refuses. On the
real Postgres, under real concurrency; commits are counted from the rows' xmin (one transaction, one xmin)."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from shared.errors import Forbidden, IdempotencyConflict, InsufficientCredits, InvalidInput, NotFound
from shared.ledger import accounts, tasks
from shared.pricing import Model
from tests.test_ledger import balance, problems_for

MODEL = Model("bench/model", "image", "jobs", 4, 300, 5)


def _req(prompt: str, key: str | None = None, digest: str | None = None) -> tasks.SubmitRequest:
    return tasks.SubmitRequest(MODEL, {"prompt": prompt}, None, key, digest)


async def test_many_accounts_share_one_commit_each_outcome_its_own(pool: asyncpg.Pool) -> None:
    rich = [(await accounts.create_account(pool, "pro_plus", 100))[0].id for _ in range(8)]
    poor = (await accounts.create_account(pool, "pro_plus", 6))[0].id  # one task of 4, then 402
    suspended = (await accounts.create_account(pool, "pro_plus", 100))[0].id
    await accounts.update_account(pool, suspended, status="suspended")
    keyed = (await accounts.create_account(pool, "pro_plus", 100))[0].id
    batcher = tasks.SubmitBatcher()

    calls: list[tuple[str, tasks.SubmitRequest]] = []
    calls += [(a, _req(f"rich {i}")) for i, a in enumerate(rich)]
    calls += [(poor, _req("poor 1")), (poor, _req("poor 2"))]
    calls += [(suspended, _req("suspended"))]
    calls += [("acct_nobody", _req("nobody"))]
    calls += [(keyed, _req("k", "key-1", "h1")), (keyed, _req("k", "key-1", "h1")), (keyed, _req("k", "key-1", "h2"))]
    calls += [(rich[0], _req("nul \x00 prompt"))]  # the database refuses it: it alone fails
    results = await asyncio.gather(*(batcher.submit(pool, a, r) for a, r in calls), return_exceptions=True)

    assert all(isinstance(r, tasks.Submitted) and r.inserted for r in results[:8]), results[:8]
    assert isinstance(results[8], tasks.Submitted) and results[8].inserted
    assert isinstance(results[9], InsufficientCredits) and results[9].extra["available"] == 2
    assert isinstance(results[10], Forbidden)
    assert isinstance(results[11], NotFound)
    first, repeat, conflict = results[12:15]
    assert isinstance(first, tasks.Submitted) and first.inserted
    assert isinstance(repeat, tasks.Submitted) and not repeat.inserted and repeat.task["id"] == first.task["id"]
    assert isinstance(conflict, IdempotencyConflict)
    assert isinstance(results[15], InvalidInput)

    # The money: each rich account holds exactly one task, the poor one one, the suspended one none.
    for a in rich:
        assert await balance(pool, a) == (100, 4)
    assert await balance(pool, poor) == (6, 4)
    assert await balance(pool, suspended) == (100, 0)
    assert await balance(pool, keyed) == (100, 4)
    ids = [r.task["id"] for r in results if isinstance(r, tasks.Submitted) and r.inserted]
    assert len(ids) == 10
    commits = await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM tasks WHERE id = ANY($1)", ids)
    # 16 requests of 12 accounts (the poison split off included) in a handful of transactions, not 10.
    assert commits <= 6, commits
    assert await problems_for(pool, *rich, poor, suspended, keyed) == []


async def test_racing_submits_of_many_accounts_are_exact(pool: asyncpg.Pool) -> None:
    """200 concurrent submits spread over 5 accounts that can each afford 37 (148 credits, cost 4), through two
    batchers (two API processes) at once: exactly 37 tasks per account, far fewer commits than tasks, and no
    deadlock although both lock the same accounts."""
    hot = [(await accounts.create_account(pool, "pro_plus", 148))[0].id for _ in range(5)]
    batchers = [tasks.SubmitBatcher(), tasks.SubmitBatcher()]
    rnd = random.Random(16)
    plan = [(rnd.choice(batchers), hot[i % 5]) for i in range(5 * 200)]

    async def one(batcher: tasks.SubmitBatcher, account_id: str, i: int) -> bool:
        try:
            await batcher.submit(pool, account_id, _req(str(i)))
        except InsufficientCredits:
            return False
        return True

    results = await asyncio.gather(*(one(b, a, i) for i, (b, a) in enumerate(plan)))
    assert sum(results) == 5 * 37
    for a in hot:
        assert await balance(pool, a) == (148, 148)
    commits = await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM tasks WHERE account_id = ANY($1)", hot)
    assert commits < 5 * 37 / 3, commits
    statements = sum(b.statements for b in batchers)
    assert statements < len(plan) / 5, statements
    assert await problems_for(pool, *hot) == []
