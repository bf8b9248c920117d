"""The Starlette app: routes, error handlers, and a lifespan that connects in the background.

The app starts whatever the state of Postgres and Redis (requests answer 503 until they are reachable, and
``/readyz`` names what is down); the price list is loaded when the app is built, so a bad one stops the start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route

from api import (
    accounts,
    admin,
    client_webhooks,
    events,
    health,
    jobs,
    lots,
    openapi,
    ops,
    payments,
    scrape,
    transfers,
    webhooks,
)
from api.auth import admin_mount
from api.errors import HANDLERS
from api.middleware import Edge
from api.services import Services
from shared import pricing
from shared.config import Settings
from shared.logging import configure


def create_app(settings: Settings) -> Starlette:
    """The API app for ``settings``. Raises ConfigError for a bad price list. Its ``state.services`` holds the
    settings, the price list and the connections."""
    services = Services(settings, pricing.load(settings.pricing_path))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services.start()
        try:
            yield
        finally:
            await services.close()

    routes: list[BaseRoute] = [
        *health.routes,
        *accounts.routes,
        *jobs.routes,
        *client_webhooks.routes,
        *events.routes,
        *transfers.routes,
        # Every /v1/admin route, behind the one admin-token check.
        admin_mount([*admin.admin_routes, *lots.admin_routes, *payments.admin_routes, *ops.admin_routes]),
        *lots.routes,
        *webhooks.routes,
        *payments.routes,
        *scrape.routes,
        *ops.routes,
        *openapi.routes,
    ]
    app = Starlette(
        routes=routes,
        # One middleware: request id and log context, edge checks, the catch-all 500, the counts (api/middleware.py).
        middleware=[Middleware(Edge)],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def plain_routes(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, Route]]:
    """Every plain route of ``routes`` with its full path, through Mounts (``/v1/admin``). Pure."""
    out: list[tuple[str, Route]] = []
    for route in routes:
        if isinstance(route, Mount):
            out.extend(plain_routes(route.routes, prefix + route.path))
        elif isinstance(route, Route):
            out.append((prefix + route.path, route))
    return out


def create_app_from_env() -> Starlette:
    """uvicorn's factory for ``--workers`` > 1: each server process reads the settings and sets up logging."""
    settings = Settings.from_env()
    configure(settings)
    return create_app(settings)
