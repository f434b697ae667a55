"""The rebuild's comparison: what a replay can know of a record, and what it cannot."""

from __future__ import annotations

from orderops.catalog import ORDERS_STATE_CHANGES
from orderops.rebuild import compare_outputs


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
