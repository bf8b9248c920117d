"""Every Prometheus metric of creditq, and how the workers' figures reach the API's ``GET /metrics``.

**The choice: worker metrics are pushed to Redis and served by the API.** Workers run anywhere (several hosts,
containers scaled by ``docker compose --scale``), have no HTTP port, and come and go; Prometheus should scrape one
stable target. So each worker process, every :data:`PUSH_SECONDS`, writes a snapshot of its own registry's
``creditq_*`` and ``process_*`` samples to Redis under ``{CREDITQ_QUEUE}:metrics:worker:<id>`` (JSON, expiring
after :data:`SNAPSHOT_TTL_SECONDS`, the id listed in the sorted set ``{CREDITQ_QUEUE}:metrics:workers``). The
API's ``/metrics`` renders, through one :class:`ClusterCollector`, its own registry plus every live worker
snapshot with a ``worker="<host>:<pid>"`` label, plus gauges computed at scrape time (:func:`ops_state`): tasks in
flight by state, stuck tasks and the credit totals from Postgres (:func:`shared.ledger.stats.gauges`, one
cheap statement), and from Redis the queue depth (``ZCARD`` of the arq queue), the provider circuit, the
provider's credit balance as the workers last polled it, the summary of the last audit (one worker runs it
every few minutes; a reconcile refreshes it), the provider budget in use and the number of live workers. A worker that dies stops refreshing its key and drops out within a minute; its counters restart with
a new ``worker`` label when it comes back, which ``rate()`` handles as any counter reset.

The cost: a worker's figures are up to ``PUSH_SECONDS`` late, and a metric incremented in both the API and the
workers (credits released by a cancel in the API, by a failure in a worker) is one family whose API samples have
no ``worker`` label: ``sum by (...)`` over it counts both. With ``creditq api --workers N`` and
``PROMETHEUS_MULTIPROC_DIR`` set (for the API processes only), the API part is prometheus-client's multiprocess
collection of that directory.

Names: counters end in ``_total``; durations are histograms in seconds; scrape-time gauges carry no suffix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from shared import redis_keys
from shared.config import Settings
from shared.ledger import audit, stats
from shared.provider_budget import ProviderBudget, open_circuit_info

# --- What the API and the workers count -----------------------------------------------------------------------

TASKS_SUBMITTED = Counter(
    "creditq_tasks_submitted_total",
    "Tasks accepted and held for (new tasks only; an idempotent repeat is not counted), by model.",
    ["model"],
)
TASKS_FINISHED = Counter(
    "creditq_tasks_finished_total",
    "Tasks that reached a terminal state, by model, status (succeeded, failed, canceled) and reason "
    "(the error code of a failure, 'ok' for a success, 'client' for a cancel).",
    ["model", "status", "reason"],
)
CREDITS_HELD = Counter("creditq_credits_held_total", "Credits put on hold by submitted tasks, by model.", ["model"])
CREDITS_CAPTURED = Counter(
    "creditq_credits_captured_total", "Credits captured (charged) by succeeded tasks, by model.", ["model"]
)
CREDITS_RELEASED = Counter(
    "creditq_credits_released_total",
    "Credits released (refunded) by failed and canceled tasks, by model and reason.",
    ["model", "reason"],
)
SUBMIT_SECONDS = Histogram(
    "creditq_submit_seconds",
    "Latency of POST /v1/jobs as the API measured it, by HTTP status.",
    ["status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
HTTP_REQUESTS = Counter(
    "creditq_http_requests_total", "HTTP requests answered by the API, by method and status.", ["method", "status"]
)
PROVIDER_CALLS = Counter(
    "creditq_provider_calls_total",
    "Calls to the provider (KIE.ai) by endpoint, code (the envelope's or HTTP code; 'none' when no answer) "
    "and outcome ('ok' or the error class).",
    ["endpoint", "code", "outcome"],
)
PROVIDER_CALL_SECONDS = Histogram(
    "creditq_provider_call_seconds",
    "Latency of provider calls by endpoint and outcome.",
    ["endpoint", "outcome"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
PROVIDER_RATE_LIMITED = Counter(
    "creditq_provider_rate_limited_total",
    "Provider answers of 429 (rate limited) by endpoint: our shared budget should make these rare.",
    ["endpoint"],
)
BUDGET_WAITS = Counter(
    "creditq_provider_budget_waits_total",
    "Provider calls that had to wait for a token of the shared budget, by kind (create, query).",
    ["kind"],
)
BUDGET_DEFERRED = Counter(
    "creditq_provider_budget_deferred_total",
    "Provider calls given up for now because no token freed in time (the task is looked at later), by kind.",
    ["kind"],
)
BUDGET_WAIT_SECONDS = Histogram(
    "creditq_provider_budget_wait_seconds",
    "Time spent waiting for a budget token, for calls that had to wait, by kind.",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
)
CIRCUIT_OPENED = Counter(
    "creditq_provider_circuit_opened_total", "Times the out-of-credits circuit was opened, by reason.", ["reason"]
)
CREDIT_POLLS = Counter(
    "creditq_provider_credit_polls_total",
    "Polls of the provider's credit balance (GET /api/v1/chat/credit) by outcome (ok, error).",
    ["outcome"],
)
PAYMENT_EVENTS = Counter(
    "creditq_payment_events_total",
    "Payment webhook deliveries by outcome (applied, repeat, ignored, pending, rejected).",
    ["outcome"],
)
LOTS_EXPIRED = Counter(
    "creditq_lots_expired_total", "Expiration entries written by the sweep (one per lot and expiry run)."
)
SWEEPER_RECOVERIES = Counter(
    "creditq_sweeper_recoveries_total",
    "Tasks the sweeper recovered: re-enqueued after their queue entry was lost (requeued) or ended past "
    "their deadline (expired).",
    ["action"],
)

# --- Worker snapshots in Redis --------------------------------------------------------------------------------

PUSH_SECONDS = 5.0
SNAPSHOT_TTL_SECONDS = 60
PUSHED_PREFIXES = ("creditq_", "process_")
WORKER_LABEL = "worker"


def workers_key(settings: Settings) -> str:
    """The sorted set of worker ids, scored by the time of their last snapshot."""
    return redis_keys.metrics_workers(settings.queue_name)


def snapshot_key(settings: Settings, worker_id: str) -> str:
    """Where worker ``worker_id`` keeps its snapshot."""
    return redis_keys.metrics_snapshot(settings.queue_name, worker_id)


def worker_id() -> str:
    """This process's name in the ``worker`` label: ``<hostname>:<pid>`` (unique while it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def snapshot(registry: Collector = REGISTRY, prefixes: tuple[str, ...] = PUSHED_PREFIXES) -> list[dict[str, Any]]:
    """The registry's families whose names start with one of ``prefixes``, as JSON-able dicts
    ``{"n": name, "h": help, "t": type, "u": unit, "s": [[sample name, labels, value], ...]}``. Pure."""
    out: list[dict[str, Any]] = []
    for metric in registry.collect():
        if not metric.name.startswith(prefixes) or not metric.samples:
            continue
        out.append(
            {
                "n": metric.name,
                "h": metric.documentation,
                "t": metric.type,
                "u": metric.unit,
                "s": [[s.name, dict(s.labels), s.value] for s in metric.samples],
            }
        )
    return out


