"""Metrics: the worker snapshots merged into the API's ``/metrics``, and the whole path end to end.

The unit tests build registries of their own; the end-to-end test runs the simulator, the API and a worker as
real processes, runs a few tasks through them, and reads the worker's counters from the API's ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shared import fleet_metrics, scrape_state
from shared.ledger.stats import Gauges
from tests.apiserver import free_port
from tests.conftest import Processes

ADMIN = {"Authorization": "Bearer admin-secret"}
IMAGE = "google/nano-banana"  # cost 4


def _samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The sum of the samples named ``name`` whose labels include ``labels`` (None if there is none)."""
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


def _registry() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    finished = Counter("creditq_t_finished_total", "help", ["model", "status"], registry=registry)
    latency = Histogram("creditq_t_seconds", "help", ["endpoint"], buckets=(0.1, 1.0), registry=registry)
    Counter("python_ignored_total", "not pushed", registry=registry).inc()
    return registry, finished, latency


def test_snapshot_keeps_only_creditq_and_process_families() -> None:
    registry, finished, latency = _registry()
    finished.labels("m", "succeeded").inc(3)
    latency.labels("/x").observe(0.5)
    names = {f["n"] for f in fleet_metrics.snapshot(registry)}
    assert names == {"creditq_t_finished", "creditq_t_seconds"}


def test_worker_snapshots_merge_into_one_family_per_name() -> None:
    """API and worker samples of one metric come out as one family (one # TYPE line), the worker's labelled."""
    api, api_finished, _ = _registry()
    api_finished.labels("m", "canceled").inc()
    w1, w1_finished, w1_latency = _registry()
    w1_finished.labels("m", "succeeded").inc(2)
    w1_latency.labels("/x").observe(0.5)
    w2, w2_finished, _ = _registry()
    w2_finished.labels("m", "succeeded").inc(5)
    workers = {"host:1": fleet_metrics.snapshot(w1), "host:2": fleet_metrics.snapshot(w2)}
    text = generate_latest(fleet_metrics.ClusterCollector(api, workers)).decode()

    assert text.count("# TYPE creditq_t_finished_total counter") == 1
    assert text.count("# TYPE creditq_t_seconds histogram") == 1
    samples = _samples(text)
    assert _value(samples, "creditq_t_finished_total", status="canceled") == 1
    canceled = [s for s in samples if s.name == "creditq_t_finished_total" and s.labels["status"] == "canceled"]
    assert "worker" not in canceled[0].labels  # the API's own sample
    assert _value(samples, "creditq_t_finished_total", status="succeeded", worker="host:1") == 2
    assert _value(samples, "creditq_t_finished_total", status="succeeded", worker="host:2") == 5
    assert _value(samples, "creditq_t_seconds_bucket", le="1.0", worker="host:1") == 1
    assert _value(samples, "creditq_t_seconds_count", worker="host:1") == 1


def test_a_snapshot_of_another_shape_is_skipped_not_fatal() -> None:
    workers: dict[str, list[dict[str, Any]]] = {"odd": [{"n": "creditq_bad", "t": "counter"}, {"nonsense": True}]}
    assert generate_latest(fleet_metrics.ClusterCollector(None, workers)) == b""


