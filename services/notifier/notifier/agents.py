"""notifier's agent: requests and timer ticks in, messages out, the ledger durable in between."""

from __future__ import annotations

import functools
from datetime import datetime

from prometheus_client import Counter

from notifier.app import CONCURRENCY, dispatcher, ledgers, service
from notifier.delivering import claims_of, request_envelope
from notifier.ledger import Delivery, Ledger
from notifier.rendering import Rendered
from orderops.catalog import NOTIFICATIONS_DELIVERIES, NOTIFICATIONS_REQUESTS, TIMER_TOPICS
from orderops.lanes import Lanes
from orderops.metrics import DUPLICATES
from orderops.service import DeliveryError

TIMERS = TIMER_TOPICS[service.name]
DELIVERIES = Counter("orderops_notifications_total", "Notification deliveries by type, channel and outcome",
                     ["type", "channel", "outcome"])


class KafkaEffects:
    """How the dispatcher's effects reach Kafka: the ledger via the table (flushed), records via
    notifications.deliveries, failures via notifier.dlq."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id

    async def persist(self, ledger: Ledger) -> None:
        ledgers[self.order_id] = ledger.to_json()
        await service.persist()

    async def publish(self, delivery: Delivery, outcome: str, rendered: Rendered | None, reason: str) -> None:
        lines, amounts = claims_of(delivery)
        suffix = f"{outcome.lower()}:{delivery.attempts}" if outcome == "IN_DOUBT" else outcome.lower()
        now = service.clock.now()
        record = {"event_id": f"{delivery.delivery_id}:{suffix}", "order_id": self.order_id, "occurred_at": now,
                  "source": service.name, "payload": ("orderops.notifications.NotificationDelivered", {
                      "delivery_id": delivery.delivery_id, "notification_ids": list(delivery.notification_ids),
                      "type": delivery.type, "channel": delivery.channel, "outcome": outcome,
                      "attempts": delivery.attempts, "subject": rendered.subject if rendered else "",
                      "body": rendered.body if rendered else "", "lines": lines, "amounts": amounts,
                      "reason": reason})}
        await service.emit_all(self.order_id, [(NOTIFICATIONS_DELIVERIES, record)])
        DELIVERIES.labels(delivery.type, delivery.channel, outcome.lower()).inc()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        for entry in delivery.requests:
            topic, partition, offset = entry["origin"]
            value = service.codec.encode(NOTIFICATIONS_REQUESTS.value_schema,
                                         request_envelope(self.order_id, entry).to_record())
            await service.dead_letter_bytes(
                self.order_id.encode(), value, [("delivery-id", delivery.delivery_id.encode())], topic=topic,
                partition=partition, offset=offset,
                error=DeliveryError(f"{delivery.channel} delivery {delivery.delivery_id} failed: {reason}"))


service.enable_timers()


@service.app.agent(service.topic(NOTIFICATIONS_REQUESTS, TIMERS), name="notifier.deliver")
async def deliver(stream):
    """Up to ORDEROPS_NOTIFIER_CONCURRENCY orders' events at once, each order's one after another
    (requests and timer ticks are keyed by order id): a delivery is round trips — the ledger's
    write acknowledged, then the SMTP conversation or the webhook — and one order at a time left
    the notifier waiting on them."""
    lanes = Lanes(CONCURRENCY)
    try:
        async for event in service.in_order(stream.noack()):
            await lanes.submit(event.message.key, functools.partial(handled, event))
        await lanes.drain()
    finally:
        await lanes.cancel()


async def handled(event) -> None:
    """Handle, then acknowledge; not when cancelled (stopping): the event is read again, and its
    delivery, persisted as attempting, is attempted again and announced in doubt."""
    await handle(event)
    event.ack()


async def handle(event) -> None:
    async with service.dead_letter_on_error(event):
        envelope = service.decode(event)
        stored = ledgers.get(envelope.order_id)
        ledger = Ledger.from_json(stored) if stored else Ledger(envelope.order_id)
        now: datetime = service.clock.now()
        effects = KafkaEffects(envelope.order_id)
        if event.message.topic == TIMERS.name:
            due = ledger.due(envelope.payload["fired_at"])
        else:
            message = event.message
            before = ledger
            ledger, due, suppressed = dispatcher.accept(ledger, envelope, (message.topic, message.partition,
                                                                           message.offset), now)
            if ledger is before and not due:
                DUPLICATES.labels(service.name).inc()
                if stored:  # written again: the changelog may lack it (Service.rewrite_on_duplicate)
                    ledgers[envelope.order_id] = stored
                return
            for delivery, reason in suppressed:
                await effects.publish(delivery, "SUPPRESSED", None, reason)
        for delivery in due:
            ledger = await dispatcher.attempt(ledger, ledger.delivery(delivery.delivery_id), now, effects)
        ledgers[envelope.order_id] = ledger.to_json()
        service.schedule(envelope.order_id, ledger.next_deadline())