async def push_snapshot(redis: Redis, settings: Settings, wid: str, registry: Collector = REGISTRY) -> None:
    """Write this worker's snapshot (expiring after SNAPSHOT_TTL_SECONDS) and list it as live. One pipelined
    round trip. Raises redis errors."""
    body = json.dumps(snapshot(registry), separators=(",", ":"))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(snapshot_key(settings, wid), body, ex=SNAPSHOT_TTL_SECONDS)
        pipe.zadd(workers_key(settings), {wid: time.time()})
        await pipe.execute()


async def read_snapshots(redis: Redis, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every live worker's snapshot by worker id. A worker whose snapshot expired (gone a minute) is skipped, and
    dropped from the list after ten lifetimes; a snapshot that does not parse is skipped. Three round trips.
    Raises redis errors."""
    key = workers_key(settings)
    # Ids idle for far longer than a snapshot lives are certainly gone; trimming keeps the set small.
    await redis.zremrangebyscore(key, "-inf", time.time() - 10 * SNAPSHOT_TTL_SECONDS)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await redis.zrange(key, 0, -1)]
    if not ids:
        return {}
    raws = await redis.mget([snapshot_key(settings, i) for i in ids])
    out: dict[str, list[dict[str, Any]]] = {}
    for wid, raw in zip(ids, raws, strict=True):
        if raw is None:
            continue
        with contextlib.suppress(ValueError):
            families = json.loads(raw)
            if isinstance(families, list):
                out[wid] = families
    return out


def _families(snap: list[dict[str, Any]]) -> Iterator[Metric]:
    for f in snap:
        try:
            metric = Metric(str(f["n"]), str(f["h"]), str(f["t"]), str(f.get("u") or ""))
            for name, labels, value in f["s"]:
                metric.add_sample(str(name), {str(k): str(v) for k, v in dict(labels).items()}, float(value))
        except (KeyError, TypeError, ValueError):
            continue  # a snapshot from another version of creditq: skip what we cannot read
        yield metric


class ClusterCollector:
    """The API's view for ``/metrics``: ``local`` (the API process's registry) merged with the workers'
    snapshots (each sample gains ``worker="<id>"``) and the scrape-time families in ``extra``.

    Families of one name are merged into one (one ``# TYPE`` line each, as the text format requires); a worker
    family whose type disagrees with the API's is dropped rather than emitted twice. ``collect`` is pure.
    """

    def __init__(
        self,
        local: Collector | None,
        workers: dict[str, list[dict[str, Any]]],
        extra: Iterable[Metric] = (),
    ) -> None:
        self._local = local
        self._workers = workers
        self._extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        """The merged families."""
        merged: dict[str, Metric] = {}

        def add(metric: Metric, labels: dict[str, str]) -> None:
            family = merged.get(metric.name)
            if family is None:
                family = merged[metric.name] = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            elif family.type != metric.type:
                return
            for s in metric.samples:
                family.add_sample(s.name, {**s.labels, **labels}, s.value)

        if self._local is not None:
            for metric in self._local.collect():
                add(metric, {})
        for wid in sorted(self._workers):
            for metric in _families(self._workers[wid]):
                add(metric, {WORKER_LABEL: wid})
        for metric in self._extra:
            add(metric, {})
        yield from merged.values()


def local_collector(settings: Settings) -> Collector:
    """The API process's own figures: the default registry, or with ``PROMETHEUS_MULTIPROC_DIR`` set, the
    multiprocess collection of every API process on this host."""
    if not settings.metrics_dir:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=settings.metrics_dir)  # type: ignore[no-untyped-call]
    return registry


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
    provider_reach: dict[str, Any] | None = None  # shared.metrics.provider_reach: None while reachable
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


# --- Helpers for the instrumented code ------------------------------------------------------------------------


def observe_provider_call(endpoint: str, code: int | None, outcome: str, seconds: float) -> None:
    """Count one provider call (and a 429 as rate limited) and record its latency."""
    PROVIDER_CALLS.labels(endpoint, "none" if code is None else str(code), outcome).inc()
    PROVIDER_CALL_SECONDS.labels(endpoint, outcome).observe(seconds)
    if code == 429:
        PROVIDER_RATE_LIMITED.labels(endpoint).inc()
