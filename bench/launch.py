"""Run a ``creditq`` command with one of the fixes BENCHMARKS.md proposes applied from outside, so that the bench
can measure what a fix would buy before anyone changes ``api/`` or ``worker/`` (``python -m bench --only
variants``). Nothing here is used by the product.

    python -m bench.launch [--uvloop] [--no-pool-reset] [--sniffio-stub] [--server asyncio-h11] -- <creditq args>

- ``--uvloop``: install uvloop's event-loop policy first (the worker otherwise runs on plain asyncio).
- ``--no-pool-reset``: asyncpg's pool sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
  on every release, one extra round trip per pooled query; this makes that query empty (what
  ``asyncpg.create_pool(reset=...)`` or a ``Connection`` subclass with ``get_reset_query() -> ""`` would do).
- ``--sniffio-stub``: httpcore imports ``sniffio`` on every request; it is not installed, so each request pays a
  failed import (a search of sys.path). A stub module stands in for installing the package.
- ``--server asyncio-h11``: serve the API on plain asyncio with h11 instead of uvloop with httptools.
"""

from __future__ import annotations

import argparse
import sys
import types


def _apply(args: argparse.Namespace) -> None:
    if args.uvloop:
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.no_pool_reset:
        import asyncpg.connection

        def no_reset_query(self: asyncpg.connection.Connection) -> str:
            return ""

        asyncpg.connection.Connection.get_reset_query = no_reset_query
    if args.sniffio_stub and "sniffio" not in sys.modules:
        try:
            import sniffio  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            stub = types.ModuleType("sniffio")

            def current_async_library() -> str:
                return "asyncio"

            stub.current_async_library = current_async_library  # type: ignore[attr-defined]
            sys.modules["sniffio"] = stub


def _serve_plain(argv: list[str]) -> int:
    """``api --port P`` on asyncio + h11 (one process)."""
    import uvicorn

    from api.app import create_app
    from shared.config import Settings
    from shared.logging import configure

    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    settings = Settings.from_env()
    configure(settings)
    uvicorn.run(
        create_app(settings),
        host=a.host,
        port=a.port,
        loop="asyncio",
        http="h11",
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return 0


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m bench.launch")
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--no-pool-reset", action="store_true")
    p.add_argument("--sniffio-stub", action="store_true")
    p.add_argument("--server", choices=["default", "asyncio-h11"], default="default")
    args = p.parse_args(argv[:split])
    rest = argv[split + 1 :]
    _apply(args)
    if args.server == "asyncio-h11":
        return _serve_plain(rest)
    from creditq.cli import main as creditq_main

    return creditq_main(rest)


if __name__ == "__main__":
    sys.exit(main())
