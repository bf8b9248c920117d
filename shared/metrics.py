"""Every Prometheus metric creditq counts (the definitions: a leaf that imports nothing of creditq's).

The API and the workers increment these; how a worker's figures reach the API's ``GET /metrics`` is
:mod:`shared.fleet_metrics`, and the gauges computed at scrape time are :mod:`shared.scrape_state`.

Names: counters end in ``_total``; durations are histograms in seconds; scrape-time gauges carry no suffix.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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

# --- Helpers for the instrumented code ------------------------------------------------------------------------


def observe_provider_call(endpoint: str, code: int | None, outcome: str, seconds: float) -> None:
    """Count one provider call (and a 429 as rate limited) and record its latency."""
    PROVIDER_CALLS.labels(endpoint, "none" if code is None else str(code), outcome).inc()
    PROVIDER_CALL_SECONDS.labels(endpoint, outcome).observe(seconds)
    if code == 429:
        PROVIDER_RATE_LIMITED.labels(endpoint).inc()
