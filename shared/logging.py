"""The one logger setup: structlog, JSON lines in production, readable lines on a terminal.

Call :func:`configure` once per process (the CLI does). Every module logs through
``structlog.get_logger("creditq.<package>")``, its own package dotted (``creditq.api``, ``creditq.worker``,
``creditq.shared``, ``creditq.shared.ledger``), and binds context (``task_id``, ``account_id``, ``request_id``...)
per call or with ``structlog.contextvars``. Event names are dotted, ``<subject>.<what happened>``
(``task.queued``, ``money.capture``, ``request.internal_error``): ``jq 'select(.event | startswith("task."))'``
follows one subject.
creditq's own lines are rendered by structlog itself (its level filtered before any processor runs, JSON by orjson)
and never pass through stdlib ``logging``, which costs several times more per line; standard-library loggers
(arq, uvicorn, asyncio) go through the same processors and renderer, and both write through one writer, so a
process prints one format, one whole line at a time.
A line logged with a traceback (``log.exception``, a 500) carries it: as structured data in JSON
(``"exception": [{"exc_type", "exc_value", "frames": [...]}]``, without frame locals, scrubbed like every value),
as text on the console.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from typing import TextIO, cast

import orjson
import structlog

from shared.config import Settings

# Keys never written to a log line, whatever a caller binds.
_SECRET_KEYS = frozenset({"api_key", "apikey", "token", "secret", "authorization", "password", "callback_token"})


# Secrets inside values: a bearer credential, a creditq API key, a ``token=``/``key=`` query parameter (the
# provider's callback URL carries the task's token; a client's callback URL may carry anything).
_SECRET_VALUES = re.compile(
    r"(?P<bearer>\b[Bb]earer\s+)[^\s\"',]+"
    r"|(?P<cq>\bcq_)[A-Za-z0-9_\-]{16,}"
    r"|(?P<param>[?&;](?:token|api_?key|apikey|key|secret|signature|sig|access_token)=)[^&#\s\"']+",
    re.IGNORECASE,
)


def _scrub(text: str) -> str:
    """``text`` with every secret-looking value replaced by ``[redacted]`` (what precedes it is kept)."""
    if "=" not in text and "cq_" not in text and "earer" not in text and "EARER" not in text:
        return text  # the common case, without the regex: this runs on every string of every line
    return _SECRET_VALUES.sub(lambda m: (m.group("bearer") or m.group("cq") or m.group("param")) + "[redacted]", text)


def _drop_secrets(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
    """Redact secret keys whatever their value, and secret-looking parts of every string value (a log line must
    never carry an API key, the admin token or a callback token, whoever logged it)."""
    for key, value in list(event.items()):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str) and value:
            event[key] = _scrub(value)
    return event


def _scrubbed(value: object) -> object:
    """``value`` with every string inside it (nested dicts and lists) scrubbed of secret-looking parts."""
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def _scrub_exception(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
    """Scrub the structured traceback as every other value: an exception's message may quote a URL with a token."""
    if "exception" in event:
        event["exception"] = _scrubbed(event["exception"])
    return event


# The traceback of a line logged with exc_info (log.exception, a 500), as structured JSON: ``"exception": [{
# "exc_type", "exc_value", "frames": [{"filename", "lineno", "name", ...}], ...}]``. Without frame locals: they
# may hold API keys and tokens, and no scrubber can know every shape they take.
_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False, max_frames=50)
)


class _Lines:
    """The one writer of a process's log lines: structlog's own loggers and the stdlib handler both write through
    it, so a line from either is written whole, under one lock, and never interleaved with another. Its stream is
    set by :func:`configure`, so a logger cached before a reconfiguration writes where the last one said."""

    def __init__(self) -> None:
        self.stream: TextIO = sys.stderr
        # Reentrant: a signal handler that logs while this thread is writing must not deadlock.
        self._lock = threading.RLock()

    def msg(self, line: str) -> None:
        """Write ``line`` and a newline, then flush (one line per write, as the stdlib handler does). A stream that
        cannot be written (closed, a broken pipe) loses the line and never fails the caller: a log line runs after
        commits, in the money path, as stdlib logging's handlers never raise either."""
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    # structlog calls the wrapped logger's method of the line's level name.
    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


_LINES = _Lines()


def _lines_factory(*_: object) -> _Lines:
    return _LINES


class _Handler(logging.Handler):
    """Stdlib records (arq, uvicorn, asyncio), formatted by the same processor chain and renderer as structlog's own
    lines, written through the same writer."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _LINES.msg(self.format(record))
        except Exception:
            self.handleError(record)


def _dumps(obj: object, default: Callable[[object], object]) -> str:
    """JSON of a line's event dict, compact, by orjson; a value orjson refuses (an int past 64 bits) falls back to
    the standard library for that line, compact too, rather than lose the line."""
    try:
        return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(obj, default=default, separators=(",", ":"))


def _console_traceback(sio: TextIO, exc_info: structlog.typing.ExcInfo) -> None:
    """A traceback on the console: plain text, without frame locals (structlog's default there is rich's, with
    them, and a local may hold an API key or a token), scrubbed as every value is."""
    buf = io.StringIO()
    structlog.dev.plain_traceback(buf, exc_info)
    sio.write(_scrub(buf.getvalue()))


def configure(settings: Settings, stream: object = None) -> None:
    """Configure structlog and stdlib logging for this process. Idempotent: a second call reconfigures.

    structlog's own lines (every ``log.info(...)`` of creditq's) never pass through stdlib ``logging``: their level
    is filtered before any processor runs (``make_filtering_bound_logger``), then the processors and the renderer
    run and the line is written. Stdlib records take the same processors (``foreign_pre_chain``) and renderer
    through a ``ProcessorFormatter``. Both write through one writer to ``stream`` (stderr by default)."""
    out = cast(TextIO, stream or sys.stderr)
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=_console_traceback)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,  # type: ignore[list-item]
    ]
    # JSON lines carry the traceback as data; the console renderer prints it as text by itself.
    tracebacks: list[structlog.types.Processor] = [_TRACEBACKS, _scrub_exception] if fmt == "json" else []  # type: ignore[list-item]
    level = getattr(logging, settings.log_level.upper())
    _LINES.stream = out
    structlog.configure(
        processors=[*shared, *tracebacks, renderer],
        logger_factory=_lines_factory,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tracebacks, renderer],
    )
    handler = _Handler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log is one line per request: noise next to our own request lines.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every request URL at INFO: ours are logged once, with context, by the provider client, and a
    # client's callback URL may carry its secrets.
    logging.getLogger("httpx").setLevel(logging.WARNING)
