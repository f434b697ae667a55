"""Single-object encoding: round trips, schema evolution, and precise errors for bad bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from orderops_tools.scenario import Story, address, card, customer, line, money

from orderops.codec.avro import (
    HEADER_SIZE,
    MAGIC,
    Codec,
    EncodeError,
    Envelope,
    NotSingleObjectEncoded,
    SchemaMismatch,
    UnknownFingerprint,
)
from orderops.codec.schemas import SchemaRegistry
from orderops.model.catalog import PAYMENTS_EVENTS, STOREFRONT_ORDERS

CODEC = Codec()
WHEN = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def _placed() -> tuple[str, bytes, Envelope]:
    story = Story("o-1", start=WHEN)
    envelope = story.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(), lines=[line("l1", "Blue mug", 2, "12.50"), line("l2", "Tea", 1, "4.99")],
        instruments=[card("card-1", "29.99")], shipping_address=address(), total=money("29.99"))
    return STOREFRONT_ORDERS.value_schema, CODEC.encode(STOREFRONT_ORDERS.value_schema, envelope.to_record()), envelope


def test_round_trip_keeps_every_field_and_type():
    schema, data, envelope = _placed()
    assert data[:2] == MAGIC
    assert data[2:HEADER_SIZE] == CODEC.registry.get(schema).fingerprint
    decoded = CODEC.decode(data, schema)
    assert decoded.writer == schema
    back = Envelope.from_record(decoded.record)
    assert back.payload == {**envelope.payload, "promised_delivery_by": None, "discounts": [], "shipping": None}, \
        "defaults filled in"
    assert (back.event_id, back.order_id, back.source, back.type) == (
        envelope.event_id, envelope.order_id, envelope.source, envelope.type)
    assert back.occurred_at == WHEN
    assert back.payload["total"]["amount"] == Decimal("29.99")
    assert back.short_type == "OrderPlaced"


@given(st.decimals(min_value=Decimal("-99999999"), max_value=Decimal("99999999"), places=4, allow_nan=False),
       st.text(max_size=40))
def test_amounts_and_text_survive_exactly(amount, reason):
    record = Envelope("e", "o", WHEN, "payment-provider", "orderops.payments.CaptureFailed",
                      {"instrument_id": "i", "amount": {"amount": amount, "currency": "EUR"}, "reason": reason})
    back = Envelope.from_record(CODEC.decode(CODEC.encode(PAYMENTS_EVENTS.value_schema, record.to_record()),
                                             PAYMENTS_EVENTS.value_schema).record)
    assert back.payload["amount"]["amount"] == amount and back.payload["reason"] == reason


def test_not_single_object_encoded():
    with pytest.raises(NotSingleObjectEncoded, match="C3 01"):
        CODEC.decode(b'{"json": "is not avro"}', STOREFRONT_ORDERS.value_schema)
    with pytest.raises(NotSingleObjectEncoded):
        CODEC.decode(b"\xc3", STOREFRONT_ORDERS.value_schema)
    with pytest.raises(NotSingleObjectEncoded, match="no value"):
        CODEC.decode(None, STOREFRONT_ORDERS.value_schema)


def test_unknown_fingerprint_names_it():
    schema, data, _ = _placed()
    forged = MAGIC + bytes(8) + data[HEADER_SIZE:]
    with pytest.raises(UnknownFingerprint, match="0000000000000000"):
        CODEC.decode(forged, schema)


def test_body_that_does_not_match_its_schema():
    schema, data, _ = _placed()
    with pytest.raises(SchemaMismatch):
        CODEC.decode(data[:-5], schema)
    with pytest.raises(SchemaMismatch, match="left over"):
        CODEC.decode(data + b"\x00\x01", schema)
    with pytest.raises(SchemaMismatch):
        CODEC.decode(data[:HEADER_SIZE] + b"\xff" * 40, schema)


def test_encoding_a_record_that_does_not_fit_is_a_precise_error():
    with pytest.raises(EncodeError, match="does not fit orderops.storefront.OrderEvent"):
        CODEC.encode(STOREFRONT_ORDERS.value_schema, {"event_id": "e", "order_id": "o"})


def _contract_copy(directory, change=lambda name, source: None, extra_writers=()) -> SchemaRegistry:
    """A copy of today's contract with one schema changed; today's and ``extra_writers`` frozen."""
    current = SchemaRegistry()
    directory.mkdir(exist_ok=True)
    (directory / "fingerprints").mkdir()
    for name, source in current.sources.items():
        source = json.loads(json.dumps(source))
        change(name, source)
        (directory / f"{name}.avsc").write_text(json.dumps(source))
    for resolved in [*current.frozen().values(), *extra_writers]:
        (directory / "fingerprints" / f"{resolved.name}-{resolved.fingerprint.hex()}.json").write_text(
            json.dumps(resolved.schema))
    return SchemaRegistry(directory)


def _add_gift_message(name, source):
    if name == "orderops.storefront.OrderPlaced":
        source["fields"].append({"name": "gift_message", "type": "string", "default": ""})


def test_old_writer_is_resolved_to_a_new_reader(tmp_path):
    new = Codec(_contract_copy(tmp_path / "new", _add_gift_message))
    schema, old_bytes, envelope = _placed()
    payload = new.decode(old_bytes, schema).record["payload"][1]
    assert payload["gift_message"] == ""
    assert payload["lines"] == envelope.payload["lines"]


def test_new_writer_is_read_by_an_old_reader_that_has_its_fingerprint(tmp_path):
    new = Codec(_contract_copy(tmp_path / "new", _add_gift_message))
    schema, old_bytes, envelope = _placed()
    record = {**envelope.to_record(), "payload": (envelope.type, {**envelope.payload, "gift_message": "Enjoy"})}
    new_bytes = new.encode(schema, record)
    assert new_bytes[2:HEADER_SIZE] != old_bytes[2:HEADER_SIZE]

    # A reader only resolves writers it knows: ship schemas/fingerprints/ to readers first.
    with pytest.raises(UnknownFingerprint):
        CODEC.decode(new_bytes, schema)
    old = Codec(_contract_copy(tmp_path / "old", extra_writers=[new.registry.get(schema)]))
    payload = old.decode(new_bytes, schema).record["payload"][1]
    assert "gift_message" not in payload
    assert payload["total"] == envelope.payload["total"]


def test_a_topic_with_one_event_type_still_names_it():
    from orderops.model.catalog import NOTIFICATIONS_REQUESTS

    record = Envelope("n-1", "o-1", WHEN, "order-state", "orderops.notifications.NotificationRequested", {
        "notification_id": "n-1", "type": "order_confirmed", "customer": customer(), "cause_event_id": "e-1"})
    data = CODEC.encode(NOTIFICATIONS_REQUESTS.value_schema, record.to_record())
    back = Envelope.from_record(CODEC.decode(data, NOTIFICATIONS_REQUESTS.value_schema).record)
    assert back.type == "orderops.notifications.NotificationRequested" and back.payload["type"] == "order_confirmed"


def test_only_a_union_of_several_named_types_is_read_with_branch_names():
    """A decode without fastavro's naming options is a sixth cheaper; it is taken only where no
    union has two named branches, where those options change nothing."""
    from orderops.codec.schemas import _has_named_union
    from orderops.model.catalog import FULFILLMENT_STATUS, NOTIFICATIONS_REQUESTS

    registry = CODEC.registry
    assert registry.get(STOREFRONT_ORDERS.value_schema).has_named_union  # its payload: one of several events
    assert not registry.get(FULFILLMENT_STATUS.value_schema).has_named_union
    assert not registry.get(NOTIFICATIONS_REQUESTS.value_schema).has_named_union
    enum = {"type": "enum", "name": "E", "symbols": ["A"]}
    record = {"type": "record", "name": "R", "fields": []}
    assert _has_named_union({"type": "record", "name": "X", "fields": [
        {"name": "f", "type": {"type": "array", "items": ["null", record, enum]}}]})
    assert _has_named_union({"type": "record", "name": "X", "fields": [
        {"name": "f", "type": {"type": "map", "values": ["null", "R", "S"]}}]})
    assert not _has_named_union({"type": "record", "name": "X", "fields": [
        {"name": "f", "type": ["null", record]}, {"name": "g", "type": ["null", "string", "long"]}]})


def test_a_record_without_named_unions_decodes_as_with_the_naming_options():
    import io

    from fastavro import schemaless_reader

    from orderops.model.catalog import FULFILLMENT_STATUS

    record = Envelope("f-1", "o-1", WHEN, "fulfillment", "orderops.fulfillment.FulfillmentStatusChanged", {
        "status": "partially_shipped", "backordered": True, "lines": [
            {"line_id": "l1", "ordered": 3, "unfulfilled": 0, "backordered": 1, "in_shipment": 0, "shipped": 2,
             "delivered": 0, "cancelled": 0, "returned": 0, "shipment_ids": ["P1"], "backorder_eta": WHEN,
             "delivered_at": None, "waiting_for": "2 on the way in parcel P1"}]}).to_record()
    data = CODEC.encode(FULFILLMENT_STATUS.value_schema, record)
    schema = CODEC.registry.get(FULFILLMENT_STATUS.value_schema).compiled
    named = schemaless_reader(io.BytesIO(data[HEADER_SIZE:]), schema, None, return_record_name=True,
                              return_record_name_override=True, return_named_type_override=True)
    decoded = CODEC.decode(data, FULFILLMENT_STATUS.value_schema).record
    assert decoded == {**named, "payload": ("orderops.fulfillment.FulfillmentStatusChanged", named["payload"])}
    assert decoded["payload"][1]["lines"][0]["backorder_eta"] == WHEN
