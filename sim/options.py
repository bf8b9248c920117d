"""The simulator's knobs: one frozen dataclass, filled by ``creditq sim`` from its command-line options."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How one simulator instance behaves.

    Attributes:
        api_key: the only bearer key accepted, or a comma-separated list of them; ``None`` accepts any non-empty
            key (``--api-key``). Every key has its own rate windows, as the provider's do.
        credits: the provider balance at start and after ``POST /__sim/reset`` (``--credits``).
        time_scale: multiplies every task duration and the callback retry delay (``--time-scale``);
            rate-limit windows are real time and are not scaled.
        create_limit: create calls (``createTask``, ``veo/generate``) allowed per key in any sliding 10 s
            window (``--create-limit``); more answer HTTP 429 and are not executed. 0 = no limit.
        query_limit: status queries (``recordInfo``, ``record-info``) allowed per key in any sliding 1 s
            window (``--query-limit``); more answer HTTP 429 and are not executed. 0 = no limit.
        cost_per_task: credits taken from the balance by each accepted create; a create that finds the
            balance below this answers body code 402 and creates nothing.
        callback_tries: deliveries attempted per finished task with a ``callBackUrl`` before giving up.
        callback_retry_delay: seconds between two tries of one callback, multiplied by ``time_scale``.
        strict: refuse (body code 422) models the catalogue does not know and fields a model does not take
            (``--strict``; see :mod:`sim.models`).
        rate_limit_style: ``"http"`` answers the limits with HTTP 429 and ``Retry-After``; ``"body"`` with HTTP
            200, body code 429 and no ``Retry-After`` (``--rate-limit-style``).
        callback_key: when set, callbacks are signed with it: ``X-Webhook-Timestamp`` (unix seconds) and
            ``X-Webhook-Signature`` = base64(HMAC-SHA256(key, taskId + "." + timestamp)) (``--callback-key``).
    """

    api_key: str | None = None
    credits: float = 1_000_000
    time_scale: float = 1.0
    create_limit: int = 20
    query_limit: int = 10
    cost_per_task: float = 1.0
    callback_tries: int = 3
    callback_retry_delay: float = 1.0
    strict: bool = False
    rate_limit_style: str = "http"
    callback_key: str | None = None

    @property
    def api_keys(self) -> frozenset[str] | None:
        """The accepted bearer keys, or None for any non-empty key."""
        if self.api_key is None:
            return None
        return frozenset(k.strip() for k in self.api_key.split(",") if k.strip())

    def __post_init__(self) -> None:
        if self.time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        if self.create_limit < 0 or self.query_limit < 0:
            raise ValueError("rate limits must be >= 0")
        if self.callback_tries < 1:
            raise ValueError("callback_tries must be >= 1")
        if self.cost_per_task < 0 or self.callback_retry_delay < 0:
            raise ValueError("cost_per_task and callback_retry_delay must be >= 0")
        if self.rate_limit_style not in ("http", "body"):
            raise ValueError("rate_limit_style must be http or body")
