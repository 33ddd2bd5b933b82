"""Standard Webhooks signatures: one recipe for what the LMS sends us and what we send back.

A message is signed as ``v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>``, where the
key is the base64-decoded part of a ``whsec_...`` secret (https://www.standardwebhooks.com).
The ``webhook-signature`` header may carry several space-separated signatures so that a sender
can rotate keys; we accept the message when any of them matches any of our keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

from grader.errors import Refused

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300  # seconds either side of now, as the issue and the spec ask


class SignatureError(Refused):
    """The message must be refused; the text says why (safe to show to the sender)."""


def decode_secret(secret: str) -> bytes:
    """Key bytes of a ``whsec_<base64>`` secret (the prefix is optional, the base64 is not)."""
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret must be 'whsec_' followed by base64") from exc
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes of key")
    return key


def parse_secrets(value: str) -> list[bytes]:
    """Keys from an environment value: one secret, or several separated by spaces or commas."""
    parts = [p for p in value.replace(",", " ").split() if p]
    return [decode_secret(p) for p in parts]


def signature(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign_headers(key: bytes, msg_id: str, body: bytes, *, now: float | None = None) -> dict:
    """The three headers that make ``body`` a signed Standard Webhooks message."""
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }


def verify(
    keys: Iterable[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
) -> str:
    """Check a message's headers against ``body``; return its ``webhook-id`` or raise.

    The timestamp is checked before the signature so that a replayed old message is refused
    whatever it carries; signatures are compared in constant time.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    sig_header = headers.get("webhook-signature")
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", stamp),
            ("webhook-signature", sig_header),
        )
        if not value
    ]
    if missing:
        raise SignatureError(f"missing header(s): {', '.join(missing)}")
    assert msg_id is not None and stamp is not None and sig_header is not None
    if len(msg_id) > 256:
        raise SignatureError("webhook-id is longer than 256 characters")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer (seconds since epoch)") from None
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise SignatureError(f"webhook-timestamp is more than {tolerance} s old (replay?)")
    if timestamp > current + tolerance:
        raise SignatureError(f"webhook-timestamp is more than {tolerance} s in the future")
    offered = [
        s.split(",", 1)[1].encode("ascii", "replace")
        for s in sig_header.split()
        if s.startswith("v1,")
    ]
    if not offered:
        raise SignatureError("webhook-signature holds no 'v1,<base64>' signature")
    for key in keys:
        expected = signature(key, msg_id, stamp, body).split(",", 1)[1].encode("ascii")
        # Compare against every offered signature, without stopping early on a match.
        if any([hmac.compare_digest(expected, candidate) for candidate in offered]):
            return msg_id
    raise SignatureError("no webhook-signature matches: wrong secret or altered body")