def test_scrape_time_gauges_render_and_name_unreadable_sources() -> None:
    state = scrape_state.OpsState(
        gauges=Gauges(
            queued=2,
            running=3,
            stuck=1,
            open_holds=5,
            open_hold_credits=20,
            pending_events=0,
            accounts=7,
            balance=100,
            held=20,
        ),
        errors={"redis": "ConnectionError: down"},
    )
    samples = _samples(scrape_state.render(None, state).decode())
    assert _value(samples, "creditq_tasks_in_flight", state="queued") == 2
    assert _value(samples, "creditq_tasks_in_flight", state="running") == 3
    assert _value(samples, "creditq_tasks_stuck") == 1
    assert _value(samples, "creditq_ledger_available_credits") == 80
    assert _value(samples, "creditq_state_source_up", source="postgres") == 1
    assert _value(samples, "creditq_state_source_up", source="redis") == 0
    assert _value(samples, "creditq_queue_depth") is None  # unknown is absent, never a made-up 0


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_the_api_serves_the_workers_metrics(procs: Processes) -> None:
    """Tasks run by a worker process show in the API's /metrics with the worker's label, next to the API's own
    counters and the scrape-time gauges."""
    sim = procs.sim("--time-scale", "0.1")
    port = free_port()
    public = {"CREDITQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    api = procs.api(env=public, port=port)
    procs.worker(env={**public, "KIE_TIMEOUT": "5"})
    with httpx.Client(base_url=api.url, timeout=10) as client:
        created = client.post("/v1/admin/accounts", json={"credits": 100, "tier": "pro"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        key = {"Authorization": f"Bearer {created.json()['apiKey']}"}
        prompts = ["a cat [sim:seconds=1]", "a dog [sim:seconds=1]", "a bird [sim:seconds=1] [sim:fail=500]"]
        ids = []
        for prompt in prompts:
            r = client.post("/v1/jobs", json={"model": IMAGE, "input": {"prompt": prompt}}, headers=key)
            assert r.status_code == 202, r.text
            ids.append(r.json()["taskId"])

        def ended() -> bool:
            return all(
                client.get(f"/v1/jobs/{i}", headers=key).json()["status"] in ("succeeded", "failed") for i in ids
            )

        _wait_for(ended, 40, "the tasks end")
        scraped: list[Sample] = []

        def worker_counted() -> bool:
            nonlocal scraped
            r = client.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            scraped = _samples(r.text)
            ok = _value(scraped, "creditq_tasks_finished_total", model=IMAGE, status="succeeded", reason="ok")
            failed = _value(scraped, "creditq_tasks_finished_total", model=IMAGE, status="failed")
            return (ok or 0) >= 2 and (failed or 0) >= 1

        _wait_for(worker_counted, 20, "the worker's counters in the API's /metrics")

    finished = [s for s in scraped if s.name == "creditq_tasks_finished_total" and s.labels["model"] == IMAGE]
    workers = {s.labels.get("worker") for s in finished}
    assert workers and None not in workers, finished  # settled by the worker, pushed with its label
    wid = next(iter(workers))
    assert wid is not None
    assert _value(scraped, "creditq_tasks_finished_total", status="failed", reason="provider_failed", worker=wid)
    # The API's own counters (no worker label) and the worker's, side by side.
    assert (_value(scraped, "creditq_tasks_submitted_total", model=IMAGE) or 0) >= 3
    assert (_value(scraped, "creditq_credits_held_total", model=IMAGE) or 0) >= 12
    assert (_value(scraped, "creditq_credits_captured_total", model=IMAGE, worker=wid) or 0) >= 8
    assert (_value(scraped, "creditq_credits_released_total", model=IMAGE, reason="provider_failed") or 0) >= 4
    assert (_value(scraped, "creditq_submit_seconds_count", status="202") or 0) >= 3
    create = _value(
        scraped,
        "creditq_provider_calls_total",
        endpoint="/api/v1/jobs/createTask",
        code="200",
        outcome="ok",
        worker=wid,
    )
    assert (create or 0) >= 3
    assert _value(scraped, "creditq_provider_call_seconds_count", endpoint="/api/v1/jobs/createTask", worker=wid)
    # Scrape-time state: Postgres, Redis, and the balance the worker polled at its start.
    assert _value(scraped, "creditq_tasks_in_flight", state="queued") is not None
    assert _value(scraped, "creditq_tasks_in_flight", state="running") is not None
    assert _value(scraped, "creditq_ledger_held_credits") is not None
    assert _value(scraped, "creditq_queue_depth") is not None
    assert _value(scraped, "creditq_provider_circuit_open") == 0
    assert (_value(scraped, "creditq_workers") or 0) >= 1
    assert (_value(scraped, "creditq_provider_credits") or 0) > 0
    assert _value(scraped, "creditq_state_source_up", source="postgres") == 1
    assert _value(scraped, "creditq_state_source_up", source="redis") == 1
    # Some worker of the session polled it (one per minute across the fleet, maybe not this one).
    assert _value(scraped, "creditq_provider_credits_polled_timestamp_seconds")
    assert httpx.get(f"{sim.url}/__sim/stats").json()["creates"] >= 3


def test_requests_carry_a_request_id(procs: Processes) -> None:
    """A sane X-Request-ID is echoed; a missing or odd one is replaced by a fresh id."""
    api = procs.api()
    with httpx.Client(base_url=api.url, timeout=10) as client:
        assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
        fresh = client.get("/healthz").headers["x-request-id"]
        assert len(fresh) == 32
        odd = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
        assert odd != "bad id\twith spaces" and len(odd) == 32
        assert client.get("/v1/nope").headers["x-request-id"]  # errors carry it too
