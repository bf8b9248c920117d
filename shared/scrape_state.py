"""The scrape-time state: what ``GET /metrics`` and the operator's page read from Postgres and Redis when asked
(:func:`ops_state`), the gauges made of it (:func:`state_families`), and the notes the workers leave in Redis for
it (the provider's credit balance as last polled, the last audit's summary). :func:`render` is the whole
``/metrics`` text: this process's registry, the workers' snapshots (:mod:`shared.fleet_metrics`) and these gauges.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from shared import redis_keys
from shared.config import Settings
from shared.fleet_metrics import ClusterCollector, read_snapshots
from shared.ledger import audit, stats
from shared.provider_budget import ProviderBudget, open_circuit_info

# --- Scrape-time state ----------------------------------------------------------------------------------------

STATE_TIMEOUT_SECONDS = 2.0


@dataclass(slots=True)
class OpsState:
    """What ``/metrics`` and the operator's page compute when asked, from Postgres and Redis.

    A part whose source could not be read within STATE_TIMEOUT_SECONDS is None and ``errors`` says why.
    ``circuit``: None when closed, else its reason and since (unix time). ``provider_credits``: (balance, unix
    time of the poll) or None before any poll. ``budget``: kind → (used, limit) in the current window.
    """

    gauges: stats.Gauges | None = None
    queue_depth: int | None = None
    circuit_known: bool = False
    circuit: dict[str, Any] | None = None
    provider_credits: tuple[float, float] | None = None
    budget: dict[str, tuple[int, int]] | None = None
    audit: AuditSummary | None = None
    provider_reach: dict[str, Any] | None = None  # provider_reach(): None while reachable
    workers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


async def _budget_usage(redis: Redis, settings: Settings) -> dict[str, tuple[int, int]]:
    """Kind → (calls in the current window, limit), summed over every provider key (``KIE_API_KEYS``): what the
    fleet uses of all its keys' budgets together. Raises redis errors."""
    total: dict[str, tuple[int, int]] = {}
    for key in settings.provider_keys:
        for kind, (used, limit) in (await ProviderBudget(redis, settings, key).usage()).items():
            was = total.get(kind, (0, 0))
            total[kind] = (was[0] + used, was[1] + limit)
    return total


async def ops_state(settings: Settings, pool: asyncpg.Pool | None, redis: Redis | None) -> OpsState:
    """Read the scrape-time state; never raises for an unreachable source (it is recorded in ``errors``)."""
    state = OpsState()

    async def postgres() -> None:
        if pool is None:
            state.errors["postgres"] = "not connected"
            return
        try:
            state.gauges = await asyncio.wait_for(stats.gauges(pool, settings.sweep_seconds), STATE_TIMEOUT_SECONDS)
        except Exception as e:
            state.errors["postgres"] = f"{type(e).__name__}: {e}"

    async def from_redis() -> None:
        if redis is None:
            state.errors["redis"] = "not connected"
            return
        try:
            async with asyncio.timeout(STATE_TIMEOUT_SECONDS):
                state.queue_depth = int(await redis.zcard(settings.queue_name))
                state.circuit = await open_circuit_info(redis, settings)
                state.circuit_known = True
                state.provider_credits = await last_provider_credits(redis, settings)
                state.provider_reach = await provider_reach(redis, settings)
                state.audit = await last_audit(redis, settings)
                state.budget = await _budget_usage(redis, settings)
                state.workers = await read_snapshots(redis, settings)
        except Exception as e:
            state.errors["redis"] = f"{type(e).__name__}: {e}"

    await asyncio.gather(postgres(), from_redis())
    return state


def _gauge(name: str, documentation: str) -> Metric:
    return Metric(name, documentation, "gauge")


def _money_gauges(g: stats.Gauges) -> list[tuple[str, str, int]]:
    """Money over time: lots expiring soon, accounts in debt and what they owe."""
    return [
        (
            "creditq_lots_expiring_soon",
            "Lots with credits left that expire within 7 days (or are past expiry, awaiting the sweep).",
            g.expiring_lots,
        ),
        ("creditq_credits_expiring_soon", "Credits left in those lots.", g.expiring_credits),
        ("creditq_accounts_in_debt", "Accounts whose available is below zero (a refund or dispute).", g.in_debt),
        ("creditq_credits_owed", "Credits those accounts owe (Σ held - balance where negative).", g.owed),
    ]


