"""Delivery channels: email over SMTP and signed webhooks, each behind its own circuit breaker."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import aiohttp
import aiosmtplib

from notifier.rendering import Rendered

SIGNATURE_HEADER = "X-Orderops-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class SendError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Channel(Protocol):
    name: str

    async def send(self, delivery_id: str, recipient: dict, rendered: Rendered, document: dict) -> None: ...


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>``: receivers recompute it, and refuse
    a timestamp outside their tolerance so a captured request cannot be replayed later."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class SignatureError(Exception):
    pass


def verify(secret: bytes, header: str | None, body: bytes, now: float, tolerance: float = 300) -> None:
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError) as exc:
        raise SignatureError(f"malformed {SIGNATURE_HEADER}: {header!r}") from exc
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance:.0f}s from now: refused as a replay")
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise SignatureError("signature does not match the body")


def message_id(delivery_id: str, domain: str) -> str:
    """Deterministic: a re-sent email carries the same Message-ID, so mail systems can drop it."""
    return f"<{hashlib.sha256(delivery_id.encode()).hexdigest()[:40]}@{domain}>"


@dataclass
class EmailChannel:
    host: str
    port: int
    sender: str
    timeout: float
    username: str | None = None
    password: str | None = None
    start_tls: bool = False
    name: str = "email"

    async def send(self, delivery_id: str, recipient: dict, rendered: Rendered, document: dict) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = recipient["email"]
        message["Subject"] = rendered.subject
        message["Message-ID"] = message_id(delivery_id, self.sender.rsplit("@", 1)[-1])
        message["X-Orderops-Delivery-Id"] = delivery_id
        message["Content-Language"] = rendered.locale
        message.set_content(rendered.body)
        try:
            await aiosmtplib.send(message, hostname=self.host, port=self.port, timeout=self.timeout,
                                  username=self.username, password=self.password, start_tls=self.start_tls)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise SendError(f"SMTP server refused {recipient['email']}: {exc}", permanent=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise SendError(f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendError(f"SMTP server {self.host}:{self.port} unreachable: {exc}", permanent=False) from exc


@dataclass
class WebhookChannel:
    url: str
    secret: bytes
    timeout: float
    name: str = "webhook"

    async def send(self, delivery_id: str, recipient: dict, rendered: Rendered, document: dict) -> None:
        body = json.dumps({**document, "subject": rendered.subject, "body": rendered.body, "locale": rendered.locale},
                          sort_keys=True, default=str).encode()
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: delivery_id,
                   SIGNATURE_HEADER: sign(self.secret, body, int(time.time()))}
        try:
            # A session per message: notifications are few, and nothing is left open at shutdown.
            async with aiohttp.ClientSession() as session, session.post(
                    self.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                if response.status < 300:
                    return
                text = (await response.text())[:200]
                permanent = 400 <= response.status < 500 and response.status not in (408, 409, 425, 429)
                raise SendError(f"{self.url} answered {response.status}: {text}", permanent=permanent)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SendError(f"{self.url} unreachable: {type(exc).__name__}: {exc}", permanent=False) from exc


class CircuitBreaker:
    """Per channel: after ``threshold`` consecutive failures the channel is not tried for
    ``cooldown`` seconds (deliveries wait, their attempts are not spent); then one trial decides."""

    def __init__(self, threshold: int, cooldown: float, clock=time.monotonic) -> None:
        self.threshold, self.cooldown, self.clock = threshold, cooldown, clock
        self.failures = 0
        self.open_until: float | None = None

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if self.clock() < self.open_until else "half_open"

    def allows(self) -> bool:
        return self.state != "open"

    def retry_in(self) -> float:
        return max(0.0, (self.open_until or 0.0) - self.clock())

    def succeeded(self) -> None:
        self.failures, self.open_until = 0, None

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold or self.state == "half_open":
            self.open_until = self.clock() + self.cooldown
