"""timeline on the batch path: every topic of the order in, entries, escalations and the view out."""

from __future__ import annotations

import functools
import logging
import time
from datetime import datetime
from typing import Any

from orderops.model import catalog
from orderops.model.envelope import Envelope, from_json, to_json_bytes
from orderops.runtime.batch import Batch, StateChange
from orderops.runtime.machine import in_write_rank
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

# Live, aging follows the wall clock and a sweep brings due orders back. On event time
# (ORDEROPS_CLOCK=event: replays, `make run`'s simulated days), it follows the order's partition's
# event clock, and an order whose deadline that clock passes is judged there and then, inline
# (orderops.runtime.timers): the same records give the same escalations, live or replayed,
# whatever else the worker reads, and no later event of the order is needed.
LIVE = service.settings.clock == "wall"
service.enable_timers(sweep=LIVE, partition_clocks=not LIVE)
TIMERS = catalog.TIMER_TOPICS[service.name]
UPSTREAM_TOPICS = {t.name for t in catalog.inputs_of(service.name) if not set(t.writers) & set(catalog.PROCESSORS)}
VIEWS_TOPIC = catalog.SUPPORT_ORDER_VIEWS
DIGESTS = catalog.TIMELINE_DIGESTS
log = logging.getLogger("orderops.timeline")


class DigestPartFailed(Exception):
    """A record of a digest could not be applied (the digest is dead-lettered; its other records were)."""


