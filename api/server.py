"""Serving the API with uvicorn (uvloop and httptools when installed: they roughly double the submit rate)."""

from __future__ import annotations

import importlib.util
from typing import Any

import uvicorn

from api.app import create_app
from shared import pricing
from shared.config import Settings

GRACEFUL_SHUTDOWN_SECONDS = 10


def serve(settings: Settings, host: str, port: int, workers: int = 1) -> int:
    """Serve until stopped; returns the exit status: 0 after a clean stop, uvicorn's status if it cannot start
    (e.g. the port is taken). On SIGTERM/SIGINT uvicorn shuts down gracefully, then re-raises the signal, so the
    process ends as signalled. With ``workers`` > 1 each server process builds its own app from the environment.
    Logging is the process's own (shared.logging); uvicorn's access log is off."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    # Several processes need an import string to build the app in each; one process takes the app itself. A bad
    # price list must fail here, as one line, not once per server process with a traceback.
    pricing.load(settings.pricing_path)
    target: Any = "api.app:create_app_from_env" if workers > 1 else create_app(settings)
    try:
        uvicorn.run(
            target,
            factory=workers > 1,
            workers=workers,
            host=host,
            port=port,
            loop=loop,
            http=http,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0
