"""A state-machine processor's work on one record, on the batch path: decode, load the order's
state, apply the event (or a timer tick: expire), publish, encode, keep the new state and the
order's next deadline. The processor supplies only its pure functions (``MachineProcessor``,
which ``orderops replay rebuild`` runs offline the same way)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orderops.model.envelope import cause_of
from orderops.model.workflow import CAUSE_HEADER, Outcome
from orderops.runtime.metrics import DUPLICATES, tally_outcome

if TYPE_CHECKING:
    from orderops.model.processor import MachineProcessor
    from orderops.runtime.batch import Batch, StateTable
    from orderops.service import Service


class MachineRecords:
    """The ``RecordHandler`` of order-state, fulfillment and returns."""

    def __init__(self, service: Service, processor: MachineProcessor, table: StateTable,
                 observe: Callable[[Outcome], None] | None = None) -> None:
        self.service, self.processor, self.table = service, processor, table
        self.observe = observe
        self.timers = processor.timers.name

    def apply(self, batch: Batch, record: Any) -> None:
        service, processor = self.service, self.processor
        try:
            envelope = service.read(record.topic, record.partition, record.offset, record.key, record.value,
                                    record.headers)
            if processor.skips(record.topic, envelope.short_type):
                return
            key = envelope.order_id
            state = batch.load(self.table, key, processor.load, record.partition)
            if record.topic == self.timers:
                if state is None:
                    return
                outcome = processor.expire(state, envelope.payload["fired_at"], self.timers)
            else:
                outcome = processor.apply(state, envelope, record.topic, service.clock.now())
            if outcome.duplicate:
                DUPLICATES.labels(service.name).inc()
                return
            causes = {r.cause.event_id: r.cause_topic for r in outcome.records}
            raw_key = key.encode()
            for topic, output in processor.publish(outcome):
                cause = cause_of(output["event_id"], service.name) if causes else None
                headers = [(CAUSE_HEADER, causes[cause].encode())] if cause in causes else None
                batch.send(topic.name, raw_key, service.encode(topic, output), headers, record)
            batch.put(self.table, key, outcome.state.to_json_bytes(), outcome.state, record.partition)
            service.schedule_in(batch, key, processor.deadline(outcome.state), record.partition)
            tally_outcome(batch.tally, outcome.records)
            if self.observe is not None:
                batch.then(lambda: self.observe(outcome))
        except Exception as exc:  # one bad record never stops the processor: it is dead-lettered
            self.dead_letter(batch, record, exc)

    def dead_letter(self, batch: Batch, record: Any, error: BaseException) -> None:
        self.service.dead_letter_in(batch, record, error)
