"""A small Server-Sent Events reader over httpx for the tests and the benchmark (events and comments)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)
    comment: str | None = None

    @property
    def data(self) -> Any:
        return json.loads("\n".join(self.data_lines))


async def events(resp: httpx.Response) -> AsyncIterator[Event]:
    """The events (and comment lines, as events with ``comment`` set) of an SSE response, until it ends."""
    current = Event()
    async for line in resp.aiter_lines():
        if line == "":
            if current.data_lines or current.id is not None:
                yield current
            current = Event()
            continue
        if line.startswith(":"):
            yield Event(comment=line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            current.data_lines.append(value)
    if current.data_lines:
        yield current
