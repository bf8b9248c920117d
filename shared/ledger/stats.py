"""Read-only figures for operators: the scrape-time gauges of ``/metrics`` and the operator's page ``/admin``.

Nothing here writes. :func:`gauges` is what every Prometheus scrape runs, so it is one round trip whose parts use
the partial indexes on live tasks (``tasks_live``), open holds (``holds_open``) and pending payment events
(``payment_events_pending``); only the balance totals read the accounts table, which is one narrow row per
account. The page's other queries (:func:`tasks_by_status`, :func:`recent_failures`) read more and are meant
for a page that refreshes every few seconds, not for a scrape loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from shared.ledger.accounts import Conn

_GAUGES = """
SELECT
    (SELECT count(*) FROM tasks WHERE status = 'queued') AS queued,
    (SELECT count(*) FROM tasks WHERE status = 'running') AS running,
    (SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')
                                  AND deadline_at < now() - make_interval(secs => $1)) AS stuck,
    (SELECT count(*) FROM holds WHERE status = 'held') AS open_holds,
    (SELECT coalesce(sum(amount), 0) FROM holds WHERE status = 'held') AS open_hold_credits,
    (SELECT count(*) FROM payment_events WHERE status = 'pending') AS pending_events,
    (SELECT count(*) FROM lots WHERE remaining > 0 AND expires_at IS NOT NULL
                               AND expires_at < now() + make_interval(secs => $2)) AS expiring_lots,
    (SELECT coalesce(sum(remaining), 0) FROM lots WHERE remaining > 0 AND expires_at IS NOT NULL
                                                    AND expires_at < now() + make_interval(secs => $2))
        AS expiring_credits,
    a.accounts, a.balance, a.held, a.in_debt, a.owed
FROM (SELECT count(*) AS accounts, coalesce(sum(balance), 0) AS balance, coalesce(sum(held), 0) AS held,
             count(*) FILTER (WHERE balance < held) AS in_debt,
             coalesce(sum(held - balance) FILTER (WHERE balance < held), 0) AS owed
        FROM accounts) a
"""

# "Expiring soon" on /metrics and the operator's page: within a week.
EXPIRING_SOON_SECONDS = 7 * 86_400.0


@dataclass(frozen=True, slots=True)
class Gauges:
    """The state of the ledger and the task store at one instant (one snapshot: one statement).

    ``balance``/``held``: totals over all accounts (``available = balance - held``); ``open_hold_credits``:
    the sum of open holds, equal to ``held`` while the books balance (the audit checks it per account).
    ``stuck``: live tasks past their deadline plus the sweep interval, which the sweeper should have ended.
    ``expiring_lots``/``expiring_credits``: lots with credits left that expire within EXPIRING_SOON_SECONDS (or
    are past their expiry, waiting for the sweep or for a hold on them to end). ``in_debt``/``owed``: accounts
    whose available is below zero (a refund or dispute took back spent credits) and the credits they owe.
    """

    queued: int
    running: int
    stuck: int
    open_holds: int
    open_hold_credits: int
    pending_events: int
    accounts: int
    balance: int
    held: int
    expiring_lots: int = 0
    expiring_credits: int = 0
    in_debt: int = 0
    owed: int = 0

    @property
    def available(self) -> int:
        """Credits that accounts may still spend: ``balance - held`` summed."""
        return self.balance - self.held


async def gauges(conn: Conn, sweep_seconds: float) -> Gauges:
    """The scrape-time gauges, in one read-only statement. Raises what the connection raises."""
    r = await conn.fetchrow(_GAUGES, sweep_seconds, EXPIRING_SOON_SECONDS)
    assert r is not None
    return Gauges(**{k: int(r[k]) for k in Gauges.__slots__})


async def tasks_by_status(conn: Conn) -> dict[str, int]:
    """Every task status (``queued``, ``running``, ``succeeded``, ``failed``, ``canceled``) with its count, zeros
    included. Reads the whole tasks table: for the operator's page, not for a scrape."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status")
    counts = dict.fromkeys(("queued", "running", "succeeded", "failed", "canceled"), 0)
    counts.update({r["status"]: int(r["n"]) for r in rows})
    return counts


@dataclass(frozen=True, slots=True)
class StuckTask:
    """A live task past its deadline plus the sweep interval: the sweeper should have failed and refunded it."""

    task_id: str
    account_id: str
    model: str
    status: str
    provider_task_id: str | None
    deadline_at: datetime
    overdue_seconds: float


