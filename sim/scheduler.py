"""A single heap-ordered timer loop: run a plain function at a given epoch time.

One asyncio task serves every pending timer (task completions, callback retries), so 10,000 in-flight tasks
cost 10,000 heap entries rather than 10,000 sleeping coroutines. Actions run on the event loop and must not
block; an action that raises is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

Action = Callable[[], None]


class Scheduler:
    """Runs actions at (or just after) their due time, in due-time order, ties in insertion order."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Action]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, due: float, action: Action) -> None:
        """Run ``action`` at epoch time ``due`` (at once, on the next turn of the loop, if already past)."""
        entry = (due, next(self._seq), action)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry and self._wake is not None:
            self._wake.set()

    def clear(self) -> None:
        """Drop every pending action."""
        self._heap.clear()
        if self._wake is not None:
            self._wake.set()

    def run_due(self) -> int:
        """Run every action that is due now; return how many ran."""
        ran = 0
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, action = heapq.heappop(self._heap)
            ran += 1
            try:
                action()
            except Exception:
                log.exception("sim.scheduler.action_failed")
        return ran

    async def run(self) -> None:
        """Serve the timers until cancelled."""
        wake = self._wake = asyncio.Event()
        try:
            while True:
                self.run_due()
                wake.clear()
                delay = self._heap[0][0] - self._clock() if self._heap else None
                if delay is not None and delay <= 0:
                    await asyncio.sleep(0)  # let other work run between large batches
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
        finally:
            self._wake = None
