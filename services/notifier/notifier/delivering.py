"""From a request to delivered messages: the notifier's flow for one order (no Kafka here).

The agent gives it the order's ledger and an ``Effects`` object (persist the ledger durably,
publish a delivery record, dead-letter a request). Every attempt is preceded by a durable ledger
write, so a crash between the far end accepting and the ledger recording it is found again: the
message is re-sent with the same idempotency key / Message-ID and recorded as in doubt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from notifier.channels import Channel, CircuitBreaker, SendError
from notifier.ledger import UNFINISHED, Delivery, Ledger, Preferences, RetryPolicy, move
from notifier.rendering import Rendered, RenderError, Templates, context
from orderops.envelope import Envelope

log = logging.getLogger("notifier")


class Effects(Protocol):
    async def persist(self, ledger: Ledger) -> None: ...

    async def publish(self, delivery: Delivery, outcome: str, rendered: Rendered | None, reason: str) -> None: ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...


@dataclass
class Dispatcher:
    channels: dict[str, Channel]
    breakers: dict[str, CircuitBreaker]
    templates: Templates
    preferences: Preferences
    retry: RetryPolicy
    coalesce: timedelta

    def accept(self, ledger: Ledger, request: Envelope, origin: tuple[str, int, int], now: datetime) -> tuple[
            Ledger, list[Delivery], list[tuple[Delivery, str]]]:
        """A new request: one delivery per channel. Returns the ledger, the deliveries to attempt now,
        and the suppressed ones with the reason (to be published). A request already in the
        ledger is a redelivery: only a delivery a crash left unfinished is attempted again."""
        payload = request.payload
        known = ledger.holding(payload["notification_id"])
        if known:
            return ledger, [d for d in known if d.status in UNFINISHED], []
        entry = {"notification_id": payload["notification_id"], "payload": payload, "origin": list(origin),
                 "event": {"event_id": request.event_id, "occurred_at": request.occurred_at,
                           "source": request.source, "type": request.type}}
        to_attempt, suppressed = [], []
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
                                                  payload["type"], (entry,)), "hold", due_at=now + self.coalesce))
            else:
                delivery = Delivery(f"{payload['notification_id']}/{channel}", channel, payload["type"], (entry,))
                ledger = ledger.put(delivery)
                to_attempt.append(delivery)
        return ledger, to_attempt, suppressed

    async def attempt(self, ledger: Ledger, delivery: Delivery, now: datetime, effects: Effects) -> Ledger:
        in_doubt = delivery.status == "attempting" or delivery.doubtful
        try:
            rendered = self.render(delivery)
        except RenderError as exc:
            return await self._give_up(ledger, move(delivery, "attempt"), None, str(exc), effects)
        breaker = self.breakers[delivery.channel]
        if not breaker.allows():
            waiting = move(move(delivery, "attempt"), "deferred", doubtful=in_doubt,
                           due_at=now + timedelta(seconds=breaker.retry_in()) + timedelta(milliseconds=100),
                           last_error=f"{delivery.channel} circuit open after repeated failures")
            return ledger.put(waiting)
        delivery = move(delivery, "attempt", attempts=delivery.attempts + 1, in_doubt=delivery.in_doubt + in_doubt,
                        doubtful=False)
        ledger = ledger.put(delivery)
        await effects.persist(ledger)  # durable before the far end hears anything
        if in_doubt:
            await effects.publish(delivery, "IN_DOUBT", rendered, "the previous attempt's outcome is unknown (the "
                                  "process stopped after sending began): sent again with the same idempotency key")
        try:
            await self.channels[delivery.channel].send(delivery.delivery_id, self._recipient(delivery), rendered,
                                                       self.document(delivery))
        except SendError as exc:
            breaker.failed()
            if exc.permanent or delivery.attempts >= self.retry.max_attempts:
                why = str(exc) if exc.permanent else f"gave up after {delivery.attempts} attempts: {exc}"
                return await self._give_up(ledger, delivery, rendered, why, effects)
            log.warning("notifier: %s attempt %d failed, retrying%s: %s", delivery.delivery_id, delivery.attempts,
                        " (announced as in doubt)" if exc.in_doubt else "", exc)
            return ledger.put(move(delivery, "failed", due_at=self.retry.next_attempt(delivery, now),
                                   last_error=str(exc), doubtful=exc.in_doubt))
        breaker.succeeded()
        sent = move(delivery, "accepted", due_at=None, last_error="")
        await effects.publish(sent, "SENT", rendered, "")
        return ledger.put(sent)

    async def _give_up(self, ledger: Ledger, delivery: Delivery, rendered: Rendered | None, reason: str,
                       effects: Effects) -> Ledger:
        failed = move(delivery, "gave_up", due_at=None, last_error=reason)
        await effects.publish(failed, "FAILED", rendered, reason)
        await effects.dead_letter(failed, reason)
        return ledger.put(failed)

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
