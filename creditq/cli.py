"""The ``creditq`` console script: one subcommand per process kind, plus the operator's tools.

Every failure a user can cause or fix (a bad setting, Postgres or Redis down) is one line on stderr and exit
status 2; ``audit`` exits 1 when it finds problems. Never a traceback for those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from creditq import __version__
from shared.config import Settings
from shared.errors import CreditqError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="creditq",
        description="Sell AI generations for credits: hold, run at the provider, capture or refund, exactly once.",
        epilog="Configuration comes from environment variables (or ./.env): DATABASE_URL, REDIS_URL, KIE_BASE_URL, "
        "KIE_API_KEY, CREDITQ_ADMIN_TOKEN, CREDITQ_PUBLIC_URL, CREDITQ_PRICING, PAYMENTS_WEBHOOK_SECRET, "
        "CREDITQ_SWEEP_SECONDS. See README.md.",
    )
    p.add_argument("--version", action="version", version=f"creditq {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("migrate", help="apply pending database migrations (safe from several processes at once)")

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    api.add_argument("--workers", type=int, default=1, help="server processes (default 1)")

    sub.add_parser("worker", help="run one arq worker (run as many as you like)")

    sim = sub.add_parser("sim", help="serve the KIE.ai simulator")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8100, help="port (default 8100)")
    sim.add_argument(
        "--api-key", default=None, help="accept only this bearer key, or these (comma-separated); default any key"
    )
    sim.add_argument("--credits", type=float, default=1_000_000, help="the simulated provider balance")
    sim.add_argument("--time-scale", type=float, default=1.0, help="multiply every duration by F")
    sim.add_argument("--create-limit", type=int, default=20, help="creates per 10 s per key (default 20)")
    sim.add_argument("--query-limit", type=int, default=10, help="status queries per second per key (default 10)")
    sim.add_argument(
        "--strict", action="store_true", help="refuse (code 422) unknown models and fields, as the provider does"
    )
    sim.add_argument(
        "--rate-limit-style",
        choices=("http", "body"),
        default="http",
        help="over a limit: HTTP 429 with Retry-After (http), or HTTP 200 with body code 429 (body)",
    )
    sim.add_argument("--callback-key", default=None, help="sign callbacks with this HMAC key, as the provider does")

    dev = sub.add_parser("dev", help="migrate, then run sim + api + worker in this terminal, for trying it out")
    dev.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    dev.add_argument("--sim-port", type=int, default=8100, help="simulator port (default 8100)")

    accounts = sub.add_parser("accounts", help="manage accounts")
    acc_sub = accounts.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)
    create = acc_sub.add_parser("create", help="create an account; prints its id and API key")
    create.add_argument("--credits", type=int, default=0, help="opening credits (a grant), default 0")
    create.add_argument("--tier", default="free", help="free, pro or pro_plus (default free)")
    create.add_argument("--external-id", default=None, help="your own id for this account")

    audit = sub.add_parser("audit", help="check every money invariant; exit 0 clean, 1 problems found")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument(
        "--fix",
        action="store_true",
        help="settle what should be settled and re-apply stored events, then check again",
    )
    audit.add_argument(
        "--dismiss",
        metavar="EVENT_ID",
        default=None,
        help="dismiss a pending payment event that can never apply (needs --reason), then check",
    )
    audit.add_argument("--reason", default=None, help="why the event is dismissed (recorded with it)")

    submit = sub.add_parser("submit", help="submit a job with your API key and follow it")
    submit.add_argument("--model", required=True, help="a model from GET /v1/models")
    submit.add_argument("--prompt", required=True, help="the text prompt")
    submit.add_argument("--wait", action="store_true", help="follow the task to its end, then print the result")
    submit.add_argument(
        "--api-url", default=None, help="API base URL (default $CREDITQ_API_URL or http://127.0.0.1:8000)"
    )
    submit.add_argument("--api-key", default=None, help="your API key (default $CREDITQ_API_KEY)")
    return p


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


async def _migrate(settings: Settings) -> int:
    from shared.migrate import migrate

    applied = await migrate(settings)
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


async def _accounts_create(settings: Settings, args: argparse.Namespace) -> int:
    from shared import db
    from shared.ledger import accounts
    from shared.pricing import load

    pricing = load(settings.pricing_path)
    if args.tier not in pricing.tiers:
        print(f"creditq: error: unknown tier {args.tier!r} (have: {', '.join(pricing.tiers)})", file=sys.stderr)
        return 2
    pool = await db.create_pool(settings, max_size=2)
    try:
        account, _, key = await accounts.create_account(pool, args.tier, args.credits, args.external_id)
    finally:
        await pool.close()
    print(f"account: {account.id}")
    print(f"api key: {key}")
    print(f"tier: {account.tier}  balance: {account.balance}")
    return 0


async def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from shared import db
    from shared.ledger.audit import audit

    if args.dismiss is not None and not (args.reason or "").strip():
        print("creditq: error: --dismiss needs --reason", file=sys.stderr)
        return 2
    pool = await db.create_pool(settings, max_size=4)
    try:
        if args.dismiss is not None:
            dismissed = await _dismiss(pool, args.dismiss, args.reason)
            if dismissed is not None:
                print(dismissed, file=sys.stderr)
                return 2
            print(f"dismissed: payment event {args.dismiss}")
        if args.fix:
            # The same repairs as GET /v1/admin/reconcile?fix=true, ending stuck tasks as the worker does.
            from shared.repairs import repairing

            async with repairing(settings) as fixers:
                report = await audit(pool, settings.sweep_seconds, fixers)
        else:
            report = await audit(pool, settings.sweep_seconds)
    finally:
        await pool.close()
    if args.json:
        out = report.as_dict()
        if args.fix:
            out["fixed"] = list(report.fixed)  # present, if empty, whenever repairs were asked for
        print(json.dumps(out, indent=2))
    else:
        for line in report.fixed:
            print(f"fixed: {line}")
        if args.fix and not report.fixed:
            print("fix: nothing repaired")
        for p in report.problems:
            where = " ".join(f"{k}={v}" for k, v in p.as_dict().items() if k not in ("kind", "detail"))
            print(f"{p.kind}: {where}: {p.detail}")
        print("audit: clean" if report.ok else f"audit: {len(report.problems)} problem(s)")
    return 0 if report.ok else 1


async def _dismiss(pool: Any, event_id: str, reason: str) -> str | None:
    """Dismiss one payment event; None when done, else the one-line error to print."""
    from shared.errors import CreditqError
    from shared.ledger import payments

    try:
        await payments.dismiss_event(pool, event_id, reason)
    except CreditqError as e:
        return f"creditq: error: {e.message}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the exit status (also used by tests)."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        from shared.logging import configure

        configure(settings)
        handler: Callable[[], int] = {
            "migrate": lambda: _run(_migrate(settings)),
            "accounts": lambda: _run(_accounts_create(settings, args)),
            "audit": lambda: _run(_audit(settings, args)),
            "api": lambda: _serve_api(settings, args),
            "worker": lambda: _worker(settings),
            "sim": lambda: _sim(args),
            "dev": lambda: _dev(settings, args),
            "submit": lambda: _submit(settings, args),
        }[args.command]
        return handler()
    except CreditqError as e:
        print(f"creditq: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve_api(settings: Settings, args: argparse.Namespace) -> int:
    from api.server import serve

    return serve(settings, args.host, args.port, args.workers)


def _worker(settings: Settings) -> int:
    from worker.main import run

    return run(settings)


def _sim(args: argparse.Namespace) -> int:
    import uvicorn

    from sim.app import SimOptions, create_app

    options = SimOptions(
        api_key=args.api_key,
        credits=args.credits,
        time_scale=args.time_scale,
        create_limit=args.create_limit,
        query_limit=args.query_limit,
        strict=args.strict,
        rate_limit_style=args.rate_limit_style,
        callback_key=args.callback_key,
    )
    print(f"creditq sim: KIE.ai simulator on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(create_app(options), host=args.host, port=args.port, log_level="warning")
    return 0


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from creditq.dev import run

    return run(settings, args.port, args.sim_port)


def _submit(settings: Settings, args: argparse.Namespace) -> int:
    from creditq.submit import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
