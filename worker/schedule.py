"""When to look at a task next: pure functions of its age, so they are tested without clocks or Redis.

Without callbacks polling is the only way to learn that a task ended, so it follows the provider's advice: every
2-3 s for the first 30 s, 5-10 s until 2 min, then 15-30 s. With callbacks a poll is only a safety net for a lost
callback: the first near the model's typical duration, then every 30-60 s. Every delay carries jitter so that
tasks submitted together do not poll together, and none runs past the task's deadline (the step there settles).
``age`` is measured from the task's submission, so time spent queued counts: a task that waited long for a create
token is polled a little less eagerly, which is harmless.

The provider allows ``KIE_QUERY_LIMIT`` status queries a second for all workers together, so the schedule also
stretches with the number of tasks running: one round of polls of every running task must fit in half that budget
(the other half is for callbacks' checks and fresh tasks). Else 10,000 tasks polled every 30-60 s would want
170-330 queries a second against 10, and the steps would spin on an empty budget.
"""

from __future__ import annotations

import random

# How long a create call may be in flight before its intent is presumed dead (the worker crashed mid-call).
INTENT_GRACE_SECONDS = 5.0
# The share of the provider's query budget that scheduled polls may plan to use.
POLL_SHARE = 0.5


def first_check(callbacks: bool, typical_seconds: float, rnd: random.Random | None = None) -> float:
    """Seconds from the create to the first status query."""
    r = rnd or random
    if callbacks:
        return max(2.0, typical_seconds) * r.uniform(1.0, 1.1)
    return r.uniform(2.0, 3.0)


def next_check(
    age: float,
    callbacks: bool,
    rnd: random.Random | None = None,
    running: int = 0,
    query_limit: int = 10,
) -> float:
    """Seconds until the next status query of a task still pending ``age`` seconds after submission, with
    ``running`` tasks at the provider sharing ``query_limit`` queries a second."""
    r = rnd or random
    if callbacks:
        delay = r.uniform(30.0, 60.0)
    elif age < 30.0:
        delay = r.uniform(2.0, 3.0)
    elif age < 120.0:
        delay = r.uniform(5.0, 10.0)
    else:
        delay = r.uniform(15.0, 30.0)
    round_of_polls = running / (max(1, query_limit) * POLL_SHARE)
    return max(delay, round_of_polls * r.uniform(1.0, 1.5))


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
