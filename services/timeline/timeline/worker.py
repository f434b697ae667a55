"""timeline on the batch path: every topic of the order in, entries, escalations and the view out."""

from __future__ import annotations

import functools
import time
from datetime import datetime
from typing import Any

from orderops.model import catalog
from orderops.model.envelope import from_json, to_json_bytes
from orderops.runtime.batch import Batch
from orderops.runtime.metrics import DUPLICATES
from timeline import domain
from timeline.app import (
    ACCURACY,
    CONTACTS,
    CONTACTS_BY_TAG,
    ESCALATIONS,
    LATENCY,
    RULES,
    entries,
    service,
    support_index,
    tag_label,
    views,
)
from timeline.records import changes_view, publishable, view_record

# Live, aging follows the wall clock and a sweep brings due orders back. Replaying
# (ORDEROPS_CLOCK=event), an order ages with its own latest event time and nothing sweeps: the same
# events then give the same escalations, whatever else the replay reads and in whatever interleaving.
LIVE = service.settings.clock == "wall"
service.enable_timers(sweep=LIVE)
TIMERS = catalog.TIMER_TOPICS[service.name]
UPSTREAM_TOPICS = {t.name for t in catalog.inputs_of(service.name) if not set(t.writers) & set(catalog.PROCESSORS)}
VIEWS_TOPIC = catalog.SUPPORT_ORDER_VIEWS


class TimelineRecords:
    """The timeline's work on one record: the order's view and entries, its timeline records and
    escalations, the newest view of the batch published once per order."""

    def apply(self, batch: Batch, record: Any) -> None:
        try:
            envelope = service.read(record.topic, record.partition, record.offset, record.key, record.value,
                                    record.headers)
            order_id = envelope.order_id
            # domain.apply works on a copy: the view it is given (kept by the batch) stays as it was.
            before = batch.load(views, order_id, from_json, record.partition)
            ticked = record.topic == TIMERS.name
            if ticked:
                now = envelope.payload["fired_at"]
            elif LIVE:
                now = service.clock.now()
            else:
                last = before["last_event_at"] if before else None
                now = max(envelope.occurred_at, last) if last else envelope.occurred_at
            view, out = domain.apply(before, envelope, record.topic, now, RULES)
            if out.duplicate:
                DUPLICATES.labels(service.name).inc()
                return
            key = order_id.encode()
            for topic, output in publishable(view, out, envelope):
                batch.send(topic.name, key, service.encode(topic, output), None, record)
            if changes_view(out):
                batch.send_latest(VIEWS_TOPIC.name, order_id, functools.partial(_view, view, envelope, now), record)
            batch.put(views, order_id, to_json_bytes(view), view, record.partition)
            for entry_key, entry in domain.entry_writes(order_id, out.entries):
                batch.put(entries, entry_key, None if entry is None else to_json_bytes(entry), entry, record.partition,
                          remember=False)
            service.schedule_in(batch, order_id, domain.next_deadline(view, now, RULES), record.partition)
            batch.then(functools.partial(_written, order_id, view, out, None if ticked else record))
        except Exception as exc:  # one bad record never stops the processor: it is dead-lettered
            self.dead_letter(batch, record, exc)

    def finish(self, batch: Batch) -> None:
        pass  # each record's work is done in apply

    def dead_letter(self, batch: Batch, record: Any, error: BaseException) -> None:
        service.dead_letter_in(batch, record, error)


def _view(view: dict, envelope: Any, now: datetime) -> tuple[bytes, bytes]:
    return envelope.order_id.encode(), service.encode(VIEWS_TOPIC, view_record(view, envelope, now))


def _written(order_id: str, view: dict, out: domain.Outputs, record: Any) -> None:
    """Once the view is written: the support index, the metrics."""
    support_index.update(order_id, view)
    if record is not None:
        origin = "upstream" if record.topic in UPSTREAM_TOPICS else "processor"
        LATENCY.labels(origin).observe(max(0.0, time.time() - record.timestamp / 1000))
    for result, reason in out.accuracy:
        ACCURACY.labels(result, reason).inc()
    for repeat, tags in out.contacts:
        CONTACTS.labels(str(repeat).lower()).inc()
        for tag in tags or ("untagged",):
            CONTACTS_BY_TAG.labels(str(repeat).lower(), tag_label(tag)).inc()
    for escalation_id, kind, _ in out.escalations:
        ESCALATIONS.labels(view["escalations"][escalation_id]["rule"], kind).inc()


join = service.batches(TimelineRecords(), (*catalog.inputs_of(service.name), TIMERS))
