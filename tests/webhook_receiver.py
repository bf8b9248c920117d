"""A small real HTTP receiver for client webhooks: it records every request (headers, body, when) and answers
as the test scripts it (a status per request, or hang without answering)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

HANG = -1  # an "answer" that never comes


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    target: str


@dataclass
class Receiver:
    host: str
    port: int
    script: list[int] = field(default_factory=list)  # answers in order; then `default`
    default: int = 200
    location: str | None = None  # sent with a 3xx answer
    got: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks/creditq"

    async def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Until ``count`` requests have arrived (AssertionError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(self.got)} of {count} webhook requests arrived in {timeout}s")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.2))
        return self.got

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.got.append(Received(headers, body, time.monotonic(), target))
            self.arrived.set()
            status = self.script.pop(0) if self.script else self.default
            if status == HANG:
                await asyncio.sleep(3600)
            extra = f"Location: {self.location}\r\n" if self.location and 300 <= status < 400 else ""
            writer.write(f"HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def receiver(host: str = "127.0.0.1", port: int = 0, **kwargs: object) -> AsyncIterator[Receiver]:
    """A receiver listening on ``host:port`` (0: a free port) until the block ends."""
    box: list[Receiver] = []
    handlers: set[asyncio.Task[object]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        handlers.add(me)
        try:
            await box[0]._handle(reader, writer)
        finally:
            handlers.discard(me)

    server = await asyncio.start_server(handle, host, port)
    box.append(Receiver(host, int(server.sockets[0].getsockname()[1]), **kwargs))  # type: ignore[arg-type]
    try:
        yield box[0]
    finally:
        server.close()
        for t in list(handlers):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)
