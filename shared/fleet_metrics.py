"""How the workers' figures reach the API's ``GET /metrics`` (the metrics themselves: :mod:`shared.metrics`).

**The choice: worker metrics are pushed to Redis and served by the API.** Workers run anywhere (several hosts,
containers scaled by ``docker compose --scale``), have no HTTP port, and come and go; Prometheus should scrape one
stable target. So each worker process, every :data:`PUSH_SECONDS`, writes a snapshot of its own registry's
``creditq_*`` and ``process_*`` samples to Redis under ``{CREDITQ_QUEUE}:metrics:worker:<id>`` (JSON, expiring
after :data:`SNAPSHOT_TTL_SECONDS`, the id listed in the sorted set ``{CREDITQ_QUEUE}:metrics:workers``). The
API's ``/metrics`` renders, through one :class:`ClusterCollector`, its own registry plus every live worker
snapshot with a ``worker="<host>:<pid>"`` label, plus gauges computed at scrape time (:func:`shared.scrape_state.ops_state`): tasks in
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

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from shared import redis_keys
from shared.config import Settings

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
