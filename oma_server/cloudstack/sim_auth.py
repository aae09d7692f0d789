"""The simulator's request authentication: CloudStack's HMAC-SHA1 signatures (signatureVersion 3 with `expires`,
and the legacy form), checked the way ApiServer.verifyRequest checks them."""

from __future__ import annotations

import base64
import hashlib
import hmac
from contextlib import suppress
from datetime import UTC, datetime
from urllib.parse import quote

EXPIRES_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z")


# ---- signatures -------------------------------------------------------------------------------------
def compute_signature(params: dict[str, str], secret_key: str, *, java_encoding: bool = False) -> str:
    """CloudStack's request signature: sorted `name=urlencoded(value)` joined by &, lowercased, HMAC-SHA1.

    CloudStack encodes with java.net.URLEncoder (+ replaced by %20); clients such as `cs` use Python's
    quote(value, safe="*"). The two differ only for "~"; `java_encoding` selects CloudStack's own form.
    """
    parts = []
    for name, value in sorted((k, v) for k, v in params.items() if k.lower() != "signature"):
        encoded = quote(value, safe="*")
        if java_encoding:
            encoded = encoded.replace("~", "%7E")
        parts.append(f"{name}={encoded}")
    digest = hmac.new(secret_key.encode(), "&".join(parts).lower().encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _parse_expires(value: str) -> datetime | None:
    for fmt in EXPIRES_FORMATS:
        with suppress(ValueError):
            return datetime.strptime(value.replace("Z", "+0000"), fmt)
    return None


def verify_request(params: dict[str, str], api_key: str, secret_key: str) -> str | None:
    """None if the request is authentic and current, else why not (for the simulator's log only)."""
    lowered = {k.lower(): v for k, v in params.items()}
    if not hmac.compare_digest(lowered.get("apikey", ""), api_key):
        return "unknown api key"
    signature = lowered.get("signature")
    if not signature:
        return "no signature"
    if not any(
        hmac.compare_digest(signature, compute_signature(params, secret_key, java_encoding=java))
        for java in (False, True)
    ):
        return "signature mismatch"
    if lowered.get("signatureversion") == "3":
        expires = _parse_expires(lowered.get("expires", ""))
        if expires is None:
            return "signatureVersion 3 without a valid expires"
        if expires < datetime.now(UTC):
            return "request expired"
    return None
