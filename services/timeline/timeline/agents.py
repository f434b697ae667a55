"""timeline's agent: every topic of the order in, entries, escalations and the view out."""

from __future__ import annotations

from orderops import catalog
from orderops.envelope import from_json, to_json
from orderops.metrics import DUPLICATES
from timeline import domain
from timeline.app import ACCURACY, CONTACTS, ESCALATIONS, RULES, service, views
from timeline.records import publishable

service.enable_timers()
TIMERS = catalog.TIMER_TOPICS[service.name]


@service.app.agent(service.topic(*catalog.inputs_of(service.name), TIMERS), name="timeline.join")
async def join(stream):
    async for event in stream.events():
        async with service.dead_letter_on_error(event):
            envelope = service.decode(event)
            stored = views.get(envelope.order_id)
            ticked = event.message.topic == TIMERS.name
            now = envelope.payload["fired_at"] if ticked else service.clock.now()
            view, out = domain.apply(from_json(stored) if stored else None, envelope, event.message.topic, now, RULES)
            if out.duplicate:
                DUPLICATES.labels(service.name).inc()
                continue
            await service.emit_all(envelope.order_id, publishable(view, out, envelope, now))
            views[envelope.order_id] = to_json(view)
            service.schedule(envelope.order_id, domain.next_deadline(view, now, RULES))
            for result, reason in out.accuracy:
                ACCURACY.labels(result, reason).inc()
            for repeat, tags in out.contacts:
                for tag in tags or ("untagged",):
                    CONTACTS.labels(str(repeat).lower(), tag).inc()
            for escalation_id, kind, _ in out.escalations:
                ESCALATIONS.labels(view["escalations"][escalation_id]["rule"], kind).inc()