def state_families(state: OpsState) -> list[Metric]:
    """The scrape-time gauges of ``state`` as Prometheus families (a part that could not be read is left out, and
    ``creditq_state_source_up`` says so). Pure."""
    out: list[Metric] = []
    up = _gauge("creditq_state_source_up", "1 when /metrics could read this source of scrape-time state.")
    up.add_sample("creditq_state_source_up", {"source": "postgres"}, 0.0 if "postgres" in state.errors else 1.0)
    up.add_sample("creditq_state_source_up", {"source": "redis"}, 0.0 if "redis" in state.errors else 1.0)
    out.append(up)
    g = state.gauges
    if g is not None:
        flight = _gauge("creditq_tasks_in_flight", "Tasks not yet terminal, by state (from Postgres).")
        flight.add_sample("creditq_tasks_in_flight", {"state": "queued"}, g.queued)
        flight.add_sample("creditq_tasks_in_flight", {"state": "running"}, g.running)
        out.append(flight)
        for name, doc, value in (
            ("creditq_tasks_stuck", "Live tasks past their deadline plus the sweep interval.", g.stuck),
            ("creditq_ledger_balance_credits", "Sum of all account balances.", g.balance),
            ("creditq_ledger_held_credits", "Sum of all accounts' held credits.", g.held),
            (
                "creditq_ledger_available_credits",
                "Sum of all accounts' available credits (balance - held).",
                g.available,
            ),
            ("creditq_ledger_open_holds", "Holds not yet captured or released.", g.open_holds),
            (
                "creditq_ledger_open_hold_credits",
                "Credits in open holds (equals held credits when the books balance).",
                g.open_hold_credits,
            ),
            ("creditq_ledger_accounts", "Accounts.", g.accounts),
            ("creditq_payment_events_pending", "Payment events stored but not applied.", g.pending_events),
            *_money_gauges(g),
        ):
            m = _gauge(name, doc)
            m.add_sample(name, {}, float(value))
            out.append(m)
    if state.queue_depth is not None:
        m = _gauge("creditq_queue_depth", "Jobs in the arq queue (ZCARD), due now or deferred.")
        m.add_sample("creditq_queue_depth", {}, float(state.queue_depth))
        out.append(m)
    if state.circuit_known:
        m = _gauge("creditq_provider_circuit_open", "1 while submitting is stopped: the provider is out of credits.")
        m.add_sample("creditq_provider_circuit_open", {}, 0.0 if state.circuit is None else 1.0)
        out.append(m)
    if state.circuit_known:
        m = _gauge(
            "creditq_provider_unreachable",
            "1 after PROVIDER_UNREACHABLE_AFTER connection failures in a row to the provider, 0 once it answers.",
        )
        reach = state.provider_reach
        m.add_sample("creditq_provider_unreachable", {}, 1.0 if reach and reach["unreachable"] else 0.0)
        out.append(m)
    if state.provider_credits is not None:
        credits, at = state.provider_credits
        m = _gauge("creditq_provider_credits", "The provider account's credit balance, as last polled.")
        m.add_sample("creditq_provider_credits", {}, credits)
        out.append(m)
        m = _gauge("creditq_provider_credits_polled_timestamp_seconds", "Unix time of that poll.")
        m.add_sample("creditq_provider_credits_polled_timestamp_seconds", {}, at)
        out.append(m)
    if state.budget is not None:
        used = _gauge("creditq_provider_budget_used", "Provider calls counted in the current window, by kind.")
        limit = _gauge("creditq_provider_budget_limit", "Provider calls allowed per window, by kind.")
        for kind, (n, cap) in sorted(state.budget.items()):
            used.add_sample("creditq_provider_budget_used", {"kind": kind}, float(n))
            limit.add_sample("creditq_provider_budget_limit", {"kind": kind}, float(cap))
        out.extend((used, limit))
    if state.audit is not None:
        problems = _gauge("creditq_audit_problems", "Problems found by the last audit, by kind (0 when clean).")
        for kind in sorted(set(audit.KINDS) | set(state.audit.counts)):
            problems.add_sample("creditq_audit_problems", {"kind": kind}, float(state.audit.counts.get(kind, 0)))
        out.append(problems)
        m = _gauge("creditq_audit_timestamp_seconds", "Unix time of the last audit.")
        m.add_sample("creditq_audit_timestamp_seconds", {}, state.audit.at)
        out.append(m)
    if "redis" not in state.errors:
        m = _gauge("creditq_workers", "Workers whose metrics snapshot is live in Redis.")
        m.add_sample("creditq_workers", {}, float(len(state.workers)))
        out.append(m)
    return out


