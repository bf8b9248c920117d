"""Small statistics used by every benchmark: percentiles of one sample, medians across repeats."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank on the sorted values); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return float(s[i])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def steady_rate(done: Sequence[float]) -> float:
    """Completions per second between the 10th and the 90th percentile of the completion times: the steady state,
    without the start-up ramp or the tail."""
    if len(done) < 10:
        return 0.0
    d = sorted(done)
    lo, hi = round(0.1 * (len(d) - 1)), round(0.9 * (len(d) - 1))
    span = d[hi] - d[lo]
    return (hi - lo) / span if span > 0 else 0.0


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None
