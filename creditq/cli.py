"""The ``creditq`` console script (typer): one subcommand per process kind, the operator's tools, and the client
commands of :mod:`creditq.client` (``submit``, ``models``, ``jobs``, ``account``).

Every failure a user can cause or fix (a bad setting, Postgres or Redis down) is one line on stderr and exit
status 2; ``audit`` exits 1 when it finds problems; a client command exits 1 when the API refuses it. Never a
traceback for those. Every option's default is shown in ``--help``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from creditq import __version__, client
from shared.config import Settings
from shared.errors import CreditqError

CONFIG_EPILOG = (
    "Configuration comes from environment variables (or ./.env): DATABASE_URL, REDIS_URL, KIE_BASE_URL, "
    "KIE_API_KEY, CREDITQ_ADMIN_TOKEN, CREDITQ_PUBLIC_URL, CREDITQ_PRICING, PAYMENTS_WEBHOOK_SECRET, "
    "CREDITQ_SWEEP_SECONDS and more: see docs/CONFIGURATION.md."
)

app = typer.Typer(
    name="creditq",
    help="Sell AI generations for credits: hold, run at the provider, capture or refund, exactly once.",
    epilog=CONFIG_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
accounts_app = typer.Typer(help="manage accounts", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
client.register(app)


class RateLimitStyle(enum.StrEnum):
    """How the simulator refuses a call over its limits."""

    http = "http"
    body = "body"


def _version(value: bool) -> None:
    if value:
        print(f"creditq {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Sell AI generations for credits: hold, run at the provider, capture or refund, exactly once."""


def _settings() -> Settings:
    """The validated server settings with logging configured. Raises ConfigError (one line, exit 2)."""
    settings = Settings.from_env()
    from shared.logging import configure

    configure(settings)
    return settings


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


@app.command()
def migrate() -> int:
    """Apply pending database migrations (safe from several processes at once)."""
    from shared.migrate import migrate as apply

    applied = asyncio.run(apply(_settings()))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


@app.command()
def api(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="server processes", min=1)] = 1,
) -> int:
    """Serve the HTTP API."""
    from api.server import serve

    return serve(_settings(), host, port, workers)


@app.command()
def worker(
    check: Annotated[
        bool,
        typer.Option("--check", help="exit 0 if a worker on this host reported within 30 s (a healthcheck), else 1"),
    ] = False,
) -> int:
    """Run one arq worker (run as many as you like, on as many machines). Waits for Postgres and Redis at start,
    retrying with backoff; stops cleanly on SIGTERM/SIGINT."""
    from shared.pricing import load
    from worker.main import check as check_health
    from worker.main import run

    settings = _settings()
    if check:
        return check_health(settings)
    load(settings.pricing_path)  # a bad price list is a one-line error now, not a traceback at the first job
    return run(settings)


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 8100,
    api_key: Annotated[
        str | None, typer.Option(help="accept only this bearer key, or these (comma-separated); default any key")
    ] = None,
    credits: Annotated[float, typer.Option(help="the simulated provider balance")] = 1_000_000,
    time_scale: Annotated[float, typer.Option(help="multiply every duration by this")] = 1.0,
    create_limit: Annotated[int, typer.Option(help="creates per 10 s per key (0: no limit)")] = 20,
    query_limit: Annotated[int, typer.Option(help="status queries per second per key (0: no limit)")] = 10,
    strict: Annotated[
        bool, typer.Option("--strict", help="refuse (code 422) unknown models and fields, as the provider does")
    ] = False,
    rate_limit_style: Annotated[
        RateLimitStyle,
        typer.Option(help="over a limit: HTTP 429 with Retry-After (http), or HTTP 200 with body code 429 (body)"),
    ] = RateLimitStyle.http,
    callback_key: Annotated[
        str | None, typer.Option(help="sign callbacks with this HMAC key, as the provider does")
    ] = None,
) -> int:
    """Serve the KIE.ai simulator (its prompt directives: docs/SIMULATOR.md)."""
    import uvicorn

    from sim.app import SimOptions, create_app

    options = SimOptions(
        api_key=api_key,
        credits=credits,
        time_scale=time_scale,
        create_limit=create_limit,
        query_limit=query_limit,
        strict=strict,
        rate_limit_style=rate_limit_style.value,
        callback_key=callback_key,
    )
    print(f"creditq sim: KIE.ai simulator on http://{host}:{port}", file=sys.stderr)
    uvicorn.run(create_app(options), host=host, port=port, log_level="warning")
    return 0


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="API port", min=1, max=65535)] = 8000,
    sim_port: Annotated[int, typer.Option(help="simulator port", min=1, max=65535)] = 8100,
    workers: Annotated[int, typer.Option(help="worker processes (0: none, so that queued jobs wait: try cancel)")] = 1,
    sim_credits: Annotated[float, typer.Option(help="the simulator's provider balance (0: creates are refused)")] = (
        1_000_000
    ),
) -> int:
    """Migrate, then run simulator + API + worker in this terminal, with a ready demo account. SIGTERM or Ctrl-C
    stops all of them."""
    from creditq.dev import run

    return run(_settings(), port, sim_port, workers=workers, sim_credits=sim_credits)


