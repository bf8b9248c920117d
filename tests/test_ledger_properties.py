"""Property test: random sequences of money operations against a simple model, every invariant after every step.

Runs on the real Postgres through the real SQL functions. The model is a few dicts; the database must agree with
it after each step, and the audit must find nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shared.errors import IdempotencyConflict, InsufficientCredits
from shared.ledger import accounts, audit, money

ACCOUNTS = 3
amounts = st.integers(min_value=1, max_value=40)
keys = st.sampled_from([f"k{i}" for i in range(6)])  # few keys, so repeats happen often


class LedgerMachine(RuleBasedStateMachine):
    """The model: balances, helds, holds and the idempotency keys used so far."""

    db_url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(self.db_url))
        self.ids: list[str] = []
        self.balance: dict[str, int] = {}
        self.held: dict[str, int] = {}
        # id → (account, amount, status, captured). Drawn from in insertion order, never sorted: the ids are random,
        # and a replayed example must draw the same holds (else hypothesis reports a flaky strategy).
        self.holds: dict[str, tuple[str, int, str, int]] = {}
        self.grant_keys: dict[tuple[str, str], int] = {}
        self.transfer_keys: dict[tuple[str, str], tuple[str, int]] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.conn.close())
        self.loop.close()

    def available(self, a: str) -> int:
        return self.balance[a] - self.held[a]

    @initialize()
    def make_accounts(self) -> None:
        for _ in range(ACCOUNTS):
            account, _, _ = self.run(accounts.create_account(self.conn))
            self.ids.append(account.id)
            self.balance[account.id] = 0
            self.held[account.id] = 0

    @rule(i=st.integers(0, ACCOUNTS - 1), amount=st.integers(-30, 60).filter(bool), key=st.none() | keys)
    def credit(self, i: int, amount: int, key: str | None) -> None:
        a = self.ids[i]
        known = self.grant_keys.get((a, key)) if key else None
        try:
            self.run(money.credit(self.conn, a, amount, "prop", key))
        except IdempotencyConflict:
            assert known is not None and known != amount
            return
        except InsufficientCredits:
            assert known is None and amount < 0 and self.available(a) < -amount
            return
        if known is not None:
            assert known == amount  # a repeat: nothing moves
            return
        assert amount > 0 or self.available(a) >= -amount
        self.balance[a] += amount
        if key:
            self.grant_keys[(a, key)] = amount

    @rule(i=st.integers(0, ACCOUNTS - 1), amount=amounts)
    def hold(self, i: int, amount: int) -> None:
        a = self.ids[i]
        hold_id = "h" + uuid.uuid4().hex
        try:
            self.run(money.hold(self.conn, a, hold_id, amount))
        except InsufficientCredits:
            assert self.available(a) < amount
            return
        assert self.available(a) >= amount
        self.held[a] += amount
        self.holds[hold_id] = (a, amount, "held", 0)

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data())
    def repeat_hold(self, data: st.DataObject) -> None:
        hold_id = data.draw(st.sampled_from(list(self.holds)))
        a, amount, _, _ = self.holds[hold_id]
        self.run(money.hold(self.conn, a, hold_id, amount))  # idempotent: nothing moves

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data(), how=st.sampled_from(["full", "partial", "release"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        """Settle any hold, open or not: settle-after-settle must be a no-op showing the first outcome."""
        hold_id = data.draw(st.sampled_from(list(self.holds)))
        a, amount, status, captured = self.holds[hold_id]
        take = {"full": amount, "release": 0}[how] if how != "partial" else data.draw(st.integers(1, amount))
        if how == "release":
            row = self.run(money.release(self.conn, hold_id))
        else:
            row = self.run(money.capture(self.conn, hold_id, take))
        if status != "held":
            assert (row["status"], row["captured"]) == (status, captured)
            return
        self.held[a] -= amount
        self.balance[a] -= take
        self.holds[hold_id] = (a, amount, "captured" if take else "released", take)
        assert (row["status"], row["captured"]) == self.holds[hold_id][2:]

    @rule(i=st.integers(0, ACCOUNTS - 1), j=st.integers(0, ACCOUNTS - 1), amount=amounts, key=st.none() | keys)
    def transfer(self, i: int, j: int, amount: int, key: str | None) -> None:
        if i == j:
            return
        src, dst = self.ids[i], self.ids[j]
        request = f"{dst}:{amount}"
        known = self.transfer_keys.get((src, key)) if key else None
        try:
            self.run(money.transfer(self.conn, src, dst, amount, None, key, request))
        except IdempotencyConflict:
            assert known is not None and known != (dst, amount)
            return
        except InsufficientCredits:
            assert known is None and self.available(src) < amount
            return
        if known is not None:
            assert known == (dst, amount)
            return
        self.balance[src] -= amount
        self.balance[dst] += amount
        if key:
            self.transfer_keys[(src, key)] = (dst, amount)

    @invariant()
    def database_matches_model(self) -> None:
        if not self.ids:
            return
        rows = self.run(self.conn.fetch("SELECT id, balance, held FROM accounts WHERE id = ANY($1)", self.ids))
        for r in rows:
            assert (r["balance"], r["held"]) == (self.balance[r["id"]], self.held[r["id"]])
            assert 0 <= r["held"] <= r["balance"]

    @invariant()
    def audit_is_clean(self) -> None:
        if not self.ids:
            return
        problems = [p for p in self.run(audit.check(self.conn, 30)) if p.accountId in self.ids]
        assert problems == []


@pytest.mark.slow
def test_ledger_state_machine(database_url: str) -> None:
    """The module's own database, so that the audit after every step reads only this machine's rows."""
    LedgerMachine.db_url = database_url
    LedgerMachine.TestCase.settings = settings_profile
    LedgerMachine.TestCase().runTest()


settings_profile = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