async def stuck_tasks(conn: Conn, sweep_seconds: float, limit: int = 20) -> list[StuckTask]:
    """Up to ``limit`` stuck tasks, the most overdue first (the audit's ``stuck_task`` rule)."""
    rows = await conn.fetch(
        "SELECT id, account_id, model, status, provider_task_id, deadline_at, "
        "extract(epoch FROM now() - deadline_at)::float8 AS overdue "
        "FROM tasks WHERE status IN ('queued', 'running') AND deadline_at < now() - make_interval(secs => $1) "
        "ORDER BY deadline_at LIMIT $2",
        sweep_seconds,
        limit,
    )
    return [
        StuckTask(
            task_id=r["id"],
            account_id=r["account_id"],
            model=r["model"],
            status=r["status"],
            provider_task_id=r["provider_task_id"],
            deadline_at=r["deadline_at"],
            overdue_seconds=float(r["overdue"]),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class FailureReason:
    """Failed tasks of one ``error_code`` in the window, and when the last one failed."""

    reason: str
    count: int
    last_at: datetime


async def recent_failures(conn: Conn, window_seconds: float, limit: int = 20) -> list[FailureReason]:
    """Tasks failed in the last ``window_seconds``, grouped by their error code, the most frequent first."""
    rows = await conn.fetch(
        "SELECT coalesce(error_code, 'unknown') AS reason, count(*) AS n, max(finished_at) AS last_at "
        "FROM tasks WHERE status = 'failed' AND finished_at > now() - make_interval(secs => $1) "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $2",
        window_seconds,
        limit,
    )
    return [FailureReason(r["reason"], int(r["n"]), r["last_at"]) for r in rows]


@dataclass(frozen=True, slots=True)
class FailureSample:
    """One recent failed task of a reason: its id, its message, when it failed."""

    reason: str
    task_id: str
    message: str
    at: datetime


async def failure_samples(conn: Conn, window_seconds: float, per_reason: int = 3) -> list[FailureSample]:
    """The newest ``per_reason`` failed tasks of each error code in the last ``window_seconds``, newest first.
    Read-only, one statement."""
    rows = await conn.fetch(
        "SELECT reason, id, message, finished_at FROM ("
        "  SELECT coalesce(error_code, 'unknown') AS reason, id, coalesce(error_message, '') AS message, finished_at,"
        "         row_number() OVER (PARTITION BY coalesce(error_code, 'unknown') ORDER BY finished_at DESC, id) AS k"
        "  FROM tasks WHERE status = 'failed' AND finished_at > now() - make_interval(secs => $1)"
        ") s WHERE k <= $2 ORDER BY reason, finished_at DESC",
        window_seconds,
        per_reason,
    )
    return [FailureSample(r["reason"], r["id"], r["message"], r["finished_at"]) for r in rows]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One interval of the last hours: tasks submitted, ended by outcome, credits captured, and the tasks in
    flight (queued or running) at its end."""

    start: datetime
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    captured: int = 0
    in_flight: int = 0


async def history(conn: Conn, step_seconds: float, buckets: int) -> list[Bucket]:
    """The last ``buckets`` intervals of ``step_seconds`` (the last one ends now), oldest first. In flight at a
    bucket's end is rebuilt backwards from the live count now (a task submitted after that end had not yet
    begun; one that ended after it was still in flight), so it needs no sampling. Read-only, one statement in
    one snapshot."""
    rows = await conn.fetch(
        """
        WITH p AS (
            SELECT extract(epoch FROM now())::float8 AS hi, extract(epoch FROM now())::float8 - $1::float8 * $2 AS lo
        )
        SELECT 'submitted' AS kind, width_bucket(extract(epoch FROM t.created_at)::float8, p.lo, p.hi, $2::int) AS b,
               count(*) AS n, 0::bigint AS credits
        FROM tasks t, p WHERE t.created_at >= to_timestamp(p.lo) GROUP BY 2
        UNION ALL
        SELECT t.status, width_bucket(extract(epoch FROM t.finished_at)::float8, p.lo, p.hi, $2::int), count(*),
               sum(t.charged)::bigint
        FROM tasks t, p WHERE t.finished_at >= to_timestamp(p.lo) AND t.status IN ('succeeded', 'failed', 'canceled')
        GROUP BY 1, 2
        UNION ALL
        SELECT 'live', 0, count(*), 0::bigint FROM tasks WHERE status IN ('queued', 'running')
        UNION ALL
        SELECT 'now', 0, 0, extract(epoch FROM now())::bigint
        """,
        step_seconds,
        buckets,
    )
    counts: dict[tuple[str, int], tuple[int, int]] = {}
    live, now = 0, 0.0
    for r in rows:
        if r["kind"] == "live":
            live = int(r["n"])
        elif r["kind"] == "now":
            now = float(r["credits"])
        else:
            # width_bucket: 1..buckets inside, buckets + 1 for "now" itself (the upper bound is exclusive).
            b = min(int(r["b"]), buckets) - 1
            n, c = counts.get((r["kind"], b), (0, 0))
            counts[(r["kind"], b)] = (n + int(r["n"]), c + int(r["credits"] or 0))
    out: list[Bucket] = []
    in_flight = live
    for b in range(buckets - 1, -1, -1):
        submitted = counts.get(("submitted", b), (0, 0))[0]
        succeeded, captured = counts.get(("succeeded", b), (0, 0))
        failed = counts.get(("failed", b), (0, 0))[0]
        canceled = counts.get(("canceled", b), (0, 0))[0]
        out.append(
            Bucket(
                start=datetime.fromtimestamp(now - (buckets - b) * step_seconds, UTC),
                submitted=submitted,
                succeeded=succeeded,
                failed=failed,
                canceled=canceled,
                captured=captured,
                in_flight=max(0, in_flight),
            )
        )
        in_flight = in_flight - submitted + succeeded + failed + canceled  # at the end of the bucket before
    out.reverse()
    return out


async def live_tasks(conn: Conn, task_ids: list[str]) -> int:
    """How many of ``task_ids`` are live (queued or running). Read-only."""
    if not task_ids:
        return 0
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE id = ANY($1::text[]) AND status IN ('queued', 'running')", task_ids
        )
    )


@dataclass(frozen=True, slots=True)
class Debtor:
    """An account whose available is below zero: a refund or dispute took back credits it had spent."""

    account_id: str
    external_id: str | None
    status: str
    owed: int


async def debtors(conn: Conn, limit: int = 20) -> list[Debtor]:
    """Up to ``limit`` accounts in debt, the largest debt first. Reads the accounts table: for the operator's
    page, not for a scrape."""
    rows = await conn.fetch(
        "SELECT id, external_id, status, held - balance AS owed FROM accounts WHERE balance < held "
        "ORDER BY held - balance DESC, id LIMIT $1",
        limit,
    )
    return [Debtor(r["id"], r["external_id"], r["status"], int(r["owed"])) for r in rows]