@accounts_app.command("create")
def accounts_create(
    credits: Annotated[int, typer.Option(help="opening credits (a grant)", min=0)] = 0,
    tier: Annotated[str, typer.Option(help="free, pro or pro_plus")] = "free",
    external_id: Annotated[str | None, typer.Option(help="your own id for this account")] = None,
) -> int:
    """Create an account; prints its id and API key."""
    return _run(_accounts_create(_settings(), credits, tier, external_id))


async def _accounts_create(settings: Settings, credits: int, tier: str, external_id: str | None) -> int:
    from shared import db
    from shared.ledger import accounts
    from shared.pricing import load

    pricing = load(settings.pricing_path)
    if tier not in pricing.tiers:
        print(f"creditq: error: unknown tier {tier!r} (have: {', '.join(pricing.tiers)})", file=sys.stderr)
        return 2
    pool = await db.create_pool(settings, max_size=2)
    try:
        account, _, key = await accounts.create_account(pool, tier, credits, external_id)
    finally:
        await pool.close()
    print(f"account: {account.id}")
    print(f"api key: {key}")
    print(f"tier: {account.tier}  balance: {account.balance}")
    return 0


@app.command()
def audit(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    fix: Annotated[
        bool, typer.Option("--fix", help="settle what should be settled and re-apply stored events, then check again")
    ] = False,
    dismiss: Annotated[
        str | None,
        typer.Option(
            metavar="EVENT_ID", help="dismiss a pending payment event that can never apply (needs --reason), then check"
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="why the event is dismissed (recorded with it)")] = None,
) -> int:
    """Check every money invariant; exit 0 clean, 1 problems found."""
    return _run(_audit(_settings(), as_json, fix, dismiss, reason))


async def _audit(
    settings: Settings, as_json: bool, fix: bool, dismiss: str | None = None, reason: str | None = None
) -> int:
    from shared import db
    from shared.ledger.audit import audit as run_audit

    if dismiss is not None and not (reason or "").strip():
        print("creditq: error: --dismiss needs --reason", file=sys.stderr)
        return 2
    pool = await db.create_pool(settings, max_size=4)
    try:
        if dismiss is not None:
            dismissed = await _dismiss(pool, dismiss, reason or "")
            if dismissed is not None:
                print(dismissed, file=sys.stderr)
                return 2
            print(f"dismissed: payment event {dismiss}")
        if fix:
            # The same repairs as GET /v1/admin/reconcile?fix=true, ending stuck tasks as the worker does.
            from shared.repairs import repairing

            async with repairing(settings) as fixers:
                report = await run_audit(pool, settings.sweep_seconds, fixers)
        else:
            report = await run_audit(pool, settings.sweep_seconds)
    finally:
        await pool.close()
    if as_json:
        out = report.as_dict()
        if fix:
            out["fixed"] = list(report.fixed)  # present, if empty, whenever repairs were asked for
        print(json.dumps(out, indent=2))
    else:
        for line in report.fixed:
            print(f"fixed: {line}")
        if fix and not report.fixed:
            print("fix: nothing repaired")
        for p in report.problems:
            where = " ".join(f"{k}={v}" for k, v in p.as_dict().items() if k not in ("kind", "detail"))
            print(f"{p.kind}: {where}: {p.detail}")
        print("audit: clean" if report.ok else f"audit: {len(report.problems)} problem(s)")
    return 0 if report.ok else 1


async def _dismiss(pool: Any, event_id: str, reason: str) -> str | None:
    """Dismiss one payment event; None when done, else the one-line error to print."""
    from shared.ledger import payments

    try:
        await payments.dismiss_event(pool, event_id, reason)
    except CreditqError as e:
        return f"creditq: error: {e.message}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the exit status (also used by tests and the benchmarks)."""
    client.load_dotenv()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="creditq", standalone_mode=False)
    except typer.Exit as e:
        return int(e.exit_code)
    except TyperException as e:  # a usage error: click's own message with the usage line, exit 2
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            print(f"creditq: error: {e.message}", file=sys.stderr)
        return int(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print(file=sys.stderr)
        return 130
    except CreditqError as e:
        print(f"creditq: error: {e.message}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
