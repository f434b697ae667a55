"""A state-machine processor's work on one record: decode, load the order's state, apply the event
(or a timer tick: expire), publish, encode, keep the new state and the order's next deadline. The
processor supplies only its pure functions (``MachineProcessor``).

The same ``MachineRecords.apply`` runs live, on the batch path (records from the consumer, its
``Batch`` written to Kafka, its context the ``Service``), and offline in ``orderops replay
rebuild`` (records from a topic reader, an ``OfflineBatch`` keeping states and records in memory,
an offline context): live = replay."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from orderops.model.catalog import DIGESTED_TOPICS, TIMELINE_DIGESTS, write_rank
from orderops.model.envelope import Envelope, cause_of
from orderops.model.workflow import CAUSE_HEADER, Outcome
from orderops.runtime.metrics import DUPLICATES, tally_outcome

if TYPE_CHECKING:
    from orderops.model.catalog import Topic
    from orderops.model.processor import MachineProcessor
    from orderops.runtime.batch import Batch

# What became of a record (``MachineRecords.apply``'s answer; the live path does not ask).
PASSED_OVER, NO_STATE, DUPLICATE, APPLIED, DEAD_LETTERED = "passed over", "no state", "duplicate", "applied", \
    "dead-lettered"


def digest(cause: Envelope, processor: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The timeline's one message of what ``processor`` made of ``cause``: ``records``, each its
    public topic and its value there, in the order written (catalog.TIMELINE_DIGESTS)."""
    return Envelope(f"{cause.event_id}:{processor}:digest:0", cause.order_id, cause.occurred_at, processor,
                    "orderops.common.Digest", {"cause_event_id": cause.event_id, "records": records}).to_record()


def in_write_rank(records: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """A digest's records, numbered as written, in the order the timeline applies them: the
    catalog's rank for records written together, then as written."""
    return sorted(enumerate(records), key=lambda part: (write_rank(part[1]["topic"]), part[0]))


class RecordContext(Protocol):
    """What ``MachineRecords`` asks of its surroundings: the ``Service`` live, a replay's context offline."""

    name: str
    clock: Any

    def read(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             headers: Any) -> Envelope: ...

    def encode(self, topic: Topic, record: dict[str, Any]) -> bytes: ...

    def schedule_in(self, batch: Batch, key: str, due: datetime | None, partition: int) -> None: ...

    def dead_letter_in(self, batch: Batch, record: Any, error: BaseException) -> None: ...


class MachineRecords:
    """The ``RecordHandler`` of order-state, fulfillment and returns."""

    # table: a Faust table, or the replay's MachineTable; batch: a Batch, or the replay's OfflineBatch.
    def __init__(self, service: RecordContext, processor: MachineProcessor, table: Any,
                 observe: Callable[[Outcome], None] | None = None) -> None:
        self.service, self.processor, self.table = service, processor, table
        self.observe = observe
        self.timers = processor.timers.name

    def apply(self, batch: Any, record: Any) -> str:
        service, processor = self.service, self.processor
        try:
            envelope = service.read(record.topic, record.partition, record.offset, record.key, record.value,
                                    record.headers)
            if processor.skips(record.topic, envelope.short_type):
                return PASSED_OVER
            key = envelope.order_id
            state = batch.load(self.table, key, processor.load, record.partition)
            if record.topic == self.timers:
                if state is None:
                    return NO_STATE
                outcome = processor.expire(state, envelope.payload["fired_at"], self.timers)
            else:
                outcome = processor.apply(state, envelope, record.topic, service.clock.now())
            if outcome.duplicate:
                DUPLICATES.labels(service.name).inc()
                return DUPLICATE
            causes = {r.cause.event_id: r.cause_topic for r in outcome.records}
            raw_key = key.encode()
            digested = []
            for topic, output in processor.publish(outcome):
                cause = cause_of(output["event_id"], service.name) if causes else None
                headers = [(CAUSE_HEADER, causes[cause].encode())] if cause in causes else None
                value = service.encode(topic, output)
                batch.send(topic.name, raw_key, value, headers, record)
                if topic.name in DIGESTED_TOPICS:
                    digested.append({"topic": topic.name, "value": value})
            if digested:
                batch.send(TIMELINE_DIGESTS.name, raw_key,
                           service.encode(TIMELINE_DIGESTS, digest(envelope, service.name, digested)), None, record)
            batch.put(self.table, key, outcome.state.to_json_bytes(), outcome.state, record.partition)
            service.schedule_in(batch, key, processor.deadline(outcome.state), record.partition)
            tally_outcome(batch.tally, outcome.records)
            if self.observe is not None:
                observe = self.observe
                batch.then(lambda: observe(outcome))
            return APPLIED
        except Exception as exc:  # one bad record never stops the processor: it is dead-lettered
            self.dead_letter(batch, record, exc)
            return DEAD_LETTERED

    def finish(self, batch: Batch) -> None:
        pass  # each record's work is done in apply

    def dead_letter(self, batch: Batch, record: Any, error: BaseException) -> None:
        self.service.dead_letter_in(batch, record, error)
