"""The one exception hierarchy of creditq.

Every error a caller can act on is a :class:`CreditqError`. The API maps each class to one HTTP status and
one ``error.code`` (docs/API.md's error table); the CLI prints its message on one line; the worker decides from the
class whether to retry. Nothing else is raised on purpose.

    CreditqError
    ├── ConfigError              a missing or malformed setting (one line, names the variable)
    ├── InvalidJson              the body is not JSON, or not an object                 400 invalid_json
    ├── PayloadTooLarge          the body is over 64 KiB                                413 payload_too_large
    ├── Unavailable              Postgres or Redis unreachable                          503 unavailable
    ├── InvalidInput             bad amounts, unknown model, wrong types                422 validation_error
    ├── Unauthenticated          no key, unknown key                                    401 unauthenticated
    ├── Forbidden                revoked/expired key, suspended account's write         403 forbidden
    ├── NotFound                 unknown id, or another account's                       404 not_found
    ├── Conflict                 a taken externalId                                     409 conflict
    │   ├── IdempotencyConflict  same Idempotency-Key, other body                       409 idempotency_conflict
    │   └── NotCancelable        cancel of a task that already left `queued`            409 not_cancelable
    ├── InsufficientCredits      available < required                                  402 insufficient_credits
    ├── RateLimited              a tier limit; carries retry_after seconds              429 rate_limited
    ├── InvalidSignature         a payment event's signature is bad or stale            400 invalid_signature
    ├── UnappliedEvent           a payment event stored but not (yet) applicable        422 event_not_applied
    └── ProviderError            the provider (KIE.ai) refused or failed a call
        ├── ProviderTransient    5xx, 429, 455, timeouts, connection errors; any failed status query: retry
        ├── ProviderPermanent    a create refused with 400, 404, 422, 451, 505: fail the task and refund it
        └── ProviderAccountRefused  a create refused with 401 or 433: this key cannot create now; open its circuit
            └── ProviderOutOfCredits 402: the provider account is empty; open the key's circuit
"""

from __future__ import annotations

from typing import Any


class CreditqError(Exception):
    """Base of every error creditq raises on purpose. ``code`` is the API's ``error.code``."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        #: Extra fields the API puts inside the ``error`` object (``required``, ``details``...).
        self.extra = extra


class ConfigError(CreditqError):
    """A setting is missing or malformed. The message names the variable."""

    code = "config_error"


class InvalidJson(CreditqError):
    status = 400
    code = "invalid_json"


class PayloadTooLarge(CreditqError):
    status = 413
    code = "payload_too_large"


class Unavailable(CreditqError):
    """Postgres or Redis cannot be reached. The message names which (and its variable)."""

    status = 503
    code = "unavailable"


class InvalidInput(CreditqError):
    """The request is well-formed JSON but its values are wrong. ``extra['details']`` says which."""

    status = 422
    code = "validation_error"


class Unauthenticated(CreditqError):
    status = 401
    code = "unauthenticated"


class Forbidden(CreditqError):
    status = 403
    code = "forbidden"


class NotFound(CreditqError):
    status = 404
    code = "not_found"


class Conflict(CreditqError):
    status = 409
    code = "conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class NotCancelable(Conflict):
    code = "not_cancelable"


class InsufficientCredits(CreditqError):
    """``available < required``; carries both so the caller can show them."""

    status = 402
    code = "insufficient_credits"

    def __init__(self, required: int, available: int) -> None:
        super().__init__(
            f"this needs {required} credits and {available} are available",
            required=required,
            available=available,
        )
        self.required = required
        self.available = available


class RateLimited(CreditqError):
    """A tier limit refused the request; ``retry_after`` is whole seconds (≥ 1)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retryAfter=retry_after)
        self.retry_after = retry_after


class InvalidSignature(CreditqError):
    status = 400
    code = "invalid_signature"


class UnappliedEvent(CreditqError):
    """A payment event was stored but cannot be applied yet (unknown account, missing metadata)."""

    status = 422
    code = "event_not_applied"


class ProviderError(CreditqError):
    """The provider refused or failed a call. ``provider_code`` is the envelope or HTTP code."""

    status = 502
    code = "provider_error"

    def __init__(self, message: str, provider_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.provider_code = provider_code
        self.retry_after = retry_after


class ProviderTransient(ProviderError):
    """Worth retrying with backoff: 5xx, 429, 455, timeouts, connection errors, "recordInfo is null"."""

    code = "provider_transient"


class ProviderPermanent(ProviderError):
    """Retrying cannot help: the task fails and is refunded."""

    code = "provider_rejected"


class ProviderAccountRefused(ProviderError):
    """A create refused for the key or the account, not the task (401 bad key, 433 usage cap, 402 no credits):
    stop creating with that key (its circuit) until it takes creates again; the task stays queued."""

    code = "provider_account_refused"


class ProviderOutOfCredits(ProviderAccountRefused):
    """The provider account has no credits left (402): stop submitting until it has."""

    code = "provider_out_of_credits"
