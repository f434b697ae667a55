"""The timeline's batch path changes one working copy of an order's view per batch, in place, and
writes it once; a record that fails part of the way leaves the view as the order's records before
it in the batch left it. In process: the real worker module, and a librdkafka producer of the
suite's broker (never flushed); the order is new, as the cache says, so no store is read."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from story import split_order_story

from orderops.codec.avro import Codec
from orderops.model.envelope import from_json, to_json_bytes
from orderops.runtime.batch import Batch, StateCache
from orderops.runtime.producer import BatchProducer
from timeline import domain, worker
from timeline.app import RULES, service, views

pytestmark = pytest.mark.broker
CODEC = Codec()


def records(order_id: str = "o-1"):
    story = split_order_story()
    for offset, (topic, (_, event)) in enumerate(zip(story.topics, story.events, strict=True)):
        yield SimpleNamespace(topic=topic.name, partition=0, offset=offset, key=order_id.encode(),
                              value=CODEC.encode(topic.value_schema, event.to_record()), headers=[], timestamp=0), event


@pytest.fixture
def fresh_batch(kafka_bootstrap):
    producer = BatchProducer({"bootstrap.servers": kafka_bootstrap}, "timeline", lambda *retired: None)
    return lambda: batch_of(producer)


def batch_of(producer: BatchProducer) -> Batch:
    cache = StateCache(100)
    cache.remember(views.name, "o-1", None)  # a new order: neither a view nor a deadline yet
    cache.remember(service._deadlines.name, "o-1", None)
    assert worker.LIVE, "the wall clock: the worker's own default"
    return Batch(producer, cache)


def test_an_order_s_records_change_one_copy_and_the_view_is_serialized_once(fresh_batch):
    batch, handler = fresh_batch(), worker.TimelineRecords()
    expected, applied = None, 0
    for record, event in list(records())[:8]:
        handler.apply(batch, record)
        expected, _ = domain.apply(expected, event, record.topic, event.occurred_at, RULES)
        applied += 1
    change = batch.changes[(views.name, "o-1")]
    assert change.stored is None and change.serialize is to_json_bytes  # not serialized per record
    assert applied == 8 and len(batch.notes["o-1"]) == 8
    # The same view the copying apply makes, but for "now" (the worker's wall clock), which only escalations read.
    assert change.loaded["order"] == expected["order"] and change.loaded["lines"] == expected["lines"]
    assert change.loaded["seen"] == expected["seen"]


def test_a_record_that_fails_part_of_the_way_leaves_the_view_as_the_records_before_it(fresh_batch, monkeypatch):
    batch, handler = fresh_batch(), worker.TimelineRecords()
    story = list(records())
    for record, _ in story[:5]:
        handler.apply(batch, record)
    before = from_json(to_json_bytes(batch.changes[(views.name, "o-1")].loaded))
    dead: list[BaseException] = []
    monkeypatch.setattr(handler, "dead_letter", lambda b, r, error: dead.append(error))
    real_encode = worker.service.encode

    def fails_after_the_view_changed(topic, record):  # apply has changed the view; publishing it fails
        raise ValueError("the encoder refused it")

    monkeypatch.setattr(worker.service, "encode", fails_after_the_view_changed)
    failing = next(r for r, e in story[5:] if domain.SUMMARIES.get(e.short_type))
    handler.apply(batch, failing)
    monkeypatch.setattr(worker.service, "encode", real_encode)
    assert len(dead) == 1
    after = batch.changes[(views.name, "o-1")].loaded
    assert from_json(to_json_bytes(after)) == before
    assert failing.offset >= 5 and len(batch.notes["o-1"]) == 5


def test_a_digest_applies_each_record_as_from_its_topic_and_records_that_fail_dead_letter_it_once(fresh_batch, monkeypatch):
    from orderops.model.catalog import DIGESTED_TOPICS, STOREFRONT_ORDERS, TIMELINE_DIGESTS
    from orderops.runtime.machine import digest

    batch, handler = fresh_batch(), worker.TimelineRecords()
    story = list(records())
    placed, _ = story[0]
    handler.apply(batch, placed)
    derived = [(r, e) for r, e in story[1:] if r.topic in DIGESTED_TOPICS][:2]
    assert len(derived) == 2
    parts = [{"topic": r.topic, "value": r.value} for r, _ in derived]
    parts.insert(1, {"topic": STOREFRONT_ORDERS.name, "value": placed.value})  # not a topic a digest carries
    parts.append({"topic": derived[0][0].topic, "value": b"\x00not avro"})
    value = CODEC.encode(TIMELINE_DIGESTS.value_schema, digest(derived[0][1], "fulfillment", parts))
    dead: list[BaseException] = []
    monkeypatch.setattr(handler, "dead_letter", lambda b, r, error: dead.append(error))
    handler.apply(batch, SimpleNamespace(topic=TIMELINE_DIGESTS.name, partition=0, offset=99, key=b"o-1", value=value,
                                         headers=[], timestamp=0))
    assert [type(e).__name__ for e in dead] == ["DigestPartFailed"]  # once, naming both records
    assert f"record 1 (of {STOREFRONT_ORDERS.name})" in str(dead[0])
    assert "is not a topic whose records a digest carries" in str(dead[0])
    assert "record 3 (of " in str(dead[0])
    seen = batch.changes[(views.name, "o-1")].loaded["seen"]
    assert [e.event_id for _, e in derived] == seen[1:]  # both good records applied, after the order