class DigestedRecord:
    """A record of a digest, as if fetched from its public topic: the digest's place and time, its own bytes."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, fetched: Any, value: bytes) -> None:
        self.topic, self.value = topic, value
        self.partition, self.offset, self.key, self.timestamp = fetched.partition, fetched.offset, fetched.key, \
            fetched.timestamp
        self.headers: tuple[tuple[str, bytes], ...] = ()


class TimelineRecords:
    """The timeline's work on one record: the order's view and entries, its timeline records and
    escalations; the newest view of the batch written and published once per order."""

    def apply(self, batch: Batch, record: Any) -> None:
        if record.topic == DIGESTS.name:
            self._apply_digest(batch, record)
        elif (error := self._apply(batch, record, record)) is not None:
            self.dead_letter(batch, record, error)

    def _apply_digest(self, batch: Batch, fetched: Any) -> None:
        """A state machine's records of one cause, each applied as if read from its public topic, in
        the order the catalog ranks records written together (``write_rank``), as one batch met
        them when they were read apart. Records that fail dead-letter the digest, once (the others
        stay applied; a redrive finds them in ``seen``)."""
        try:
            digest = service.read(fetched.topic, fetched.partition, fetched.offset, fetched.key, fetched.value,
                                  fetched.headers)
        except Exception as exc:
            self.dead_letter(batch, fetched, exc)
            return
        failed = []
        for n, part in in_write_rank(digest.payload["records"]):
            if part["topic"] not in catalog.DIGESTED_TOPICS:
                error: Exception | None = ValueError(f"{part['topic']!r} is not a topic whose records a digest carries")
            else:
                error = self._apply(batch, DigestedRecord(part["topic"], fetched, part["value"]), fetched)
            if error is not None:
                failed.append(f"record {n} (of {part['topic']}): {type(error).__name__}: {error}")
        if failed:  # dead-lettered once, whatever failed in it
            self.dead_letter(batch, fetched, DigestPartFailed(f"digest {digest.event_id}: {'; '.join(failed)}"))

    def _apply(self, batch: Batch, record: Any, fetched: Any) -> Exception | None:
        """One record (``fetched``, or a record of the digest ``fetched``): the order's view after it,
        and what it publishes; what stopped it, if anything did."""
        try:
            envelope = service.read(record.topic, record.partition, record.offset, record.key, record.value,
                                    record.headers)
            ticked = record.topic == TIMERS.name
            if LIVE:
                now = envelope.payload["fired_at"] if ticked else service.clock.now()
            else:
                moves = not ticked and catalog.topic(record.topic).moves_event_clock
                now = service.partition_clocks.advance(batch, record.partition,
                                                       envelope.occurred_at if moves else None) or envelope.occurred_at
            self._judge(batch, envelope, record, fetched, now, ticked)
        except Exception as exc:  # one bad record never stops the processor: it is dead-lettered
            return exc
        if not LIVE:
            for order_id, due in service.partition_clocks.due(batch, record.partition, now):
                tick = Envelope(f"{service.name}:clock:{order_id}:{due.isoformat()}", order_id, now, service.name,
                                "orderops.common.TimerFired", {"due_at": due, "fired_at": now})
                try:
                    self._judge(batch, tick, record, fetched, now, True)
                except Exception:  # the record that moved the clock was applied: it is not dead-lettered
                    log.exception("%s: order %s came due at %s on partition %d's event clock (%s, moved by %s "
                                  "offset %d) and could not be judged; it is judged again at its next event",
                                  service.name, order_id, due.isoformat(), record.partition, now.isoformat(),
                                  record.topic, record.offset)
        return None

    def _judge(self, batch: Batch, envelope: Any, record: Any, fetched: Any, now: datetime, ticked: bool) -> None:
        """The order's view after ``envelope`` (an event, or a tick) at ``now``, and what it publishes.

        The view is the batch's working copy, changed in place by each of the order's records in
        the batch, then written and published once (``Batch.working``). A record that fails part of
        the way leaves the view as the order's records before it in the batch left it (``_undo``)."""
        order_id = envelope.order_id
        topic = TIMERS.name if ticked else record.topic
        view = batch.working(views, order_id, from_json, domain.copied, record.partition)
        try:
            view, out = domain.apply(view, envelope, topic, now, RULES, in_place=True)
            if out.duplicate:
                DUPLICATES.labels(service.name).inc()
                return
            key = order_id.encode()
            for output_topic, output in publishable(view, out, envelope):
                batch.send(output_topic.name, key, service.encode(output_topic, output), None, fetched)
            written = [(entry_key, None if entry is None else to_json_bytes(entry), entry)
                       for entry_key, entry in domain.entry_writes(order_id, out.entries)]
            deadline = domain.next_deadline(view, now, RULES)
            escalated = [(view["escalations"][escalation_id]["rule"], kind) for escalation_id, kind, _ in out.escalations]
        except Exception:
            self._undo(batch, order_id, record.partition)
            raise
        applied = batch.notes.setdefault(order_id, [])
        applied.append((envelope, topic, now))
        written_view = batch.put_working(views, order_id, view, to_json_bytes, record.partition)
        if changes_view(out) or (VIEWS_TOPIC.name, order_id) in batch.latest:
            # The newest view of the batch, as after the order's last record in it: one record per batch.
            batch.send_latest(VIEWS_TOPIC.name, order_id, functools.partial(_view, written_view, envelope, now), fetched)
        for entry_key, stored, entry in written:
            batch.put(entries, entry_key, stored, entry, record.partition, remember=False)
        service.schedule_in(batch, order_id, deadline, record.partition)
        batch.then(functools.partial(_counted, out, escalated, None if ticked else record))
        if len(applied) == 1:
            batch.then(functools.partial(_indexed, order_id, written_view))

    def _undo(self, batch: Batch, order_id: str, partition: int) -> None:
        """The working view made again from the view before the batch and the order's records the
        batch applied before this one (deterministic: they give the same view again)."""
        applied = batch.notes.get(order_id)
        if not applied:
            return  # the copy this record changed was never put: the batch's view is as it was
        base = batch.base(views, order_id)
        view = None if base is None else domain.copied(base)
        for envelope, topic, now in applied:
            view, _ = domain.apply(view, envelope, topic, now, RULES, in_place=True)
        batch.put_working(views, order_id, view, to_json_bytes, partition)

    def finish(self, batch: Batch) -> None:
        pass  # each record's work is done in apply

    def dead_letter(self, batch: Batch, record: Any, error: BaseException) -> None:
        service.dead_letter_in(batch, record, error)


def _view(written: StateChange, envelope: Any, now: datetime) -> tuple[bytes, bytes]:
    """The order's view record, of its view as the batch's last record of it left it."""
    view = written.loaded
    return view["order_id"].encode(), service.encode(VIEWS_TOPIC, view_record(view, envelope, now))


def _indexed(order_id: str, written: StateChange) -> None:
    support_index.update(order_id, written.loaded)


def _counted(out: domain.Outputs, escalated: list[tuple[str, str]], record: Any) -> None:
    """Once the view is written: the metrics of one record's outputs."""
    if record is not None:
        origin = "upstream" if record.topic in UPSTREAM_TOPICS else "processor"
        LATENCY.labels(origin).observe(max(0.0, time.time() - record.timestamp / 1000))
    for result, reason in out.accuracy:
        ACCURACY.labels(result, reason).inc()
    for repeat, tags in out.contacts:
        CONTACTS.labels(str(repeat).lower()).inc()
        for tag in tags or ("untagged",):
            CONTACTS_BY_TAG.labels(str(repeat).lower(), tag_label(tag)).inc()
    for rule, kind in escalated:
        ESCALATIONS.labels(rule, kind).inc()


join = service.batches(TimelineRecords(), (*catalog.inputs_of(service.name), TIMERS))
