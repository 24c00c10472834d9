"""Signed webhooks: HMAC-SHA256 over `timestamp.body`, retried with back-off, then dead-lettered.

Each POST carries `Stepguard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<body>")>` and `Stepguard-Event-Id` (the same id on every retry, for idempotency). A
receiver checks the signature in constant time and refuses a timestamp outside its tolerance
(replay); `verify_webhook` does both. Every attempt is signed afresh. A 2xx ends delivery; a
network error, timeout, 408, 425, 429 or 5xx is retried after `backoff * 2**n` seconds (capped,
with jitter); any other status, or the last retry failing, writes a dead letter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from stepguard.core.errors import VerificationFailed

log = logging.getLogger("stepguard.notifications")
SIGNATURE_HEADER = "Stepguard-Signature"
EVENT_HEADER = "Stepguard-Event-Id"
DEFAULT_TOLERANCE = 300.0
_RETRY_STATUS = frozenset({408, 425, 429})


def sign_webhook(secret: bytes, body: bytes, *, timestamp: int) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_webhook(secret: bytes, body: bytes, header: str, *, now: float,
                   tolerance: float = DEFAULT_TOLERANCE) -> int:
    """Check a received signature; return its timestamp or raise `VerificationFailed`."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        raise VerificationFailed("the signature has no timestamp") from None
    if abs(now - timestamp) > tolerance:
        raise VerificationFailed("the signature's timestamp is outside the tolerance")
    expected = sign_webhook(secret, body, timestamp=timestamp).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, parts.get("v1", "")):
        raise VerificationFailed("the signature does not match")
    return timestamp


@dataclass(frozen=True, slots=True)
class DeadLetter:
    target: str
    event: str
    payload: str
    attempts: int
    last_error: str


@dataclass(slots=True)
class Webhook:
    """One endpoint: delivers a payload with retries, then hands a dead letter to `dead`."""

    url: str
    secret: bytes
    timeout: float
    retries: int
    backoff: float
    max_backoff: float
    dead: Callable[[DeadLetter], None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    client: httpx.Client | None = None

    def deliver(self, event_id: str, kind: str, payload: dict[str, Any]) -> bool:
        body = json.dumps({"id": event_id, **payload}, sort_keys=True,
                          separators=(",", ":")).encode()
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self._delay(attempt))
            retry, error = self._attempt(event_id, body)
            if not error:
                return True
            if not retry:
                break
        log.warning("webhook %s: giving up on %s after %d attempts (%s)", _host(self.url),
                    event_id, attempt + 1, error)
        # the target is named by its host only: a webhook URL may carry a secret in its path
        self.dead(DeadLetter(_host(self.url), kind, body.decode(), attempt + 1, error[:512]))
        return False

    def _attempt(self, event_id: str, body: bytes) -> tuple[bool, str]:
        """(retry?, error); error "" means delivered."""
        headers = {"Content-Type": "application/json", EVENT_HEADER: event_id,
                   SIGNATURE_HEADER: sign_webhook(self.secret, body,
                                                  timestamp=int(self.clock())),
                   "User-Agent": "Stepguard-Webhook/1"}
        client = self.client or httpx.Client(trust_env=False, follow_redirects=False)
        try:
            response = client.post(self.url, content=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            return True, type(exc).__name__
        finally:
            if self.client is None:
                client.close()
        if 200 <= response.status_code < 300:
            return False, ""
        status = response.status_code
        return status in _RETRY_STATUS or status >= 500, f"HTTP {status}"

    def _delay(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return delay * (0.5 + random.random() / 2)  # jitter: receivers recovering are not stampeded


def _host(url: str) -> str:
    return str(httpx.URL(url).host)
