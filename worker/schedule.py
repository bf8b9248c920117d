"""When to look at a task next: pure functions of its age, so they are tested without clocks or Redis.

Without callbacks polling is the only way to learn that a task ended, so it follows the provider's advice: every
2-3 s for the first 30 s, 5-10 s until 2 min, then 15-30 s. With callbacks a poll is only a safety net for a lost
callback: the first near the model's typical duration, then every 30-60 s. Every delay carries jitter so that
tasks submitted together do not poll together, and none runs past the task's deadline (the step there settles).
``age`` is measured from the task's submission, so time spent queued counts: a task that waited long for a create
token is polled a little less eagerly, which is harmless.
"""

from __future__ import annotations

import random

# How long a create call may be in flight before its intent is presumed dead (the worker crashed mid-call).
INTENT_GRACE_SECONDS = 5.0


def first_check(callbacks: bool, typical_seconds: float, rnd: random.Random | None = None) -> float:
    """Seconds from the create to the first status query."""
    r = rnd or random
    if callbacks:
        return max(2.0, typical_seconds) * r.uniform(1.0, 1.1)
    return r.uniform(2.0, 3.0)


def next_check(age: float, callbacks: bool, rnd: random.Random | None = None) -> float:
    """Seconds until the next status query of a task still pending ``age`` seconds after submission."""
    r = rnd or random
    if callbacks:
        return r.uniform(30.0, 60.0)
    if age < 30.0:
        return r.uniform(2.0, 3.0)
    if age < 120.0:
        return r.uniform(5.0, 10.0)
    return r.uniform(15.0, 30.0)


def backoff(attempt: int, base: float = 1.0, cap: float = 60.0, rnd: random.Random | None = None) -> float:
    """Exponential backoff with jitter for the ``attempt``-th consecutive failure (1-based): uniform in
    [d/2, d] where d = min(cap, base * 2**(attempt-1))."""
    r = rnd or random
    d = min(cap, base * 2.0 ** max(0, min(attempt, 32) - 1))
    return r.uniform(d / 2, d)


def bounded(delay: float, until_deadline: float) -> float:
    """``delay`` cut so the task is looked at again just after its deadline (where it settles), never before
    0.1 s from now."""
    return max(0.1, min(delay, until_deadline + 0.5))
