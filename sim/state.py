"""Everything one simulator instance remembers: tasks, counters, the credit balance and the rate windows.

All of it lives in memory and is touched only from the event loop, so no locks are needed.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sim.options import SimOptions
from sim.tasks import SimTask

CREATE_WINDOW_SECONDS = 10.0
QUERY_WINDOW_SECONDS = 1.0


class SlidingWindowLimiter:
    """A sliding-window log per key: at most ``limit`` hits in any ``window`` seconds.

    Only allowed hits are logged, so a client hammering past the limit does not extend its own ban.
    ``limit == 0`` means no limit.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> float | None:
        """Record one hit for ``key`` and return None, or return the seconds until a hit would be allowed."""
        if self.limit <= 0:
            return None
        now = self._clock()
        log = self._hits.get(key)
        if log is None:
            log = self._hits[key] = deque()
        horizon = now - self.window
        while log and log[0] <= horizon:
            log.popleft()
        if len(log) >= self.limit:
            return max(0.0, log[0] + self.window - now)
        log.append(now)
        return None

    def clear(self) -> None:
        """Forget every key's hits."""
        self._hits.clear()


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass(slots=True)
class SimStats:
    """Counters shown by ``GET /__sim/stats``."""

    creates: int = 0  # accepted creates only
    queries: int = 0  # status queries answered (rate-limited ones excluded)
    rate_limited: int = 0  # requests answered HTTP 429 by the rate limits
    callbacks_sent: int = 0  # callbacks delivered (the receiver answered 2xx)
    callbacks_failed: int = 0  # callbacks given up after ``callback_tries`` failed tries
    callback_attempts: int = 0  # every POST tried, successful or not


class SimState:
    """The task store, the stats, the credit balance and the per-key rate windows of one simulator.

    ``clock`` gives epoch seconds for task times; rate windows use ``time.monotonic``. ``generation`` grows on
    every :meth:`reset` so that work started before a reset (a callback in flight) can tell it is stale.
    """

    def __init__(self, options: SimOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self.tasks: dict[str, SimTask] = {}
        self.stats = SimStats()
        self.balance: float = options.credits
        self.create_limiter = SlidingWindowLimiter(options.create_limit, CREATE_WINDOW_SECONDS)
        self.query_limiter = SlidingWindowLimiter(options.query_limit, QUERY_WINDOW_SECONDS)
        self.by_key: dict[str, dict[str, int]] = {}
        self.generation = 0

    def key_stats(self, key: str) -> dict[str, int]:
        """The counters of one bearer key (creates, queries, rateLimited), made on first use."""
        found = self.by_key.get(key)
        if found is None:
            found = self.by_key[key] = {"creates": 0, "queries": 0, "rateLimited": 0}
        return found

    def reset(self) -> None:
        """Forget tasks, stats and rate windows, and put the balance back to ``options.credits``."""
        self.tasks.clear()
        self.stats = SimStats()
        self.balance = self.options.credits
        self.create_limiter.clear()
        self.query_limiter.clear()
        self.by_key.clear()
        self.generation += 1

    def try_spend(self, amount: float) -> bool:
        """Take ``amount`` credits from the balance, or return False (and take nothing) if it is short."""
        if self.balance < amount:
            return False
        self.balance -= amount
        return True

    def add(self, task: SimTask) -> None:
        """Store an accepted task and count the create."""
        self.tasks[task.task_id] = task
        self.stats.creates += 1
        self.key_stats(task.key)["creates"] += 1

    def is_current(self, task: SimTask, generation: int) -> bool:
        """True when ``task`` is still stored and no reset happened since ``generation``."""
        return generation == self.generation and self.tasks.get(task.task_id) is task

    def snapshot(self) -> dict[str, object]:
        """The body of ``GET /__sim/stats``."""
        now = self.clock()
        stats = self.stats
        return {
            "creates": stats.creates,
            "queries": stats.queries,
            "rateLimited": stats.rate_limited,
            "callbacksSent": stats.callbacks_sent,
            "callbacksFailed": stats.callbacks_failed,
            "callbackAttempts": stats.callback_attempts,
            "keys": {k: dict(v) for k, v in self.by_key.items()},
            "tasks": {
                task_id: {
                    "queries": task.queries,
                    "state": task.state(now),
                    "prompt": task.prompt,
                    "model": task.model,
                    "family": task.family,
                    "key": task.key,
                    # Epoch seconds: when the task was accepted and when it reaches (or reached) its end state.
                    "createdAt": task.created_at,
                    "finishedAt": task.finished_at,
                }
                for task_id, task in self.tasks.items()
            },
        }
