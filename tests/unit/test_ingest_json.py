"""Upstream events as JSON (orderops.ingest.jsonevents): every event the simulator writes, given as
the JSON a webhook sender writes, becomes the same Avro bytes; a value that does not fit is refused
with its path."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from orderops_tools.simulator import Config, plan

from orderops.codec.avro import Codec
from orderops.ingest.jsonevents import EventProblem, envelope_record, event_json
from orderops.model import catalog
from orderops.model.envelope import Envelope

CODEC = Codec()
START = datetime(2026, 10, 1, 8, tzinfo=UTC)


def _upstream_sends():
    sends, _ = plan(Config(seed=7, orders=40, start=START, duplicates=0, malformed=0), START)
    return [s for s in sends if s.kind not in ("duplicate", "malformed")]


def test_every_simulated_event_given_as_json_is_written_as_the_same_bytes():
    compared = 0
    for send in _upstream_sends():
        schema = CODEC.registry.get(send.topic.value_schema)
        envelope = Envelope.from_record(CODEC.decode(send.value, send.topic.value_schema).record)
        body = event_json(envelope.event_id, envelope.order_id, envelope.occurred_at, envelope.type, envelope.payload)
        record = envelope_record(schema, body, envelope.source)
        assert CODEC.encode(send.topic.value_schema, record) == send.value, (send.topic.name, body)
        compared += 1
    assert compared > 200


def _placed() -> dict:
    send = next(s for s in _upstream_sends() if s.topic is catalog.STOREFRONT_ORDERS and s.kind == "OrderPlaced")
    envelope = Envelope.from_record(CODEC.decode(send.value, send.topic.value_schema).record)
    return event_json(envelope.event_id, envelope.order_id, envelope.occurred_at, envelope.type, envelope.payload)


SCHEMA = CODEC.registry.get(catalog.STOREFRONT_ORDERS.value_schema)


@pytest.mark.parametrize(("change", "path", "says"), [
    (lambda e: e["payload"]["lines"][0].update(quantity="two"), "payload.lines[0].quantity", "expected an integer"),
    (lambda e: e["payload"]["total"].update(amount=12.5), "payload.total.amount", "as a string"),
    (lambda e: e["payload"]["total"].update(amount="12.12345"), "payload.total.amount", "more than 4 decimal places"),
    (lambda e: e["payload"]["total"].update(amount="NaN"), "payload.total.amount", "not a finite number"),
    (lambda e: e.update(occurred_at="2026-12-07T10:00:00"), "occurred_at", "has no offset"),
    (lambda e: e.update(occurred_at="yesterday"), "occurred_at", "not an ISO 8601 time"),
    (lambda e: e.update(type="OrderTeleported"), "type", "not an event of this topic"),
    (lambda e: e["payload"].update(gift_wrap=True), "payload.gift_wrap", "is not a field of OrderPlaced"),
    (lambda e: e["payload"].pop("customer"), "payload.customer", "is missing"),
    (lambda e: e["payload"]["lines"].append(None), "payload.lines[", "expected an object"),
    (lambda e: e.update(source="storefront"), "source", "is not a field of an event"),
    (lambda e: e["payload"]["customer"].update(phone=5), "payload.customer.phone", "expected a string"),
])
def test_a_value_that_does_not_fit_is_refused_with_its_path(change, path, says):
    event = copy.deepcopy(_placed())
    change(event)
    with pytest.raises(EventProblem) as refused:
        envelope_record(SCHEMA, event, "storefront")
    assert refused.value.path.startswith(path) and says in refused.value.message, str(refused.value)


def test_optional_fields_may_be_left_out_and_times_may_be_milliseconds():
    event = copy.deepcopy(_placed())
    event["payload"].pop("promised_delivery_by", None)
    event["payload"]["customer"].pop("phone", None)
    event["occurred_at"] = 1_790_000_000_000
    record = envelope_record(SCHEMA, event, "storefront")
    assert record["payload"][1]["promised_delivery_by"] is None and record["payload"][1]["customer"]["phone"] is None
    assert record["occurred_at"] == datetime.fromtimestamp(1_790_000_000, UTC) and record["source"] == "storefront"
