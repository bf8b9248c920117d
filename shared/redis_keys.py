"""Every Redis key creditq writes, and every arq job id, named in one place (as arq's own ``arq.constants``).

Redis holds only hints, locks, limits and notes; the money is in Postgres (docs/ARCHITECTURE.md). All of
creditq's keys sit under the queue name (``CREDITQ_QUEUE``, :attr:`shared.config.Settings.queue_name`), so
several deployments, or a test per database, share one Redis without meeting. arq's own keys (``arq:job:<id>``,
``arq:result:<id>``, the queue's sorted set named ``queue_name``) are arq's: this module names only the job ids.

No other module builds a key string: each function here takes the queue name (and the key's subject) and is
pure. Who reads and writes each key, and how it expires, is said at the module that uses it (named below).
"""

from __future__ import annotations

# --- arq job ids (shared/queue.py): one per purpose, so that a job of one purpose never swallows another ------


def step_job_id(task_id: str) -> str:
    """The task's step job (enqueue is a no-op while it exists)."""
    return f"task:{task_id}"


def poke_job_id(task_id: str) -> str:
    """A provider callback's "look now" for the task: apart from the deferred step job so as not to be
    swallowed by it. A poke scheduled for the end of a window adds ``:<ms>`` (:func:`scheduled_poke_job_id`)."""
    return f"poke:{task_id}"


def scheduled_poke_job_id(task_id: str, at_ms: int) -> str:
    """The one poke scheduled at ``at_ms`` (Redis's clock, ms) for the callbacks of a window."""
    return f"{poke_job_id(task_id)}:{at_ms}"


def delivery_job_id(webhook_id: str) -> str:
    """The client webhook delivery's job."""
    return f"delivery:{webhook_id}"


def delivery_sweep_job_id(webhook_id: str, attempts: int) -> str:
    """The delivery sweep's job for a delivery found overdue after ``attempts`` attempts."""
    return f"{delivery_job_id(webhook_id)}:sweep:{attempts}"


def delivery_now_job_id(webhook_id: str, at: float) -> str:
    """A client's retry of a delivery, now (``at``: unix time), apart from a job deferred for hours."""
    return f"{delivery_job_id(webhook_id)}:now:{at}"


# --- the queue's hints (shared/queue.py, shared/provider.py) ---------------------------------------------------


def poke_gate(queue_name: str, task_id: str) -> str:
    """STRING: the time (ms) of the last poke the task's gate let through or scheduled."""
    return f"{queue_name}:poke-gate:{task_id}"


def provider_hint(queue_name: str, task_id: str) -> str:
    """STRING: the provider task id noted for the task (before Postgres has it)."""
    return f"{queue_name}:ptask:{task_id}"


# --- tier limits (shared/tier_limits.py) --------------------------------------------------------------------------


def limits_live(queue_name: str, account_id: str) -> str:
    """ZSET task id → deadline (ms): the account's live jobs."""
    return f"{queue_name}:limits:live:{account_id}"


def limits_pending(queue_name: str, account_id: str) -> str:
    """ZSET task id → reservation time (ms): reservations whose submit has not committed."""
    return f"{queue_name}:limits:pending:{account_id}"


def limits_daily(queue_name: str, account_id: str) -> str:
    """HASH UTC day number → jobs started that day."""
    return f"{queue_name}:limits:daily:{account_id}"


def limits_cooldown(queue_name: str, account_id: str, kind: str) -> str:
    """STRING "<start ms> <task id>", expiring when the account's cooldown for ``kind`` ends."""
    return f"{queue_name}:limits:cooldown:{account_id}:{kind}"


# --- the provider's budget and circuits (shared/provider_budget.py); ``key_id``: a provider key's public name


def budget(queue_name: str, key_id: str, kind: str) -> str:
    """ZSET: the sliding-window log of one provider key's calls of ``kind`` ("create" or "query")."""
    return f"{queue_name}:budget:{key_id}:{kind}"


def circuit(queue_name: str, key_id: str) -> str:
    """STRING (JSON, with a time-to-live): one provider key's open circuit."""
    return f"{queue_name}:circuit:{key_id}"


# --- the fleet's metrics and notes (shared/metrics.py) ---------------------------------------------------------


def metrics_workers(queue_name: str) -> str:
    """ZSET worker id → time of its last snapshot."""
    return f"{queue_name}:metrics:workers"


def metrics_snapshot(queue_name: str, worker_id: str) -> str:
    """STRING (JSON): one worker's last metrics snapshot."""
    return f"{queue_name}:metrics:worker:{worker_id}"


def provider_credits(queue_name: str) -> str:
    """STRING (JSON): the provider's credit balance as last polled."""
    return f"{queue_name}:provider:credits"


def provider_reach(queue_name: str) -> str:
    """HASH ``failures`` (connection failures to the provider in a row, any worker), ``lastError``, ``at`` (unix
    time of the last failure); deleted when the provider answers (worker/health.py)."""
    return f"{queue_name}:provider:reach"


def audit_last(queue_name: str) -> str:
    """STRING (JSON): the last audit's summary."""
    return f"{queue_name}:audit:last"


# --- the workers' locks: one worker of the fleet does each per interval (worker/) -----------------------------


def sweeper_lock(queue_name: str) -> str:
    """The sweep (worker/sweeper.py)."""
    return f"{queue_name}:sweeper"


def credit_poll_lock(queue_name: str) -> str:
    """The credit poll of open out-of-credits circuits (worker/sweeper.py)."""
    return f"{queue_name}:creditpoll"


def audit_lock(queue_name: str) -> str:
    """The periodic audit (worker/reporting.py)."""
    return f"{queue_name}:auditrun"


def credit_balance_lock(queue_name: str) -> str:
    """The periodic poll of the provider's balance (worker/reporting.py)."""
    return f"{queue_name}:creditbalance"


def delivery_sweep_lock(queue_name: str) -> str:
    """The sweep of client webhook deliveries due (worker/deliveries.py)."""
    return f"{queue_name}:delivery-sweep"


def worker_health_check(queue_name: str) -> str:
    """STRING: arq's health-check line of the queue's workers (arq's ``health_check_key``, worker/settings.py)."""
    return f"{queue_name}:health-check"
