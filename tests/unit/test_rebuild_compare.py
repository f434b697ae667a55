"""The rebuild's comparison: what a replay can know of a record, and what it cannot."""

from __future__ import annotations

from orderops.catalog import ORDERS_STATE_CHANGES, STOREFRONT_ORDERS, WAREHOUSE_FULFILLMENT
from orderops.rebuild import Message, compare_outputs, write_order


def rejected(code: str, reason: str) -> tuple[str, dict]:
    return ORDERS_STATE_CHANGES.name, {"event_id": "e1:order-state:rejected:0", "order_id": "o1", "payload": (
        "orderops.common.EventRejected", {"reason_code": code, "reason": reason, "machine": "order"})}


def test_a_rejection_at_a_parks_deadline_is_compared_without_the_deadline_it_names():
    live = {"e1": rejected("park_deadline_passed", "waited until 12:00:00.120 for the order; it never came")}
    replay = {"e1": rejected("park_deadline_passed", "waited until 12:00:00.004 for the order; it never came")}
    assert list(compare_outputs(replay, live, {"o1"})) == []
    other = {"e1": rejected("unknown_line", "the order has no line l9")}
    assert [d.what for d in compare_outputs(other, live, {"o1"})] == ["output differs"]
    assert [d.what for d in compare_outputs({"e1": rejected("unknown_line", "x")}, other, {"o1"})] == ["output differs"]


def test_a_differing_output_names_each_field_that_differs_with_both_values():
    live = {"e1": rejected("unknown_line", "the order has no line l9")}
    replay = {"e1": rejected("invalid_quantity", "the order has no line l9")}
    (difference,) = compare_outputs(replay, live, {"o1"})
    assert 'payload[1].reason_code: rebuild "invalid_quantity" / topic "unknown_line"' in difference.detail
    assert "reason:" not in difference.detail


def test_a_replay_keeps_each_partitions_offset_order_where_its_timestamps_go_back():
    """Two producers on one partition append out of their send times; the live processor met them in
    offset order, so the replay does (and merges partitions by time, as live)."""
    def message(topic: str, partition: int, offset: int, at: int) -> Message:
        return Message(topic, partition, offset, at, b"o1", b"", [])

    late_sender = message(WAREHOUSE_FULFILLMENT.name, 3, 7, 1_000)  # sent first, appended second
    first = message(WAREHOUSE_FULFILLMENT.name, 3, 6, 2_000)
    other_topic = message(STOREFRONT_ORDERS.name, 3, 0, 1_500)
    assert write_order([late_sender, other_topic, first]) == [other_topic, first, late_sender]
