"""Delivery channels: email over SMTP and signed webhooks, each behind its own circuit breaker."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email import charset as email_charset
from email import policy as email_policy
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate
from typing import Protocol

import aiohttp
import aiosmtplib

from notifier.rendering import Rendered

SIGNATURE_HEADER = "X-Orderops-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


# Anything shaped like an e-mail address: what a mail server's answer echoes of the recipient.
ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")


def without_addresses(text: str) -> str:
    """``text`` with every e-mail address replaced: a send's error goes to the log, to the delivery
    record's ``reason`` on notifications.deliveries and to a dead letter's ``error`` header, none of
    which may carry a customer's address (the server's answer to RCPT names it)."""
    return ADDRESS.sub("<address>", text)


class SendError(Exception):
    """A send that failed. ``permanent``: retrying cannot help. ``in_doubt``: the message had left
    (the far end stopped answering after the request was sent), so it may have arrived: the next
    attempt is announced IN_DOUBT, and receivers drop it by its idempotency key / Message-ID. Its
    message never holds an e-mail address (``without_addresses``), whatever the far end said."""

    def __init__(self, message: str, *, permanent: bool, in_doubt: bool = False) -> None:
        super().__init__(without_addresses(message))
        self.permanent, self.in_doubt = permanent, in_doubt


class Channel(Protocol):
    name: str

    async def send(self, delivery_id: str, recipient: dict, rendered: Rendered, document: dict) -> None: ...

    async def close(self) -> None: ...


def sign(secrets: bytes | Sequence[bytes], body: bytes, timestamp: int) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`` — one ``v1`` per active secret (two
    while a secret is rotated: receivers accept either, and switch to the new one at their pace).
    Receivers recompute it, and refuse a timestamp outside their tolerance so a captured request
    cannot be replayed later."""
    keys = [secrets] if isinstance(secrets, bytes) else list(secrets)
    signed = f"{timestamp}.".encode() + body
    return ",".join([f"t={timestamp}", *(f"v1={hmac.new(k, signed, hashlib.sha256).hexdigest()}" for k in keys)])


class SignatureError(Exception):
    pass


