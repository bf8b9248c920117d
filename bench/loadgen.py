"""The load generator: closed-loop HTTP/1.1 clients with keep-alive, one asyncio process each (uvloop if present).

It runs as a child process (``python -m bench.loadgen``) that stays up for the whole run and takes one JSON command
per stdin line, answering one JSON line on stdout, so that a measurement pays no interpreter start-up. Several of
them can share one measurement (``clients`` split between them, a common wall-clock start).

Two client implementations, so that the generator's own cost can be seen:

- ``raw``: a minimal HTTP/1.1 client on asyncio streams (pre-built request bytes, Content-Length framing). It costs
  a few tens of microseconds of CPU per request, so on a small machine it leaves the cores to the server.
- ``httpx``: ``httpx.AsyncClient``, what a Python user would write; several times the CPU per request.

Each client sends a request, waits for the whole answer, and sends the next (closed loop). A warm-up period
(connections opened, the server's pools filled) is not counted; a request counts when its answer arrives inside
the measured window, and its latency is from the first byte sent to the last byte received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Tally:
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_us: list[int] = field(default_factory=list)
    errors: int = 0
    responses: int = 0  # every answer, warm-up included
    sample_error: str = ""
    sample_body: str = ""


def build_requests(host: str, port: int, path: str, keys: list[str], body: bytes) -> list[bytes]:
    """One ready-to-send request per API key."""
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {k}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for k in keys
    ]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one HTTP/1.1 answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = -1
    chunked = False
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), keep_alive
    if length >= 0:
        return status, await reader.readexactly(length), keep_alive
    return status, await reader.read(), False


async def _raw_client(
    host: str, port: int, requests: list[bytes], ws: float, we: float, tally: Tally, rnd: random.Random
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= we:
                return
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(requests[rnd.randrange(len(requests))])
                status, body, keep = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                tally.errors += 1
                tally.sample_error = tally.sample_error or f"{type(e).__name__}: {e}"
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            t1 = time.perf_counter()
            tally.responses += 1
            if ws <= t1 < we:
                tally.statuses[status] = tally.statuses.get(status, 0) + 1
                tally.latencies_us.append(int((t1 - t0) * 1e6))
                if status >= 300 and not tally.sample_body:
                    tally.sample_body = body[:300].decode(errors="replace")
            if not keep:
                assert writer is not None
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _httpx_clients(
    url: str, path: str, keys: list[str], body: bytes, clients: int, ws: float, we: float, tally: Tally
) -> None:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one(rnd: random.Random) -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= we:
                    return
                key = keys[rnd.randrange(len(keys))]
                try:
                    r = await client.post(
                        path,
                        content=body,
                        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
                    )
                except httpx.HTTPError as e:
                    tally.errors += 1
                    tally.sample_error = tally.sample_error or f"{type(e).__name__}: {e}"
                    await asyncio.sleep(0.01)
                    continue
                t1 = time.perf_counter()
                tally.responses += 1
                if ws <= t1 < we:
                    tally.statuses[r.status_code] = tally.statuses.get(r.status_code, 0) + 1
                    tally.latencies_us.append(int((t1 - t0) * 1e6))
                    if r.status_code >= 300 and not tally.sample_body:
                        tally.sample_body = r.text[:300]

        await asyncio.gather(*(one(random.Random(i)) for i in range(clients)))


_KEYS: dict[str, list[str]] = {}


async def run(cmd: dict[str, Any]) -> dict[str, Any]:
    """One measurement: ``clients`` closed-loop clients from ``start_at`` (epoch seconds) for ``warmup`` + ``seconds``."""
    url: str = cmd["url"]
    path: str = cmd.get("path", "/v1/jobs")
    keys_file: str = cmd["keys_file"]
    if keys_file not in _KEYS:
        _KEYS[keys_file] = json.loads(Path(keys_file).read_text())
    keys = _KEYS[keys_file]
    if cmd.get("hot"):
        keys = keys[:1]
    body = json.dumps(cmd["body"], separators=(",", ":")).encode()
    clients = int(cmd["clients"])
    delay = float(cmd["start_at"]) - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    ws = t0 + float(cmd.get("warmup", 1.0))
    we = ws + float(cmd["seconds"])
    tally = Tally()
    if cmd.get("client", "raw") == "httpx":
        await _httpx_clients(url, path, keys, body, clients, ws, we, tally)
    else:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        requests = build_requests(host, port, path, keys, body)
        seed = int(cmd.get("seed", 0))
        await asyncio.gather(
            *(_raw_client(host, port, requests, ws, we, tally, random.Random(seed * 1000 + i)) for i in range(clients))
        )
    t1 = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {
        "statuses": {str(k): v for k, v in tally.statuses.items()},
        "errors": tally.errors,
        "responses": tally.responses,
        "sample_error": tally.sample_error,
        "sample_body": tally.sample_body,
        "latencies_us": tally.latencies_us,
        "seconds": float(cmd["seconds"]),
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(t1 - t0, 3),
    }


def main() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                result = loop.run_until_complete(run(json.loads(line)))
            except Exception as e:
                result = {"fatal": f"{type(e).__name__}: {e}"}
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        loop.close()


if __name__ == "__main__":
    main()


class Generators:
    """``procs`` load-generator processes, kept up for the whole run; :meth:`run` splits ``clients`` between them."""

    def __init__(self, procs: int) -> None:
        import subprocess

        root = Path(__file__).resolve().parent.parent
        self._popens = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=root,
                start_new_session=True,
            )
            for _ in range(procs)
        ]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._popens]

    def run(self, cmd: dict[str, Any], clients: int) -> dict[str, Any]:
        """One measurement with ``clients`` clients in all; returns the merged tallies."""
        n = max(1, min(len(self._popens), clients))
        share = [clients // n + (1 if i < clients % n else 0) for i in range(n)]
        start_at = time.time() + 0.3
        for i, (p, c) in enumerate(zip(self._popens[:n], share, strict=True)):
            assert p.stdin is not None
            p.stdin.write(json.dumps({**cmd, "clients": c, "start_at": start_at, "seed": i + 1}) + "\n")
            p.stdin.flush()
        parts = []
        for p in self._popens[:n]:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("a load generator died")
            part = json.loads(line)
            if "fatal" in part:
                raise RuntimeError(f"load generator: {part['fatal']}")
            parts.append(part)
        statuses: dict[str, int] = {}
        lat: list[int] = []
        for part in parts:
            for k, v in part["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
            lat.extend(part["latencies_us"])
        return {
            "statuses": statuses,
            "errors": sum(p["errors"] for p in parts),
            "responses": sum(p["responses"] for p in parts),
            "sample_error": next((p["sample_error"] for p in parts if p["sample_error"]), ""),
            "sample_body": next((p["sample_body"] for p in parts if p["sample_body"]), ""),
            "latencies_us": lat,
            "seconds": parts[0]["seconds"],
            "cpu_seconds": sum(p["cpu_seconds"] for p in parts),
            "procs": n,
        }

    def close(self) -> None:
        import subprocess

        for p in self._popens:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        for p in self._popens:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
