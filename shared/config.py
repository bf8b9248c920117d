"""The one configuration object.

Every setting is an environment variable (a ``.env`` file in the working directory may supply them; real
environment variables win). :meth:`Settings.from_env` validates everything at start and raises
:class:`~shared.errors.ConfigError` with a one-line message naming the variable, never a traceback.
docs/CONFIGURATION.md documents every one: the first nine are the core, the rest creditq's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from shared.errors import ConfigError
from shared.webhooks import DEFAULT_RETRY_SECONDS

BUNDLED_PRICING = Path(__file__).with_name("pricing.toml")


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/creditq"
    redis_url: str = "redis://127.0.0.1:6379/0"
    kie_base_url: str = "https://api.kie.ai"
    kie_api_key: str = ""
    kie_api_keys: tuple[str, ...] = ()  # KIE_API_KEYS, comma-separated: several provider keys (accounts)
    admin_token: str = ""
    public_url: str = ""
    pricing_path: Path = BUNDLED_PRICING
    payments_webhook_secret: str = ""
    sweep_seconds: float = 30.0
    # creditq's own settings, beyond the contract:
    log_format: str = "auto"  # json | console | auto (console on a terminal, JSON otherwise)
    log_level: str = "info"
    queue_name: str = "creditq:queue"  # arq queue; also the prefix of creditq's other Redis keys
    db_pool_size: int = 10
    kie_create_limit: int = 20  # provider creates per kie_create_window seconds, per key
    kie_create_window: float = 10.0
    kie_query_limit: int = 10  # provider status queries per second, per key
    kie_timeout: float = 30.0  # seconds for any one provider call
    allow_private_callbacks: bool = False  # let clients give callbackUrl on private addresses
    # Client webhooks: seconds to wait after each failed delivery attempt; the last attempt comes after the last.
    webhook_retry_seconds: tuple[float, ...] = DEFAULT_RETRY_SECONDS
    worker_concurrency: int = 200  # arq max_jobs: short steps, so many at once is cheap
    metrics_dir: str = ""  # prometheus multiprocess dir shared by API and workers on one host
    poke_seconds: float = 20.0  # provider callbacks start at most one status check per task per this many seconds
    # The API's cache of API keys → accounts lives at most this long (the backstop behind Postgres notifications;
    # docs/CONFIGURATION.md); 0 turns the cache off (every request reads its key from Postgres).
    auth_cache_seconds: float = 5.0

    @property
    def provider_keys(self) -> tuple[str, ...]:
        """The provider keys to use, in order: ``KIE_API_KEYS`` when set, else ``KIE_API_KEY`` as a list of one
        (an empty key when neither is set: the provider then refuses creates with 401 and the circuit opens)."""
        if self.kie_api_keys:
            return self.kie_api_keys
        return (self.kie_api_key,)

    @property
    def callbacks_enabled(self) -> bool:
        """Provider callbacks are used only when the provider can reach us (CREDITQ_PUBLIC_URL set)."""
        return bool(self.public_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, dotenv: bool = True) -> Settings:
        """Read and validate the settings.

        ``env`` defaults to ``os.environ`` merged over ``./.env`` (when ``dotenv``). Raises ConfigError naming the
        first bad variable. Pure: changes no process state.
        """
        if env is None:
            merged: dict[str, str] = {}
            if dotenv and Path(".env").is_file():
                merged.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
            merged.update(os.environ)
            env = merged
        values: dict[str, object] = {}
        for f in fields(cls):
            var = _VARS[f.name]
            raw = env.get(var)
            if raw is None or (raw == "" and f.name not in _EMPTY_OK):
                continue
            values[f.name] = _parse(var, f.name, raw.strip())
        settings = cls(**values)  # type: ignore[arg-type]
        settings._check()
        return settings

    def _check(self) -> None:
        _url("DATABASE_URL", self.database_url, ("postgres", "postgresql"))
        _url("REDIS_URL", self.redis_url, ("redis", "rediss", "unix"))
        _url("KIE_BASE_URL", self.kie_base_url, ("http", "https"))
        if self.public_url:
            _url("CREDITQ_PUBLIC_URL", self.public_url, ("http", "https"))
        if not self.pricing_path.is_file():
            raise ConfigError(f"CREDITQ_PRICING: no such file: {self.pricing_path}")
        if self.sweep_seconds <= 0:
            raise ConfigError("CREDITQ_SWEEP_SECONDS must be a positive number of seconds")
        if self.log_format not in ("json", "console", "auto"):
            raise ConfigError("CREDITQ_LOG_FORMAT must be json, console or auto")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("CREDITQ_LOG_LEVEL must be debug, info, warning or error")
        for name in ("db_pool_size", "kie_create_limit", "kie_query_limit", "worker_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_VARS[name]} must be at least 1")
        if self.kie_create_window <= 0 or self.kie_timeout <= 0:
            raise ConfigError("KIE_CREATE_WINDOW and KIE_TIMEOUT must be positive")
        if not 0 < self.poke_seconds <= 3600:
            raise ConfigError("CREDITQ_POKE_SECONDS must be a number of seconds from 0 to 3600 (not 0)")
        if not 0 <= self.auth_cache_seconds <= 300:
            raise ConfigError("CREDITQ_AUTH_CACHE_SECONDS must be a number of seconds from 0 (off) to 300")


_VARS = {
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "kie_base_url": "KIE_BASE_URL",
    "kie_api_key": "KIE_API_KEY",
    "kie_api_keys": "KIE_API_KEYS",
    "admin_token": "CREDITQ_ADMIN_TOKEN",
    "public_url": "CREDITQ_PUBLIC_URL",
    "pricing_path": "CREDITQ_PRICING",
    "payments_webhook_secret": "PAYMENTS_WEBHOOK_SECRET",
    "sweep_seconds": "CREDITQ_SWEEP_SECONDS",
    "log_format": "CREDITQ_LOG_FORMAT",
    "log_level": "CREDITQ_LOG_LEVEL",
    "queue_name": "CREDITQ_QUEUE",
    "db_pool_size": "CREDITQ_DB_POOL_SIZE",
    "kie_create_limit": "KIE_CREATE_LIMIT",
    "kie_create_window": "KIE_CREATE_WINDOW",
    "kie_query_limit": "KIE_QUERY_LIMIT",
    "kie_timeout": "KIE_TIMEOUT",
    "allow_private_callbacks": "CREDITQ_ALLOW_PRIVATE_CALLBACKS",
    "webhook_retry_seconds": "CREDITQ_WEBHOOK_RETRY_SECONDS",
    "worker_concurrency": "CREDITQ_WORKER_CONCURRENCY",
    "metrics_dir": "PROMETHEUS_MULTIPROC_DIR",
    "poke_seconds": "CREDITQ_POKE_SECONDS",
    "auth_cache_seconds": "CREDITQ_AUTH_CACHE_SECONDS",
}
# Variables whose empty value means "off" rather than "use the default".
_EMPTY_OK = {"kie_api_key", "kie_api_keys", "admin_token", "public_url", "payments_webhook_secret", "metrics_dir"}
_INTS = {"db_pool_size", "kie_create_limit", "kie_query_limit", "worker_concurrency"}
_FLOATS = {"sweep_seconds", "kie_create_window", "kie_timeout", "poke_seconds", "auth_cache_seconds"}


def _parse(var: str, name: str, raw: str) -> object:
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{var} must be a whole number, got {raw!r}") from None
    if name in _FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{var} must be a number of seconds, got {raw!r}") from None
    if name == "allow_private_callbacks":
        if raw.lower() not in ("1", "true", "yes", "0", "false", "no", ""):
            raise ConfigError(f"{var} must be true or false, got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    if name == "webhook_retry_seconds":
        try:
            delays = tuple(float(x) for x in raw.split(","))
        except ValueError:
            raise ConfigError(f"{var} must be comma-separated seconds, e.g. 5,300,1800; got {raw!r}") from None
        if not delays or not all(0 < d < 10**7 for d in delays):
            raise ConfigError(f"{var} must list positive numbers of seconds, got {raw!r}")
        return delays
    if name == "pricing_path":
        return Path(raw)
    if name == "kie_api_keys":
        keys = tuple(k.strip() for k in raw.split(","))
        if any(not k for k in keys) and raw:
            raise ConfigError(f"{var} must be a comma-separated list of non-empty keys")
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{var} lists a key twice")
        return tuple(k for k in keys if k)
    if name in ("kie_base_url", "public_url"):
        return raw.rstrip("/")
    return raw


def _url(var: str, value: str, schemes: tuple[str, ...]) -> None:
    """Check a URL completely: scheme, host, port (a number in range) and, for Redis, the database number and the
    query options redis-py accepts; for Postgres a database name. Raises ConfigError naming ``var``."""
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError when not a number or out of range
    except ValueError as e:
        raise ConfigError(f"{var} is not a valid URL ({e}): {_redacted(value)!r}") from None
    if parts.scheme not in schemes or (parts.scheme != "unix" and not parts.netloc):
        raise ConfigError(f"{var} must be a {'/'.join(schemes)} URL, got {_redacted(value)!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{var} has no host: {_redacted(value)!r}")
    if port == 0:
        raise ConfigError(f"{var} has port 0: {_redacted(value)!r}")
    if parts.scheme in ("redis", "rediss", "unix"):
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if db and not (db.isdigit() and db.isascii()):
            raise ConfigError(f"{var} must end in a database number (/0, /1, ...), got /{db}: {_redacted(value)!r}")
        from redis.connection import parse_url

        try:
            parse_url(value)  # type: ignore[no-untyped-call]
        except ValueError as e:
            raise ConfigError(f"{var}: {e}: {_redacted(value)!r}") from None
    if parts.scheme in ("postgres", "postgresql") and not parts.path.strip("/"):
        raise ConfigError(f"{var} names no database (…/creditq): {_redacted(value)!r}")


def _redacted(value: str) -> str:
    """The URL without its password (a one-line error lands in logs)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