def verify(secrets: bytes | Sequence[bytes], header: str | None, body: bytes, now: float,
           tolerance: float = 300) -> None:
    """Accept the request if any of its signatures was made with any of ``secrets``."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    try:
        parts = [part.split("=", 1) for part in header.split(",")]
        timestamp = int(next(value for key, value in parts if key == "t"))
        given = [value for key, value in parts if key == "v1"]
    except (ValueError, StopIteration) as exc:
        raise SignatureError(f"malformed {SIGNATURE_HEADER}: {header[:200]!r}") from exc
    if not given:
        raise SignatureError(f"{SIGNATURE_HEADER} has no v1 signature")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance:.0f}s from now: refused as a replay")
    keys = [secrets] if isinstance(secrets, bytes) else list(secrets)
    expected = [part.split("=", 1)[1] for part in sign(keys, body, timestamp).split(",")[1:]]
    # Every pair compared (constant time each), so timing does not tell which secret matched.
    matches = [hmac.compare_digest(e, g) for e in expected for g in given]
    if not any(matches):
        raise SignatureError("signature does not match the body")


def verified_delivery_id(secrets: bytes | Sequence[bytes], header: str | None, body: bytes, now: float,
                         tolerance: float = 300) -> str:
    """What a receiver de-duplicates on: the ``delivery_id`` inside the signed body, once the
    signature and its timestamp are verified (``verify``). Not the ``Idempotency-Key`` header,
    which the signature does not cover: a request captured within the tolerance and replayed under
    a new key is still this delivery. A body without one is a ValueError."""
    verify(secrets, header, body, now, tolerance)
    try:
        delivery_id = json.loads(body)["delivery_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("the signed body has no delivery_id") from exc
    if not isinstance(delivery_id, str) or not delivery_id:
        raise ValueError("the signed body has no delivery_id")
    return delivery_id


def message_id(delivery_id: str, domain: str) -> str:
    """Deterministic: a re-sent email carries the same Message-ID, so mail systems can drop it."""
    return f"<{hashlib.sha256(delivery_id.encode()).hexdigest()[:40]}@{domain}>"


# Quoted-printable keeps a mostly-ASCII body readable in a mailbox's raw view (base64 would not).
UTF8_QUOTED_PRINTABLE = email_charset.Charset("utf-8")
UTF8_QUOTED_PRINTABLE.body_encoding = email_charset.QP
SMTP_LINES = email_policy.compat32.clone(linesep="\r\n")


def compose_email(sender: str, to: str, rendered: Rendered, delivery_id: str, sent_at: float | None = None) -> bytes:
    """The message as the SMTP server gets it: the plain text and, when rendered, the HTML part of
    the same message (``multipart/alternative``), dated ``sent_at`` (now). Built with the compat32
    classes: ``EmailMessage`` parses every header it is given and cost 1.25 ms per message, a
    quarter of the notifier's CPU per delivery; this costs 0.35 with the flattening. An address that
    is not ASCII (RFC 6531) keeps ``EmailMessage``, whose SMTPUTF8 policy writes it as it is. A header
    value with a line break would let a request's data add headers of its own (say a ``Bcc``):
    refused, permanently."""
    headers = {"From": sender, "To": to, "Subject": rendered.subject, "Date": formatdate(sent_at, usegmt=True),
               "Message-ID": message_id(delivery_id, sender.rsplit("@", 1)[-1]),
               "X-Orderops-Delivery-Id": delivery_id, "Content-Language": rendered.locale}
    broken = [name for name, value in headers.items() if "\r" in value or "\n" in value]
    if broken:
        raise SendError(f"cannot send delivery {delivery_id}: {', '.join(broken)} would contain a line break",
                        permanent=True)
    if not internationalized(sender, to):
        message: MIMEText | MIMEMultipart = MIMEText(rendered.body, "plain", UTF8_QUOTED_PRINTABLE)
        if rendered.html:
            message = MIMEMultipart("alternative", _subparts=[message, MIMEText(rendered.html, "html",
                                                                                UTF8_QUOTED_PRINTABLE)])
        for name, value in headers.items():
            message[name] = value if value.isascii() else Header(value, "utf-8", header_name=name)
        return message.as_bytes(policy=SMTP_LINES)
    modern = EmailMessage()
    modern.set_content(rendered.body)  # first: it drops every Content-* header set before it
    if rendered.html:
        modern.add_alternative(rendered.html, subtype="html")
    for name, value in headers.items():
        modern[name] = value
    return modern.as_bytes(policy=email_policy.SMTPUTF8)


def internationalized(*addresses: str) -> bool:
    return not all(address.isascii() for address in addresses)


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
    # Connections kept open between messages: a new one per message (connect, EHLO, STARTTLS, login,
    # QUIT) made a delivery several round trips longer. One per message being sent at
    # once (the notifier's ORDEROPS_NOTIFIER_CONCURRENCY bounds them), each back in the pool after
    # its message; one a command failed on is closed.
    _idle: list[aiosmtplib.SMTP] = field(default_factory=list, init=False, repr=False)

    async def _connection(self) -> tuple[aiosmtplib.SMTP, bool]:
        """An idle kept connection (and True: the server may have closed it while it was idle), else a new one."""
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
            client.close()
        client = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=self.timeout, username=self.username,
                                 password=self.password, start_tls=self.start_tls)
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendError(f"SMTP server {self.host}:{self.port} unreachable: {exc}", permanent=False) from exc
        return client, False

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def send(self, delivery_id: str, recipient: dict, rendered: Rendered, document: dict) -> None:
        """MAIL and RCPT first, then DATA. Only a failure once DATA began leaves the message's fate
        unknown."""
        data = compose_email(self.sender, recipient["email"], rendered, delivery_id)
        client = await self._envelope(recipient["email"], internationalized(self.sender, recipient["email"]))
        try:
            await self._command(client, client.data(data), recipient["email"])
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendError(f"SMTP server {self.host}:{self.port} stopped answering while the message was sent "
                            f"({type(exc).__name__}: {exc}): it may have arrived", permanent=False, in_doubt=True) from exc
        self._idle.append(client)

    async def _envelope(self, to: str, utf8: bool) -> aiosmtplib.SMTP:
        """MAIL and RCPT on a kept connection. One the server closed while it was idle fails here,
        before anything of the message left: it is replaced, with no NOOP before each message."""
        options, encoding = (["SMTPUTF8"], "utf-8") if utf8 else ([], "ascii")
        while True:
            client, kept = await self._connection()
            try:
                await self._command(client, client.mail(self.sender, options=options, encoding=encoding), to)  # EHLO too
                if utf8 and not client.supports_extension("smtputf8"):
                    client.close()
                    raise SendError(f"SMTP server {self.host}:{self.port} does not offer SMTPUTF8, which the "
                                    "recipient's address (not ASCII) needs", permanent=True)
                await self._command(client, client.rcpt(to, encoding=encoding), to)
                return client
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                if not kept:
                    raise SendError(f"SMTP server {self.host}:{self.port} stopped answering before the message was "
                                    f"sent ({type(exc).__name__}: {exc})", permanent=False) from exc

    @staticmethod
    async def _command(client: aiosmtplib.SMTP, command: Awaitable, to: str) -> None:
        """One SMTP command. Whatever fails, the connection is closed (the next message starts a new
        session on another); an answer with an error code is a SendError, permanent for 5xx."""
        try:
            await command
        except BaseException as exc:
            client.close()
            if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
                raise SendError(f"SMTP server refused the recipient: {exc.code} {exc.message}", permanent=True) from None
            if isinstance(exc, aiosmtplib.SMTPResponseException):
                raise SendError(f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600) from exc
            raise


# Seconds an idle webhook connection is kept. Short, so that the receiver is not the one to close
# it (servers keep idle connections 2 s and more): a request sent on a connection the far end has
# just closed fails after it left, and would have to be announced in doubt.
WEBHOOK_KEEPALIVE_SECONDS = 1.0


@dataclass
class WebhookChannel:
    url: str
    secrets: Callable[[], list[bytes]]  # the active signing secrets, read at each send (rotation needs no restart)
    timeout: float
    name: str = "webhook"
    # One session, its connections kept between requests: a session and a connection per message
    # cost more CPU than the rest of a delivery.
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(keepalive_timeout=WEBHOOK_KEEPALIVE_SECONDS))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def send(self, delivery_id: str, recipient: dict, rendered: Rendered, document: dict) -> None:
        body = json.dumps({**document, "subject": rendered.subject, "body": rendered.body, "locale": rendered.locale},
                          sort_keys=True, default=str).encode()
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: delivery_id,
                   SIGNATURE_HEADER: sign(self.secrets(), body, int(time.time()))}
        try:
            async with self._client().post(self.url, data=body, headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                if response.status < 300:
                    return
                text = (await response.text())[:200]
                permanent = 400 <= response.status < 500 and response.status not in (408, 409, 425, 429)
                raise SendError(f"{self.url} answered {response.status}: {text}", permanent=permanent)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise SendError(f"{self.url} unreachable: {type(exc).__name__}: {exc}", permanent=False) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Connected, so the request may have been read and acted on before the answer was lost.
            raise SendError(f"{self.url} gave no answer after the request was sent ({type(exc).__name__}: {exc}): "
                            "it may have arrived", permanent=False, in_doubt=True) from exc


class CircuitBreaker:
    """Per channel: after ``threshold`` consecutive failures the channel is not tried for
    ``cooldown`` seconds (deliveries wait, their attempts are not spent); then one trial decides:
    half open, ``allows`` lets one send through, and the others wait until it succeeded (closed)
    or failed (open again). A trial that tells nothing for ``cooldown`` (its send was cancelled)
    is taken as lost, and another may go."""

    def __init__(self, threshold: int, cooldown: float, clock=time.monotonic) -> None:
        self.threshold, self.cooldown, self.clock = threshold, cooldown, clock
        self.failures = 0
        self.open_until: float | None = None
        self.trial_since: float | None = None  # half open: when the one trial went

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if self.clock() < self.open_until else "half_open"

    def allows(self) -> bool:
        """Whether a send may go now; half open, the first asks is the trial."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self.clock()
        if self.trial_since is not None and now - self.trial_since < self.cooldown:
            return False
        self.trial_since = now
        return True

    def retry_in(self) -> float:
        return max(0.0, (self.open_until or 0.0) - self.clock())

    def succeeded(self) -> None:
        self.failures, self.open_until, self.trial_since = 0, None, None

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold or self.state == "half_open":
            self.open_until = self.clock() + self.cooldown
        self.trial_since = None
