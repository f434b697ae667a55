"""notifier on the batch path: requests and timer ticks in, messages out, the ledger durable in between.

A batch's records are applied first; then each order's due deliveries, in the order their causes
happened (``Ledger.due``), are marked attempting in its ledger; the batch is then written, so every
attempt is on record before the far end hears of it; then each order's sends run (``Sending``, up
to ORDEROPS_NOTIFIER_CONCURRENCY orders at once, each order's messages one after another), and what
came of them is committed with the batch's offsets. A crash in between reads the records again: an
attempt on record with no outcome is sent again with the same idempotency key and announced in doubt.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from notifier.app import CONCURRENCY, dispatcher, ledgers, service
from notifier.delivering import Attempt, Publication, claims_of, request_envelope
from notifier.ledger import Ledger
from orderops.model.catalog import NOTIFICATIONS_DELIVERIES, NOTIFICATIONS_REQUESTS, TIMER_TOPICS
from orderops.runtime.batch import Batch
from orderops.runtime.metrics import DUPLICATES
from orderops.service import DeliveryError

TIMERS = TIMER_TOPICS[service.name]
DELIVERIES = Counter("orderops_notifications_total", "Notification deliveries by type, channel and outcome",
                     ["type", "channel", "outcome"])


class NotifierRecords:
    """The notifier's work on a batch: accept each request (or tick); then, once all of an order's
    records are in, begin its due deliveries in the order their causes happened."""

    def __init__(self) -> None:
        self._touched: dict[str, Any] = {}  # order id -> its latest record of the batch in hand

    def apply(self, batch: Batch, record: Any) -> None:
        try:
            envelope = service.read(record.topic, record.partition, record.offset, record.key, record.value,
                                    record.headers)
            order_id = envelope.order_id
            ledger = batch.load(ledgers, order_id, Ledger.from_json, record.partition) or Ledger(order_id)
            if record.topic != TIMERS.name:
                before = ledger
                written_at = datetime.fromtimestamp(record.timestamp / 1000, UTC)
                ledger, due, suppressed = dispatcher.accept(ledger, envelope, (record.topic, record.partition,
                                                                               record.offset), service.clock.now(),
                                                            written_at, datetime.now(UTC))
                if ledger is before and not due:
                    DUPLICATES.labels(service.name).inc()
                    return
                for delivery, reason in suppressed:
                    publish(batch, order_id, Publication(delivery, "SUPPRESSED", None, reason), record)
                keep(batch, ledger, record.partition)
            self._touched[order_id] = record
        except Exception as exc:  # one bad record never stops the processor: it is dead-lettered
            self.dead_letter(batch, record, exc)

    def finish(self, batch: Batch) -> None:
        touched, self._touched = self._touched, {}
        for order_id, record in touched.items():
            try:
                self._begin_due(batch, order_id, record)
            except Exception as exc:
                self.dead_letter(batch, record, exc)

    def _begin_due(self, batch: Batch, order_id: str, record: Any) -> None:
        """The order's due deliveries marked attempting (sent once the batch is written)."""
        ledger = batch.load(ledgers, order_id, Ledger.from_json, record.partition) or Ledger(order_id)
        now = service.clock.now()
        sending = batch.effects.get(order_id)
        for delivery in ledger.due(now, datetime.now(UTC)):
            if isinstance(sending, Sending) and sending.has(delivery.delivery_id):
                continue
            ledger, attempt, published = dispatcher.begin(ledger, ledger.delivery(delivery.delivery_id), now)
            for publication in published:
                publish(batch, order_id, publication, record)
            if attempt is not None:
                sending = batch.effect(order_id, lambda: Sending(order_id, record.partition))
                sending.add(attempt, record)
        keep(batch, ledger, record.partition)

    def dead_letter(self, batch: Batch, record: Any, error: BaseException) -> None:
        service.dead_letter_in(batch, record, error)


