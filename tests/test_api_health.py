"""``GET /healthz`` and ``GET /readyz``: liveness, and readiness naming what is down or degraded."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis.asyncio as aioredis

from shared.config import Settings
from shared.provider_budget import circuit_key
from tests.apiserver import Api, bearer, error_of, free_port, serve
from tests.conftest import MakeAccount


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_ready_when_everything_is_up(api: Api) -> None:
    r = await api.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok", "provider": "ok"}}


async def test_open_circuit_is_degraded_but_ready(api: Api, redis: aioredis.Redis) -> None:
    # Any provider key's circuit makes it degraded (here the only key's).
    key = circuit_key(api.settings)
    await redis.set(key, "out of credits", px=60_000)
    try:
        r = await api.client.get("/readyz")
    finally:
        await redis.delete(key)
    assert r.status_code == 200
    assert r.json() == {"status": "degraded", "checks": {"postgres": "ok", "redis": "ok", "provider": "circuit_open"}}
    assert (await api.client.get("/readyz")).json()["status"] == "ok"


async def test_both_down_names_both(api_settings: Settings) -> None:
    down = dataclasses.replace(
        api_settings,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/creditq",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    async with serve(down) as local:
        assert (await local.client.get("/healthz")).status_code == 200
        r = await local.client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "down", "checks": {"postgres": "down", "redis": "down", "provider": "unknown"}}


class Outage:
    """A TCP relay to Postgres that can be cut and restored: Postgres "down" and "up" for the app behind it."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.writers):
            w.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def wait_ready(client: httpx.AsyncClient, status: int, timeout: float = 15) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get("/readyz")
        if r.status_code == status or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.2)


async def test_postgres_outage_and_recovery(api_settings: Settings, make_account: MakeAccount) -> None:
    """Starts with Postgres unreachable, serves once it is reachable, answers 503 (not 500) while it is cut
    under open connections, and recovers again; never a restart."""
    _, key = await make_account(credits=10)
    parts = urlsplit(api_settings.database_url)
    relay = Outage(free_port(), (parts.hostname or "127.0.0.1", parts.port or 5432))
    relayed = dataclasses.replace(
        api_settings, database_url=urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{relay.port}"))
    )
    async with serve(relayed) as local:
        error_of(await local.client.get("/v1/account", headers=bearer(key)), 503, "unavailable")
        await relay.up()
        assert (await wait_ready(local.client, 200)).status_code == 200
        assert (await local.client.get("/v1/account", headers=bearer(key))).status_code == 200
        await relay.down()
        for _ in range(3):
            error_of(await local.client.get("/v1/account", headers=bearer(key)), 503, "unavailable")
        assert (await local.client.get("/readyz")).json()["checks"]["postgres"] == "down"
        await relay.up()
        assert (await wait_ready(local.client, 200)).status_code == 200
        assert (await local.client.get("/v1/account", headers=bearer(key))).status_code == 200
        await relay.down()
