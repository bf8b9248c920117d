"""The one logger setup: structlog, JSON lines in production, readable lines on a terminal.

Call :func:`configure` once per process (the CLI does); everything else calls ``structlog.get_logger()`` and
binds context (``task_id``, ``account_id``, ``request_id``...) per call or with ``structlog.contextvars``.
Standard-library loggers (arq, uvicorn) go through the same renderer so a process prints one format.
"""

from __future__ import annotations

import logging
import re
import sys

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


def configure(settings: Settings, stream: object = None) -> None:
    """Configure structlog and stdlib logging for this process. Idempotent: a second call reconfigures."""
    out = stream or sys.stderr
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,  # type: ignore[list-item]
    ]
    level = getattr(logging, settings.log_level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)  # type: ignore[arg-type]
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log is one line per request: noise next to our own request lines.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every request URL at INFO: ours are logged once, with context, by the provider client, and a
    # client's callback URL may carry its secrets.
    logging.getLogger("httpx").setLevel(logging.WARNING)
