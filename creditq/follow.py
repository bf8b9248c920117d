"""Follow a task to its end: the API's live stream ``GET /v1/jobs/{taskId}/events`` (Server-Sent Events, read
with httpx-sse), or polling ``GET /v1/jobs/{taskId}`` when the stream is unavailable.

The stream sends an event ``status`` whose data is the task view, at once and at every change, and ends after a
terminal state. It counts as unavailable when the API answers 404/405/406 or anything but ``text/event-stream``
(an older API), or when :data:`STREAM_ATTEMPTS` connections in a row fail or end without an event; the follow
then polls every :data:`POLL_SECONDS`. A stream that ends early after some events is reopened with
``Last-Event-ID``. On a terminal a rich progress line shows a spinner (a bar once the provider reports
``progress``), the status and the elapsed time; elsewhere one plain line per change of status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

TERMINAL = ("succeeded", "failed", "canceled")
POLL_SECONDS = 1.0
STREAM_ATTEMPTS = 3
# The server sends a keep-alive comment on an idle stream; a read that waits this long reconnects.
STREAM_READ_TIMEOUT = 60.0
UNAVAILABLE = (404, 405, 406, 501)


class _Display:
    """The progress line (a terminal) or one printed line per change of status (a pipe, a log)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.last: tuple[str, Any] | None = None
        self.progress: Progress | None = None
        self.bar: TaskID | None = None

    @contextmanager
    def shown(self) -> Iterator[_Display]:
        if self.console.is_terminal:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[status]:<9}[/]"),
                BarColumn(),
                TextColumn("{task.fields[pct]:>4}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"),
                console=self.console,
            )
            self.bar = self.progress.add_task("job", total=None, status="", pct="", note="")
            with self.progress:
                yield self
        else:
            yield self

    def note(self, text: str) -> None:
        """Say how the task is followed (stream or polling)."""
        if self.progress is not None and self.bar is not None:
            self.progress.update(self.bar, note=text)
        else:
            self.console.print(f"  ({text})", markup=False)

    def update(self, task: dict[str, Any]) -> None:
        status, pct = str(task.get("status")), task.get("progress")
        if self.progress is not None and self.bar is not None:
            value = float(pct) if isinstance(pct, int | float) else None
            self.progress.update(
                self.bar,
                status=status,
                total=100 if value is not None or status in TERMINAL else None,
                completed=value if value is not None else (100 if status == "succeeded" else 0),
                pct=f"{value:.0f}%" if value is not None else "",
            )
        elif (status, pct) != self.last:
            extra = f" {pct:.0f}%" if isinstance(pct, int | float) else ""
            self.console.print(f"  {status:<9} {time.monotonic() - self.started:5.0f}s{extra}", markup=False)
        self.last = (status, pct)


def follow(http: httpx.Client, task: dict[str, Any], console: Console) -> dict[str, Any]:
    """Follow ``task`` (a task view) until it is terminal; returns the terminal view.

    Raises ApiError (creditq.client) when the API refuses a poll, KeyboardInterrupt on Ctrl-C (the caller says
    what that means). Reads only; never changes the task."""
    display = _Display(console)
    with display.shown():
        display.update(task)
        if task["status"] in TERMINAL:
            return task
        streamed = _stream(http, task, display)
        if streamed is not None:
            return streamed
        display.note(f"polling every {POLL_SECONDS:g} s: the live stream is unavailable")
        return _poll(http, task, display)


def _stream(http: httpx.Client, task: dict[str, Any], display: _Display) -> dict[str, Any] | None:
    """The terminal view from the stream, or None when the stream is unavailable (the caller polls)."""
    from creditq.client import ApiError

    path = f"/v1/jobs/{task['taskId']}/events"
    last_id: str | None = None
    failures = 0
    noted = False
    timeout = httpx.Timeout(http.timeout.connect, read=STREAM_READ_TIMEOUT)
    while failures < STREAM_ATTEMPTS:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        got = False
        try:
            with connect_sse(http, "GET", path, headers=headers, timeout=timeout) as source:
                resp = source.response
                kind = resp.headers.get("content-type", "")
                if resp.status_code in UNAVAILABLE or (resp.status_code == 200 and "text/event-stream" not in kind):
                    return None
                if resp.status_code != 200:
                    resp.read()
                    raise ApiError(resp)
                if not noted:
                    display.note("live stream")
                    noted = True
                for event in source.iter_sse():
                    if event.event != "status" or not event.data:
                        continue
                    got = True
                    last_id = event.id or last_id
                    task = json.loads(event.data)
                    display.update(task)
                    if task["status"] in TERMINAL:
                        return task
        except httpx.ReadTimeout:
            got = True  # an idle stream without keep-alives: reopen it, no failure
        except (httpx.TransportError, SSEError, ValueError):
            pass
        failures = 0 if got else failures + 1
        if failures:
            time.sleep(min(POLL_SECONDS * failures, 3.0))
    return None


def _poll(http: httpx.Client, task: dict[str, Any], display: _Display) -> dict[str, Any]:
    from creditq.client import ApiError

    errors = 0
    while task["status"] not in TERMINAL:
        time.sleep(POLL_SECONDS)
        try:
            resp = http.get(f"/v1/jobs/{task['taskId']}")
        except httpx.TransportError:
            errors += 1  # the API restarting: keep trying for a while
            if errors > 30:
                raise
            continue
        errors = 0
        if resp.status_code != 200:
            raise ApiError(resp)
        task = resp.json()
        display.update(task)
    return task