def render(local: Collector | None, state: OpsState) -> bytes:
    """The text exposition of ``/metrics``: local figures, worker snapshots and scrape-time gauges."""
    return generate_latest(ClusterCollector(local, state.workers, state_families(state)))


# --- The provider's credit balance, as last polled by a worker -------------------------------------------------

PROVIDER_CREDITS_TTL_SECONDS = 86_400  # a day-old balance is still worth showing, with its age


def provider_credits_key(settings: Settings) -> str:
    """The Redis key of the provider's last polled credit balance."""
    return redis_keys.provider_credits(settings.queue_name)


async def record_provider_credits(redis: Redis, settings: Settings, credits: float) -> None:
    """Note the provider's balance as just polled (the last note wins). Raises redis errors."""
    value = json.dumps({"credits": credits, "at": time.time()})
    await redis.set(provider_credits_key(settings), value, ex=PROVIDER_CREDITS_TTL_SECONDS)


async def last_provider_credits(redis: Redis, settings: Settings) -> tuple[float, float] | None:
    """``(balance, unix time of the poll)`` as last noted, or None (never polled, or unreadable). Raises redis
    errors."""
    raw = await redis.get(provider_credits_key(settings))
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        return float(value["credits"]), float(value["at"])
    except (ValueError, KeyError, TypeError):
        return None


# --- The provider's reachability, as the workers see it ------------------------------------------------------

# This many connection failures in a row (creates, balance polls, the start probe; any worker) and the provider is
# reported ``unreachable`` by /readyz and the operator's page; any answer from it starts the count again.
PROVIDER_UNREACHABLE_AFTER = 3
PROVIDER_REACH_TTL_SECONDS = 86_400


def provider_reach_key(settings: Settings) -> str:
    """The Redis hash of the provider's reachability: ``failures`` (connection failures in a row), ``lastError``,
    ``at`` (unix time of the last failure)."""
    return redis_keys.provider_reach(settings.queue_name)


async def record_provider_unreached(redis: Redis, settings: Settings, error: str) -> int:
    """Count one more connection failure in a row; returns the count. Raises redis errors."""
    key = provider_reach_key(settings)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "failures", 1)
        pipe.hset(key, mapping={"lastError": error[:500], "at": str(time.time())})
        pipe.expire(key, PROVIDER_REACH_TTL_SECONDS)
        failures, _, _ = await pipe.execute()
    return int(failures)


async def record_provider_reached(redis: Redis, settings: Settings) -> None:
    """The provider answered (whatever it said): the count starts again. Idempotent. Raises redis errors."""
    await redis.delete(provider_reach_key(settings))


async def provider_reach(redis: Redis, settings: Settings) -> dict[str, Any] | None:
    """``{"failures": int, "lastError": str, "at": float, "unreachable": bool}``, or None while the last contact
    succeeded. Raises redis errors."""
    raw = await cast(Awaitable[dict[Any, Any]], redis.hgetall(provider_reach_key(settings)))
    if not raw:
        return None
    value = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }
    try:
        failures = int(value.get("failures", 0))
        at = float(value.get("at", 0))
    except ValueError:
        return None
    return {
        "failures": failures,
        "lastError": value.get("lastError", ""),
        "at": at,
        "unreachable": failures >= PROVIDER_UNREACHABLE_AFTER,
    }


# --- The last audit, as a worker (or the API) last ran it ----------------------------------------------------------

AUDIT_TTL_SECONDS = 86_400


def audit_key(settings: Settings) -> str:
    """The Redis key of the last audit's summary."""
    return redis_keys.audit_last(settings.queue_name)


@dataclass(frozen=True, slots=True)
class AuditSummary:
    """Problems by kind of the last audit, and when it ran (unix time)."""

    at: float
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        """True when the audit found nothing."""
        return not any(self.counts.values())


async def record_audit(redis: Redis, settings: Settings, problem_kinds: Iterable[str]) -> None:
    """Note an audit just run, from the kinds of its problems (one entry per problem). Raises redis errors."""
    counts: dict[str, int] = {}
    for kind in problem_kinds:
        counts[kind] = counts.get(kind, 0) + 1
    await redis.set(audit_key(settings), json.dumps({"at": time.time(), "counts": counts}), ex=AUDIT_TTL_SECONDS)


async def last_audit(redis: Redis, settings: Settings) -> AuditSummary | None:
    """The last audit noted, or None (none within a day, or unreadable). Raises redis errors."""
    raw = await redis.get(audit_key(settings))
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        return AuditSummary(float(value["at"]), {str(k): int(v) for k, v in dict(value["counts"]).items()})
    except (ValueError, KeyError, TypeError):
        return None
