"""``python -m bench.streams [--streams N]``: what open status streams (``GET /v1/jobs/{taskId}/events``) cost
one API process: the Postgres connections it holds, and its memory per open stream.

One ``creditq api`` process (the benchmark's own database and Redis database, see bench/env.py); N queued tasks;
N streams opened at once, each following its own task. Measured while they are all open and idle: the API's
connections to its database (``pg_stat_activity``), its resident memory (RSS) against before they opened. Then
every task is canceled and the time until every stream has had its ``canceled`` event and ended is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import asyncpg
import httpx

from bench.env import Bench, Proc, create_accounts, log, tree_rss
from tests.sse import events


async def _connections(database_url: str) -> tuple[int, int]:
    """(connections to the database other than this one, of which LISTENing)."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE query LIKE 'LISTEN%cq_task_events%') AS listening FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert row is not None
        return int(row["n"]), int(row["listening"])
    finally:
        await conn.close()


async def run(bench: Bench, api: Proc, n: int) -> dict[str, float]:
    """Open ``n`` streams on ``api`` and measure (module docstring)."""
    (key,) = await create_accounts(bench.database_url, 1)
    auth = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=n + 64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=api.url, timeout=120, limits=limits) as client:
        ids: list[str] = []
        for start in range(0, n, 100):
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/v1/jobs", json={"model": "google/nano-banana", "input": {"prompt": f"s{i}"}}, headers=auth
                    )
                    for i in range(start, min(n, start + 100))
                )
            )
            ids += [a.json()["taskId"] for a in answers]
        await asyncio.sleep(1.0)
        rss_before = tree_rss(api.pid)
        pg_before, _ = await _connections(bench.database_url)
        first = [asyncio.Event() for _ in ids]
        ended: list[float] = []

        async def follow(task_id: str, opened: asyncio.Event) -> list[str]:
            seen: list[str] = []
            async with client.stream("GET", f"/v1/jobs/{task_id}/events", headers=auth) as resp:
                async for e in events(resp):
                    if e.comment is None:
                        seen.append(str(e.id))
                        opened.set()
            ended.append(time.monotonic())
            return seen

        opening = time.monotonic()
        followers = [asyncio.create_task(follow(t, o)) for t, o in zip(ids, first, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in first)), 120)
        opened_in = time.monotonic() - opening
        await asyncio.sleep(2.0)  # idle, all open
        rss_open = tree_rss(api.pid)
        pg_open, listening = await _connections(bench.database_url)
        canceling = time.monotonic()
        for start in range(0, n, 100):
            await asyncio.gather(*(client.post(f"/v1/jobs/{t}/cancel", headers=auth) for t in ids[start : start + 100]))
        seen = await asyncio.wait_for(asyncio.gather(*followers), 120)
        all_ended_in = max(ended) - canceling
    complete = sum(1 for s in seen if s == ["queued", "canceled"])
    return {
        "streams": n,
        "streams_complete": complete,
        "open_seconds": round(opened_in, 2),
        "pg_connections_before": pg_before,
        "pg_connections_open": pg_open,
        "listening_connections": listening,
        "rss_mib_before": round(rss_before / 2**20, 1),
        "rss_mib_open": round(rss_open / 2**20, 1),
        "kib_per_stream": round((rss_open - rss_before) / n / 1024, 1),
        "cancel_to_all_ended_seconds": round(all_ended_in, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    p.add_argument("--streams", type=int, default=1000)
    args = p.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the API process inherits it: one socket per stream
    log(f"streams: {args.streams} open at once on one API process")
    with Bench() as bench:
        bench.setup()
        api = bench.api(bench.queue("streams"))
        result = asyncio.run(run(bench, api, args.streams))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