class Sending:
    """One order's attempts of a batch, sent once the batch that marked them is written."""

    def __init__(self, order_id: str, partition: int) -> None:
        self.order_id, self.partition = order_id, partition
        self.attempts: list[tuple[Attempt, Any]] = []  # each with the record that made it due

    def has(self, delivery_id: str) -> bool:
        return any(attempt.delivery.delivery_id == delivery_id for attempt, _ in self.attempts)

    def add(self, attempt: Attempt, cause: Any) -> None:
        self.attempts.append((attempt, cause))

    async def run(self, after: Batch) -> None:
        """Each attempt's outcome is on its way to the broker as soon as it is known (the ledger's
        changelog record and the delivery record), not at the commit: a crash during a later send
        finds it, and only what had no outcome yet is sent again."""
        ledger = after.load(ledgers, self.order_id, Ledger.from_json, self.partition)
        for attempt, cause in self.attempts:
            outcome = await dispatcher.send(attempt)
            ledger, published = dispatcher.finish(ledger, attempt, outcome, service.clock.now())
            for publication in published:
                publish(after, self.order_id, publication, cause)
            after.put(ledgers, self.order_id, ledger.to_json_bytes(), ledger, self.partition, at_once=True)
        service.schedule_in(after, self.order_id, next_deadline(ledger), self.partition)


def keep(batch: Batch, ledger: Ledger, partition: int) -> None:
    """The order's ledger written with the batch, and its next deadline (a retry, a closing window)."""
    batch.put(ledgers, ledger.order_id, ledger.to_json_bytes(), ledger, partition)
    service.schedule_in(batch, ledger.order_id, next_deadline(ledger), partition)


def next_deadline(ledger: Ledger) -> datetime | None:
    """When the order's ledger must be looked at again. A settle window closes on the wall clock:
    live, that is the deadline; on the event clock, the next sweep (which comes at least a second
    later in wall time) looks again."""
    deadline, settling = ledger.next_deadline(), ledger.settling_until()
    if settling is not None:
        tick = settling if service.settings.clock == "wall" else service.clock.now()
        deadline = tick if deadline is None else min(deadline, tick)
    return deadline


def publish(batch: Batch, order_id: str, publication: Publication, cause: Any) -> None:
    """A delivery record on notifications.deliveries; a delivery given up also dead-letters its requests."""
    delivery, outcome, rendered = publication.delivery, publication.outcome, publication.rendered
    lines, amounts = claims_of(delivery)
    suffix = f"{outcome.lower()}:{delivery.attempts}" if outcome == "IN_DOUBT" else outcome.lower()
    record = {"event_id": f"{delivery.delivery_id}:{suffix}", "order_id": order_id, "occurred_at": service.clock.now(),
              "source": service.name, "payload": ("orderops.notifications.NotificationDelivered", {
                  "delivery_id": delivery.delivery_id, "notification_ids": list(delivery.notification_ids),
                  "type": delivery.type, "channel": delivery.channel, "outcome": outcome,
                  "attempts": delivery.attempts, "subject": rendered.subject if rendered else "",
                  "body": rendered.body if rendered else "", "lines": lines, "amounts": amounts,
                  "reason": publication.reason})}
    batch.send(NOTIFICATIONS_DELIVERIES.name, order_id.encode(), service.encode(NOTIFICATIONS_DELIVERIES, record),
               None, cause)
    batch.then(DELIVERIES.labels(delivery.type, delivery.channel, outcome.lower()).inc)
    if outcome != "FAILED":
        return
    error = DeliveryError(f"{delivery.channel} delivery {delivery.delivery_id} failed: {publication.reason}")
    for entry in delivery.requests:
        topic, partition, offset = entry["origin"]
        value = service.codec.encode(NOTIFICATIONS_REQUESTS.value_schema,
                                     request_envelope(order_id, entry).to_record())
        letter = service.dead_letter_record(order_id.encode(), value, [("delivery-id", delivery.delivery_id.encode())],
                                            topic=topic, partition=partition, offset=offset, error=error)
        if letter is not None:
            batch.send(*letter, None)


service.enable_timers()
batches = service.batches(NotifierRecords(), (NOTIFICATIONS_REQUESTS, TIMERS), concurrency=CONCURRENCY)
