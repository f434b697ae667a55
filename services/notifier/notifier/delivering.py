"""From a request to delivered messages: the notifier's flow for one order (no Kafka here).

An attempt has two halves with a durable write between them: ``begin`` marks the delivery
attempting (and the caller makes that ledger durable), ``send`` talks to the far end, ``finish``
records what came of it and says what to publish. A crash between the far end accepting and the
ledger recording it is so found again: the message is re-sent with the same idempotency key /
Message-ID and announced in doubt. A ``Publication`` of outcome FAILED also dead-letters the
delivery's requests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from notifier.channels import Channel, CircuitBreaker, SendError
from notifier.ledger import UNFINISHED, Delivery, Ledger, Preferences, RetryPolicy, move
from notifier.rendering import Rendered, RenderError, Templates, context
from orderops.model.envelope import Envelope

log = logging.getLogger("notifier")


IN_DOUBT_REASON = ("the previous attempt's outcome is unknown (the process stopped after sending began): sent "
                   "again with the same idempotency key")


@dataclass(frozen=True)
class Publication:
    """A delivery record to publish on notifications.deliveries."""

    delivery: Delivery
    outcome: str  # SENT, FAILED, SUPPRESSED, IN_DOUBT
    rendered: Rendered | None
    reason: str


@dataclass(frozen=True)
class Attempt:
    """A delivery marked attempting, to be sent once that is durable."""

    before: Delivery  # as it was (a deferral goes back to its counts)
    delivery: Delivery  # attempting
    rendered: Rendered
    in_doubt: bool  # an earlier attempt's outcome is unknown


@dataclass(frozen=True)
class Sent:
    """What came of a send: done (neither field set), an error, or not tried (the circuit opened)."""

    error: SendError | None = None
    deferred: bool = False


@dataclass
class Dispatcher:
    channels: dict[str, Channel]
    breakers: dict[str, CircuitBreaker]
    templates: Templates
    preferences: Preferences
    retry: RetryPolicy
    coalesce: timedelta
    # How long after a request was written one of an earlier cause may still come from a processor
    # that got to its event later (Ledger.due sends an order's messages in cause order).
    settle: timedelta = timedelta(0)

    def accept(self, ledger: Ledger, request: Envelope, origin: tuple[str, int, int], now: datetime,
               written_at: datetime | None = None, wall: datetime | None = None) -> tuple[
            Ledger, list[Delivery], list[tuple[Delivery, str]]]:
        """A new request: one delivery per channel. Returns the ledger, the deliveries ready to
        attempt (``Ledger.due`` says when and in what order), and the suppressed ones with the
        reason (to be published). A request already in the ledger is a redelivery: only a delivery
        a crash left unfinished is attempted again. ``written_at``: the request's Kafka timestamp;
        a request read within ``settle`` of it (on the ``wall`` clock) waits for earlier causes;
        one read later (a backlog) does not, since whatever came before it was written by then."""
        payload = request.payload
        known = ledger.holding(payload["notification_id"])
        if known:
            return ledger, [d for d in known if d.status in UNFINISHED], []
        entry = {"notification_id": payload["notification_id"], "payload": payload, "origin": list(origin),
                 "event": {"event_id": request.event_id, "occurred_at": request.occurred_at,
                           "source": request.source, "type": request.type}}
        to_attempt, suppressed = [], []
        settles_at = None
        if written_at is not None and self.settle > timedelta(0) and written_at + self.settle > (wall or now):
            settles_at = written_at + self.settle
        for channel in self.channels:
            reason = self.preferences.suppression(payload["customer"]["customer_id"], channel, request.occurred_at)
            if reason:
                delivery = move(Delivery(f"{payload['notification_id']}/{channel}", channel, payload["type"], (entry,)),
                                "suppress", last_error=reason)
                ledger = ledger.put(delivery)
                suppressed.append((delivery, reason))
                continue
            held = next((d for d in ledger.deliveries if d.status == "held" and d.channel == channel
                         and d.type == payload["type"]), None)
            if held is not None:
                ledger = ledger.put(move(held, "merge", requests=(*held.requests, entry)))
            elif self.coalesce > timedelta(0):
                ledger = ledger.put(move(Delivery(f"{payload['notification_id']}/{channel}", channel,
                                                  payload["type"], (entry,), settles_at=settles_at), "hold",
                                         due_at=now + self.coalesce))
            else:
                delivery = Delivery(f"{payload['notification_id']}/{channel}", channel, payload["type"], (entry,),
                                    settles_at=settles_at)
                ledger = ledger.put(delivery)
                to_attempt.append(delivery)
        return ledger, to_attempt, suppressed

    def begin(self, ledger: Ledger, delivery: Delivery, now: datetime) -> tuple[Ledger, Attempt | None,
                                                                              list[Publication]]:
        """The first half of an attempt, before the far end hears anything: the delivery marked
        attempting (the ledger must be durable before ``send``), or settled at once (a message that
        cannot be rendered gives up; an open circuit defers it)."""
        in_doubt = delivery.status == "attempting" or delivery.doubtful
        try:
            rendered = self.render(delivery)
        except RenderError as exc:
            failed = move(move(delivery, "attempt"), "gave_up", due_at=None, last_error=str(exc))
            return ledger.put(failed), None, [Publication(failed, "FAILED", None, str(exc))]
        breaker = self.breakers[delivery.channel]
        if breaker.state == "open":
            return ledger.put(self._deferred(delivery, in_doubt, now)), None, []
        attempting = move(delivery, "attempt", attempts=delivery.attempts + 1,
                          in_doubt=delivery.in_doubt + in_doubt, doubtful=False)
        published = [Publication(attempting, "IN_DOUBT", rendered, IN_DOUBT_REASON)] if in_doubt else []
        return ledger.put(attempting), Attempt(delivery, attempting, rendered, in_doubt), published

    async def send(self, attempt: Attempt) -> Sent:
        """The second half's I/O: the message to the far end, unless its circuit opened meanwhile
        (or, half open, another send is its one trial)."""
        delivery = attempt.delivery
        breaker = self.breakers[delivery.channel]
        if not breaker.allows():
            return Sent(deferred=True)
        try:
            await self.channels[delivery.channel].send(delivery.delivery_id, self._recipient(delivery),
                                                       attempt.rendered, self.document(delivery))
        except SendError as exc:
            if exc.permanent:  # the far end answered (a refused recipient, a 4xx): the channel works
                breaker.succeeded()
            else:
                breaker.failed()
            return Sent(error=exc)
        breaker.succeeded()
        return Sent()

    def finish(self, ledger: Ledger, attempt: Attempt, sent: Sent, now: datetime) -> tuple[Ledger, list[Publication]]:
        """The attempt's outcome in the ledger, and what to publish of it."""
        delivery = attempt.delivery
        if sent.deferred:
            return ledger.put(self._deferred(attempt.before, attempt.in_doubt, now)), []
        exc = sent.error
        if exc is None:
            accepted = move(delivery, "accepted", due_at=None, last_error="")
            return ledger.put(accepted), [Publication(accepted, "SENT", attempt.rendered, "")]
        if exc.permanent or delivery.attempts >= self.retry.max_attempts:
            why = str(exc) if exc.permanent else f"gave up after {delivery.attempts} attempts: {exc}"
            failed = move(delivery, "gave_up", due_at=None, last_error=why)
            return ledger.put(failed), [Publication(failed, "FAILED", attempt.rendered, why)]
        log.warning("notifier: %s attempt %d failed, retrying%s: %s", delivery.delivery_id, delivery.attempts,
                    " (announced as in doubt)" if exc.in_doubt else "", exc)
        return ledger.put(move(delivery, "failed", due_at=self.retry.next_attempt(delivery, now),
                               last_error=str(exc), doubtful=exc.in_doubt)), []

    def _deferred(self, delivery: Delivery, in_doubt: bool, now: datetime) -> Delivery:
        """Not attempted (its circuit is open) and not counted as an attempt; a doubt is kept."""
        breaker = self.breakers[delivery.channel]
        return move(move(delivery, "attempt"), "deferred", doubtful=in_doubt,
                    due_at=now + timedelta(seconds=breaker.retry_in()) + timedelta(milliseconds=100),
                    last_error=f"{delivery.channel} circuit open after repeated failures")

    def render(self, delivery: Delivery) -> Rendered:
        first = delivery.requests[0]["payload"]
        return self.templates.render(delivery.type, first["customer"].get("locale") or "en", context(delivery.requests))

    def document(self, delivery: Delivery) -> dict:
        """What a webhook receiver gets besides subject and body: the facts the message claims."""
        first = delivery.requests[0]["payload"]
        ctx = context(delivery.requests)
        return {"delivery_id": delivery.delivery_id, "notification_ids": list(delivery.notification_ids),
                "type": delivery.type, "order_id": ctx["order_id"], "customer": first["customer"],
                "lines": ctx["lines"], "amounts": ctx["amounts"],
                "tracking_urls": [p["tracking_url"] for p in ctx["requests"] if p.get("tracking_url")]}

    @staticmethod
    def _recipient(delivery: Delivery) -> dict:
        return delivery.requests[0]["payload"]["customer"]


def claims_of(delivery: Delivery) -> tuple[list[dict], list[dict]]:
    ctx = context(delivery.requests)
    return ctx["lines"], ctx["amounts"]


def request_envelope(order_id: str, entry: dict) -> Envelope:
    """The request as it arrived (to dead-letter it whole)."""
    return Envelope(order_id=order_id, payload=entry["payload"], **entry["event"])
