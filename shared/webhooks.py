"""Standard Webhooks (https://www.standardwebhooks.com): secrets, signatures and the retry schedule of client
webhooks. Pure functions; the outbox is in :mod:`shared.ledger.webhooks`, the sending in
:mod:`worker.deliveries`.

- A secret is ``whsec_`` + base64 of 24 random bytes; the HMAC key is the decoded bytes.
- ``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">``, one per
  secret that signs (space-separated) while a rotated secret is still in its grace period.
- The body is ``{"type": "job.succeeded"|"job.failed"|"job.canceled", "timestamp", "data": <task view>}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets as _secrets
from collections.abc import Sequence
from typing import Any

PREFIX = "whsec_"
# The default retry schedule: seconds to wait after each failed attempt (Svix's schedule, which Standard Webhooks
# cites): the first retry within 10 s, the last attempt ~27.6 h after the first. After the last, failed.
DEFAULT_RETRY_SECONDS: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
TIMEOUT_SECONDS = 15.0
USER_AGENT = "creditq-webhooks/1"


def new_secret() -> str:
    """A fresh signing secret, ``whsec_<base64>``."""
    return PREFIX + base64.b64encode(_secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of the message. Pure."""
    message = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), message, hashlib.sha256).digest()).decode()


def headers(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers (a signature per secret), plus the content type. Pure."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, webhook_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def event_body(event_type: str, timestamp: str, task_view: dict[str, Any]) -> bytes:
    """The JSON body of a job's end event (compact; the bytes signed are the bytes sent). Pure."""
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": task_view}, separators=(",", ":")).encode()


def retry_delay(attempts: int, schedule: Sequence[float]) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones (±10 % jitter, so that a receiver that
    comes back is not hit by every delivery at once), or None when the schedule is spent."""
    if attempts < 1 or attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(0.9, 1.1)
