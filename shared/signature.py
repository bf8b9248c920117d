"""Stripe-style signatures of payment events.

The sender puts ``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` on each request, where each
``v1`` is the hex HMAC-SHA256 of ``"<t>.<raw body>"`` keyed with a signing secret. A request is genuine when
any ``v1`` matches the HMAC under any of our secrets and ``t`` is within the tolerance of our clock (both
ways: a stale timestamp is a replay, a far-future one is a clock we cannot trust).

Secret rotation works from both ends:
- the sender may sign with several secrets at once (several ``v1`` values; any one may match);
- ``PAYMENTS_WEBHOOK_SECRET`` may hold a comma-separated list of secrets (``whsec_new,whsec_old``), any of
  which is accepted. Stripe's secrets never contain commas, so the list form cannot misread a single secret.

Other schemes in the header (``v0``, future ``v2``) are ignored, as Stripe's own libraries do.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence

from shared.errors import InvalidSignature

HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300
SCHEME = "v1"

# A v1 signature is a SHA-256 digest in hex. Anything else cannot match, and saying "malformed" helps the
# sender more than "no match" would.
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# A header with thousands of candidates is an attack on our CPU, not a rotation.
_MAX_SIGNATURES = 16


def parse_secrets(value: str) -> list[str]:
    """The signing secrets configured in ``value`` (PAYMENTS_WEBHOOK_SECRET): comma-separated, blanks dropped.

    Pure. An empty list means the webhook is disabled.
    """
    return [s.strip() for s in value.split(",") if s.strip()]


def compute(payload: bytes, secret: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``payload`` at ``timestamp`` under ``secret``. Pure."""
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, secret: str, t: int | None = None, extra_secrets: Sequence[str] = ()) -> str:
    """A ``Stripe-Signature`` header value for ``payload``: ``t=<t>,v1=<hex>`` (one ``v1`` per secret,
    ``secret`` first, then ``extra_secrets``, as a sender mid-rotation would). ``t`` defaults to now. Pure
    apart from reading the clock; for tests and for operators replaying an event by hand."""
    ts = int(time.time()) if t is None else t
    parts = [f"t={ts}"] + [f"{SCHEME}={compute(payload, s, ts)}" for s in (secret, *extra_secrets)]
    return ",".join(parts)


def parse_header(header: str) -> tuple[int, list[str]]:
    """Split a header into (timestamp, lower-case ``v1`` signatures).

    Raises InvalidSignature when there is not exactly one integer ``t``, no ``v1``, a ``v1`` that is not a hex
    SHA-256 digest, or too many signatures. Pure.
    """
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise InvalidSignature(f"malformed {HEADER} header: {item.strip()[:40]!r} is not key=value")
        key, value = key.strip(), value.strip()
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME:
            if not _HEX_DIGEST.fullmatch(value):
                raise InvalidSignature(f"malformed {HEADER} header: a v1 signature must be 64 hex digits")
            signatures.append(value.lower())
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise InvalidSignature(f"malformed {HEADER} header: it needs exactly one t=<unix seconds>")
    if not signatures:
        raise InvalidSignature(f"malformed {HEADER} header: no v1 signature")
    if len(signatures) > _MAX_SIGNATURES:
        raise InvalidSignature(f"malformed {HEADER} header: more than {_MAX_SIGNATURES} signatures")
    return int(timestamps[0]), signatures


def verify(
    payload: bytes,
    header: str | None,
    secrets: str | Sequence[str],
    tolerance: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """Check ``header`` (the ``Stripe-Signature`` value, None when absent) against the raw ``payload``.

    ``secrets`` is one secret, a comma-separated list of them, or a sequence. Returns the signed timestamp.
    Raises InvalidSignature (400 ``invalid_signature``) naming what is wrong: the header is missing or
    malformed, no signature matches any secret, or the timestamp is more than ``tolerance`` seconds from
    ``now`` either way.
    The signatures are checked before the clock so that a forged request is reported as forged, not as stale.
    Every comparison is constant-time (``hmac.compare_digest``) and every candidate is compared, so the time
    taken does not tell which candidate came close. Pure apart from reading the clock.
    """
    keys = parse_secrets(secrets) if isinstance(secrets, str) else [s for s in secrets if s]
    if not keys:
        # A caller bug (the route answers 404 when no secret is set); refuse rather than accept.
        raise InvalidSignature("no signing secret is configured")
    if header is None or not header.strip():
        raise InvalidSignature(f"missing {HEADER} header")
    timestamp, candidates = parse_header(header)
    matched = False
    for key in keys:
        expected = compute(payload, key, timestamp).encode()
        for candidate in candidates:
            # No early exit: a match must not take less time than a miss.
            matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise InvalidSignature(
            "no signature matches: check PAYMENTS_WEBHOOK_SECRET and that the body is sent unmodified"
        )
    skew = (time.time() if now is None else now) - timestamp
    if skew > tolerance:
        raise InvalidSignature(f"signature timestamp is {int(skew)} s old (tolerance {tolerance} s): a replay?")
    if -skew > tolerance:
        raise InvalidSignature(
            f"signature timestamp is {int(-skew)} s in the future (tolerance {tolerance} s): check the clocks"
        )
    return timestamp
