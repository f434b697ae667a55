"""The rebuild's comparison: what a replay can know of a record, and what it cannot."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from orderops.codec.avro import Codec, SchemaMismatch
from orderops.model.catalog import ORDERS_STATE_CHANGES, STOREFRONT_ORDERS, WAREHOUSE_FULFILLMENT
from orderops.model.envelope import to_json_bytes
from orderops.replay.rebuild import ComparedOutputs, Message, Produced, compare_states, produced_by_share, write_order

CODEC = Codec()


def rejected(code: str, reason: str, event_id: str = "e1:order-state:rejected:0") -> tuple[str, dict]:
    return ORDERS_STATE_CHANGES.name, {
        "event_id": event_id, "order_id": "o1", "occurred_at": datetime(2026, 12, 1, 12, tzinfo=UTC),
        "source": "order-state", "payload": ("orderops.common.EventRejected", {
            "cause_event_id": "e1", "cause_type": "orderops.orders.OrderLineAdded", "cause_topic": STOREFRONT_ORDERS.name,
            "machine": "order", "entity_id": "o1", "current_state": "placed", "reason_code": code, "reason": reason})}


def on_the_topic(*outputs: tuple[str, dict]) -> dict[str, Produced]:
    """What the processor wrote, as the rebuild reads it back: bytes and head."""
    return {record["event_id"]: Produced(topic, record["order_id"], record["payload"][0],
                                         CODEC.encode(ORDERS_STATE_CHANGES.value_schema, record))
            for topic, record in outputs}


def differences(made: list[tuple[str, dict]], produced: dict[str, Produced], orders: frozenset = frozenset({"o1"})):
    compared = ComparedOutputs(produced, CODEC)
    for topic, record in made:
        value = CODEC.encode(ORDERS_STATE_CHANGES.value_schema, record)
        compared.made(topic, value)
    return compared.differences(set(orders))


def test_a_rejection_at_a_parks_deadline_is_compared_without_the_deadline_it_names():
    live = on_the_topic(rejected("park_deadline_passed", "waited until 12:00:00.120 for the order; it never came"))
    replay = rejected("park_deadline_passed", "waited until 12:00:00.004 for the order; it never came")
    assert differences([replay], live) == []
    other = rejected("unknown_line", "the order has no line l9")
    assert [d.what for d in differences([other], live)] == ["output differs"]
    assert [d.what for d in differences([rejected("unknown_line", "x")], on_the_topic(other))] == ["output differs"]


def test_a_differing_output_names_each_field_that_differs_with_both_values():
    live = on_the_topic(rejected("unknown_line", "the order has no line l9"))
    (difference,) = differences([rejected("invalid_quantity", "the order has no line l9")], live)
    assert 'payload[1].reason_code: rebuild "invalid_quantity" / topic "unknown_line"' in difference.detail
    assert "reason:" not in difference.detail


def test_records_missing_from_the_topic_or_only_there_are_named_for_the_rebuilt_orders_only():
    made, only_live = rejected("unknown_line", "l9", "e1:r:0"), rejected("unknown_line", "l8", "e2:r:0")
    elsewhere = ORDERS_STATE_CHANGES.name, {**rejected("unknown_line", "l7", "e3:r:0")[1], "order_id": "o2"}
    found = differences([made], on_the_topic(only_live, elsewhere))
    assert [(d.what, d.order_id, d.detail.split(" ")[0]) for d in found] == [
        ("output missing", "o1", "e1:r:0"), ("output extra", "o1", "e2:r:0")], "o2 was not rebuilt: its record is not extra"
    assert differences([made], on_the_topic(made)) == [] and len(ComparedOutputs(None)) == 0


def test_two_records_made_under_one_id_are_a_difference_even_when_the_topic_has_one_of_them():
    """A notification's id is its cause's and its type's: two messages of one type for one cause
    share it, and whoever dedupes by id (the notifier, the timeline) keeps one of them."""
    first, second = rejected("unknown_line", "l9", "e1:r:0"), rejected("unknown_line", "l8", "e1:r:0")
    found = differences([first, second], on_the_topic(first))
    assert [(d.what, d.order_id, d.detail.split(" ")[0]) for d in found] == [("output made twice", "o1", "e1:r:0")]
    assert differences([first], on_the_topic(first)) == []


def written(*outputs: tuple[str, dict]) -> dict[str, Produced]:
    """What the processor wrote, every copy, as the rebuild reads the topic."""
    return produced_by_share([(topic, CODEC.encode(ORDERS_STATE_CHANGES.value_schema, record)) for topic, record in outputs],
                             CODEC, "order-state", 1)[0]


def test_the_topic_is_compared_as_written_a_copy_that_says_something_else_is_a_difference():
    first, other = rejected("unknown_line", "l9", "e1:r:0"), rejected("unknown_line", "l8", "e1:r:0")
    again = written(first, first, first)
    compared = ComparedOutputs(again, CODEC)
    compared.made(first[0], CODEC.encode(ORDERS_STATE_CHANGES.value_schema, first[1]))
    assert compared.differences({"o1"}) == [] and compared.compared == 1
    assert compared.written({"o1"}) == (2, 0), "copies written again byte for byte are counted, not hidden"
    (found,) = differences([first], written(first, other))
    assert (found.what, found.order_id) == ("output written twice, differently", "o1")
    assert 'payload[1].reason: later copy "l8" / first "l9"' in found.detail
    # A deadline's reason names the worker's clock: copies that differ only there say the same.
    at_deadline = rejected("park_deadline_passed", "waited until 12:00:00.120", "e2:r:0")
    later = rejected("park_deadline_passed", "waited until 12:00:00.450", "e2:r:0")
    assert differences([at_deadline], written(at_deadline, later)) == []


def test_states_are_compared_by_their_bytes_then_as_far_as_a_replay_can_know_them():
    at = datetime(2026, 12, 1, 12, tzinfo=UTC)
    paid, packed = {"at": at, "event": "PaymentCaptured"}, {"at": at, "event": "ShipmentPacked"}
    state = {"status": "packed", "total": Decimal("12.50"), "history": [paid, packed],
             "parked": [{"event_id": "e9", "deadline": at}]}
    rebuilt = {"o1": state, "o2": state, "o3": state, "o4": state}
    stored = {
        "o1": to_json_bytes(state),  # byte for byte what the table keeps
        # Events of one moment on two topics, met live in the other order; a park's deadline counted on the worker's clock:
        "o2": to_json_bytes({**state, "history": [packed, paid], "parked": [{"event_id": "e9", "deadline": None}]}),
        "o3": to_json_bytes({**state, "status": "shipped", "total": Decimal("12.5")}),
    }
    assert stored["o2"] != stored["o1"]
    found = list(compare_states(rebuilt, stored, to_json_bytes))
    assert [(d.order_id, d.detail) for d in found] == [
        ("o3", "fields differ: status, total"), ("o4", "the processor's table has no state for this order")]


def test_the_head_of_an_envelope_is_read_without_decoding_its_payload():
    _, record = rejected("unknown_line", "the order has no line l9")
    head = CODEC.head(CODEC.encode(ORDERS_STATE_CHANGES.value_schema, record))
    assert (head.event_id, head.order_id, head.source, head.type) == (
        record["event_id"], "o1", "order-state", "orderops.common.EventRejected")
    encoded = CODEC.encode(ORDERS_STATE_CHANGES.value_schema, record)
    with pytest.raises(SchemaMismatch, match="too short"):
        CODEC.head(encoded[:20])
    with pytest.raises(SchemaMismatch, match="not an envelope"):
        CODEC.head(CODEC.encode("orderops.common.Money", {"amount": Decimal("1.00"), "currency": "EUR"}))


def test_a_replay_keeps_each_partitions_offset_order_where_its_timestamps_go_back():
    """Two producers on one partition append out of their send times; the live processor met them in
    offset order, so the replay does (and merges partitions by time, as live)."""
    def message(topic: str, partition: int, offset: int, at: int) -> Message:
        return Message(topic, partition, offset, at, b"o1", b"", [])

    late_sender = message(WAREHOUSE_FULFILLMENT.name, 3, 7, 1_000)  # sent first, appended second
    first = message(WAREHOUSE_FULFILLMENT.name, 3, 6, 2_000)
    other_topic = message(STOREFRONT_ORDERS.name, 3, 0, 1_500)
    assert write_order([late_sender, other_topic, first]) == [other_topic, first, late_sender]
