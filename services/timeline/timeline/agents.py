"""timeline's agent: every topic of the order in, entries, escalations and the view out."""

from __future__ import annotations

import functools
import time
from datetime import datetime

from orderops import catalog
from orderops.envelope import from_json, to_json_bytes
from orderops.metrics import DUPLICATES
from timeline import domain
from timeline.app import (
    ACCURACY,
    CONTACTS,
    CONTACTS_BY_TAG,
    ESCALATIONS,
    LATENCY,
    RULES,
    entries,
    open_escalations,
    service,
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


@service.app.agent(service.topic(*catalog.inputs_of(service.name), TIMERS), name="timeline.join")
async def join(stream):
    async for event, step in service.steps(stream):
        async with service.dead_letter_on_error(event):
            envelope = service.decode(event)
            # domain.apply works on a copy: the view it is given, cached by the step, stays as it was.
            before = step.load(views, envelope.order_id, from_json)
            ticked = event.message.topic == TIMERS.name
            if ticked:
                now = envelope.payload["fired_at"]
            elif LIVE:
                now = service.clock.now()
            else:
                last = before["last_event_at"] if before else None
                now = max(envelope.occurred_at, last) if last else envelope.occurred_at
            view, out = domain.apply(before, envelope, event.message.topic, now, RULES)
            if out.duplicate:
                DUPLICATES.labels(service.name).inc()
                service.rewrite_on_duplicate(step, views, envelope.order_id, to_json_bytes(before), before)
                continue
            await service.emit_soon(step, envelope.order_id, publishable(view, out, envelope))
            if changes_view(out):  # the newest of an order's views completed together is sent, once
                service.emit_latest(step, catalog.SUPPORT_ORDER_VIEWS, envelope.order_id,
                                    functools.partial(view_record, view, envelope, now))
            step.put(views, envelope.order_id, to_json_bytes(view), loaded=view)
            for key, entry in domain.entry_writes(envelope.order_id, out.entries):
                step.put(entries, key, None if entry is None else to_json_bytes(entry))
            step.then(functools.partial(_written, envelope.order_id, view, out, now,
                                        None if ticked else event.message))


def _written(order_id: str, view: dict, out: domain.Outputs, now: datetime, message) -> None:
    """Once the view is written: the index of open escalations, the next deadline, the metrics."""
    open_escalations.update(order_id, view)
    if message is not None:
        origin = "upstream" if message.topic in UPSTREAM_TOPICS else "processor"
        LATENCY.labels(origin).observe(max(0.0, time.time() - message.timestamp))
    service.schedule(order_id, domain.next_deadline(view, now, RULES))
    for result, reason in out.accuracy:
        ACCURACY.labels(result, reason).inc()
    for repeat, tags in out.contacts:
        CONTACTS.labels(str(repeat).lower()).inc()
        for tag in tags or ("untagged",):
            CONTACTS_BY_TAG.labels(str(repeat).lower(), tag).inc()
    for escalation_id, kind, _ in out.escalations:
        ESCALATIONS.labels(view["escalations"][escalation_id]["rule"], kind).inc()
