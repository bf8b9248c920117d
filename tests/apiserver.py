"""The API served in-process by a real uvicorn on a free port, an httpx client for it, and the helpers of the API
tests (the fixtures ``api_settings``, ``api`` and ``client`` in conftest.py use it).

Everything is real except the process boundary: Postgres, Redis and HTTP. These tests use their own queue name
(``<session queue>:api``), so no worker started by other tests ever sees their tasks, which therefore stay
``queued`` until a test moves them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import uvicorn
from starlette.applications import Starlette

from api.app import create_app
from shared.config import Settings

ADMIN = {"Authorization": "Bearer admin-secret"}
IMAGE = "google/nano-banana"  # cost 4
VIDEO = "kling/v2-1-standard"  # cost 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job(prompt: str = "a lighthouse at dawn", model: str = IMAGE, **extra: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": prompt}, **extra}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # pytest owns the process's signals; this server stops when the fixture says so.
        yield


@dataclass
class Api:
    url: str
    app: Starlette
    settings: Settings
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def serve(settings: Settings, app: Starlette | None = None) -> AsyncIterator[Api]:
    """Serve ``app`` (default: ``create_app(settings)``) on a free port until the block ends."""
    app = app or create_app(settings)
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            yield Api(url, app, settings, client)
    finally:
        server.should_exit = True
        await task


async def balance(pool: asyncpg.Pool, account_id: str) -> tuple[int, int]:
    """(balance, held) straight from Postgres."""
    r = await pool.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", account_id)
    assert r is not None
    return int(r["balance"]), int(r["held"])


async def task_count(pool: asyncpg.Pool, account_id: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM tasks WHERE account_id = $1", account_id))


def error_of(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the one error shape with this status and code; returns the error object."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str)
    assert error["message"]
    return error
