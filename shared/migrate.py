"""Apply the numbered SQL files of ``migrations/`` in order.

Each file runs in its own transaction and is recorded in ``schema_migrations``. A session-level advisory lock
serialises every process that migrates at once (several containers starting together), so each file is applied
exactly once. Creates the database itself if it does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from shared.config import Settings
from shared.db import CONNECTION_ERRORS, redact_url
from shared.errors import ConfigError, CreditqError, Unavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_ID = 0x637265646974  # "credit": any constant shared by every creditq process
_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")

log = structlog.get_logger("creditq.shared")


def pending_files(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, Path]]:
    """The migration files, ordered by number. Raises ConfigError on a duplicate number."""
    files: dict[int, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            continue
        n = int(m.group(1))
        if n in files:
            raise ConfigError(f"two migrations numbered {n}: {files[n].name}, {path.name}")
        files[n] = path
    return sorted(files.items())


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=5)
    except CONNECTION_ERRORS as e:
        raise Unavailable(f"Postgres is unreachable at DATABASE_URL ({redact_url(url)}): {e}") from e


async def ensure_database(settings: Settings) -> bool:
    """Create the database named by DATABASE_URL if it is missing. Returns True if it was created."""
    parts = urlsplit(settings.database_url)
    name = parts.path.lstrip("/")
    if not name:
        return False
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=5)
    except asyncpg.exceptions.InvalidCatalogNameError:
        pass
    except CONNECTION_ERRORS as e:
        raise Unavailable(f"Postgres is unreachable at DATABASE_URL ({redact_url(settings.database_url)}): {e}") from e
    else:
        await conn.close()
        return False
    admin = await _connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
    except asyncpg.exceptions.DuplicateDatabaseError:
        return False  # another process created it first
    finally:
        await admin.close()
    return True


async def migrate(settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; return the names applied (empty when up to date). Idempotent, and safe
    from many processes at once. Raises Unavailable if Postgres cannot be reached."""
    await ensure_database(settings)
    conn = await _connect(settings.database_url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, path in pending_files(directory):
            if version in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, path.name
                    )
            except asyncpg.PostgresError as e:
                raise CreditqError(f"migration {path.name} failed (nothing of it was applied): {e}") from e
            log.info("migration.applied", migration=path.name)
            applied.append(path.name)
    finally:
        await conn.close()  # closing the session releases the advisory lock
    return applied
