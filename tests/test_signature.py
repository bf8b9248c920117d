"""Stripe-style signatures: what is accepted, what is refused and with which message. Pure: no services."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shared.errors import InvalidSignature
from shared.signature import compute, parse_header, parse_secrets, sign, verify

BODY = b'{"id":"evt_1","type":"checkout.session.completed"}'
SECRET = "whsec_test"
NOW = 1_700_000_000


def test_sign_matches_stripe_scheme() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET, NOW) == f"t={NOW},v1={expected}"
    assert compute(BODY, SECRET, NOW) == expected


def test_valid_signature_returns_timestamp() -> None:
    assert verify(BODY, sign(BODY, SECRET, NOW), SECRET, now=NOW) == NOW


def test_rotated_sender_second_v1_matches() -> None:
    header = sign(BODY, "whsec_old_unknown_to_us", NOW, extra_secrets=[SECRET])
    assert header.count("v1=") == 2
    assert verify(BODY, header, SECRET, now=NOW) == NOW


def test_rotated_receiver_any_configured_secret_matches() -> None:
    header = sign(BODY, "whsec_old", NOW)
    assert verify(BODY, header, "whsec_new, whsec_old", now=NOW) == NOW
    assert verify(BODY, header, ["whsec_new", "whsec_old"], now=NOW) == NOW


def test_parse_secrets_drops_blanks() -> None:
    assert parse_secrets(" a ,, b,") == ["a", "b"]
    assert parse_secrets("") == []


@pytest.mark.parametrize(
    ("header", "secret", "message"),
    [
        (sign(BODY, "whsec_wrong", NOW), SECRET, "no signature matches"),
        (sign(BODY + b" ", SECRET, NOW), SECRET, "no signature matches"),  # body changed in transit
        (sign(BODY, SECRET, NOW - 301), SECRET, "old"),
        (sign(BODY, SECRET, NOW + 301), SECRET, "future"),
        (None, SECRET, "missing"),
        ("", SECRET, "missing"),
        ("garbage", SECRET, "malformed"),
        (f"v1={compute(BODY, SECRET, NOW)}", SECRET, "malformed"),  # no t
        (f"t=abc,v1={compute(BODY, SECRET, NOW)}", SECRET, "malformed"),
        (f"t={NOW},t={NOW},v1={compute(BODY, SECRET, NOW)}", SECRET, "malformed"),
        (f"t={NOW}", SECRET, "malformed"),  # no v1
        (f"t={NOW},v1=zz", SECRET, "malformed"),
        (f"t={NOW},v0={compute(BODY, SECRET, NOW)}", SECRET, "malformed"),  # only another scheme
        (f"t={NOW}" + f",v1={'0' * 64}" * 17, SECRET, "malformed"),  # too many candidates
        (sign(BODY, SECRET, NOW), "", "no signing secret"),
    ],
)
def test_refused(header: str | None, secret: str, message: str) -> None:
    with pytest.raises(InvalidSignature) as e:
        verify(BODY, header, secret, now=NOW)
    assert message in e.value.message
    assert e.value.status == 400
    assert e.value.code == "invalid_signature"


def test_tolerance_is_inclusive_both_ways() -> None:
    assert verify(BODY, sign(BODY, SECRET, NOW - 300), SECRET, now=NOW) == NOW - 300
    assert verify(BODY, sign(BODY, SECRET, NOW + 300), SECRET, now=NOW) == NOW + 300


def test_forged_and_stale_is_reported_as_forged() -> None:
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify(BODY, sign(BODY, "whsec_wrong", NOW - 10_000), SECRET, now=NOW)


def test_header_tolerates_spaces_upper_hex_and_other_schemes() -> None:
    sig = compute(BODY, SECRET, NOW)
    header = f" t={NOW} , v0=whatever, v1={sig.upper()} "
    assert verify(BODY, header, SECRET, now=NOW) == NOW
    assert parse_header(header) == (NOW, [sig])
