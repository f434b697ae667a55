"""fulfillment's domain without a broker: unit buckets, parcels, derived status, what customers
are told, parking and rejections."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from events import (
    ETA,
    T0,
    backordered,
    created,
    delivered,
    delivery_failed,
    dispatched,
    eta_changed,
    line_cancelled,
    order_cancelled,
    placed,
    returned_to_sender,
    short_shipped,
    tracking,
    warehouse_cancelled,
)

from fulfillment import domain
from fulfillment.domain import FulfillmentState, ShipmentNotice, StatusSnapshot
from fulfillment.machines import SHIPMENT, SHIPMENT_TRIGGERS, TRACKING_TRIGGERS, unit_moves_markdown
from orderops.model.workflow import Rejected, Transitioned

NOW = T0 + timedelta(hours=1)
PARK_FOR = timedelta(hours=24)


def run(*events, state=None):
    records = []
    for e in events:
        outcome = domain.apply(state, e, "input", NOW, PARK_FOR)
        state = outcome.state
        records.extend(outcome.records)
        assert domain.violated_invariants(state) == [], (e.short_type, state)
    return state, records


def of(records, kind):
    return [r.what for r in records if isinstance(r.what, kind)]


def line(state, line_id):
    return state.line(line_id)


# -- the split order the issue describes ----------------------------------------------------------

def test_split_order_with_a_backorder_that_slips_then_ships():
    state, records = run(
        placed(), backordered("l2", 1),
        created("P1", ("l1", 2), ("l3", 3)), dispatched("P1", "JD0001"),
    )
    assert state.status == "partially_shipped" and state.backordered
    notices = of(records, ShipmentNotice)
    assert [n.type for n in notices] == ["line_backordered", "shipment_dispatched"]
    backorder, dispatch = notices
    assert backorder.summary == "Teapot: 1 backordered until Thu 03 Dec."
    assert dispatch.summary == ("Parcel P1 (DHL JD0001) is on its way with 5 of your 6 items: 2 × Blue mug, 3 × Tea towel. "
                                "Still to come — Teapot: 1 backordered until Thu 03 Dec.")
    claims = {c.line_id: c for c in dispatch.lines}
    assert (claims["l1"].quantity_in_this_shipment, claims["l1"].shipment_id) == (2, "P1")
    assert (claims["l2"].quantity_backordered, claims["l2"].eta, claims["l2"].shipment_id) == (1, ETA, None)

    slipped = ETA + timedelta(days=5)
    state, records = run(eta_changed("l2", slipped), state=state)
    [notice] = of(records, ShipmentNotice)
    assert notice.type == "backorder_eta_changed" and dict(notice.facts)["slipped"] == "true"
    assert notice.summary == "Teapot is now expected Tue 08 Dec."

    state, records = run(created("P2", ("l2", 1)), dispatched("P2", "JD0002"), delivered("P1"), delivered("P2"),
                         state=state)
    assert state.status == "delivered" and not state.backordered
    assert line(state, "l2").backorder_eta is None and line(state, "l2").delivered == 1
    second = next(n for n in of(records, ShipmentNotice) if n.type == "shipment_dispatched")
    assert second.summary == ("Parcel P2 (DHL JD0002) is on its way with 1 of your 6 items: 1 × Teapot. Still to come — "
                              "Blue mug: 2 on the way in parcel P1; Tea towel: 3 on the way in parcel P1.")
    statuses = [t.to_state for t in of(records, Transitioned) if t.machine == "fulfillment"]
    assert statuses == ["shipped", "partially_delivered", "delivered"]


def test_status_is_derived_from_the_lines_and_published_with_them():
    state, records = run(placed(), created("P1", ("l1", 2)))
    [snapshot] = of(records, StatusSnapshot)[-1:]
    assert snapshot.status == "unfulfilled" and tuple(said.line for said in snapshot.lines) == state.lines
    assert snapshot.lines == domain.line_statuses(state)
    state, records = run(dispatched("P1"), state=state)
    assert of(records, StatusSnapshot)[-1].status == "partially_shipped"


def test_warehouse_cancellation_is_told_to_the_customer_and_counted():
    state, records = run(placed(), warehouse_cancelled("l3", 2))
    assert line(state, "l3").cancelled == 2 and line(state, "l3").unfulfilled == 1
    [notice] = of(records, ShipmentNotice)
    assert notice.type == "line_cancelled" and notice.summary == "Tea towel: 2 of 3 cancelled by our warehouse."
    assert {c.line_id: c.quantity_cancelled for c in notice.lines}["l3"] == 2


def test_short_ship_takes_unfulfilled_before_backordered():
    state, _ = run(placed(), backordered("l3", 1), short_shipped("l3", 2))
    assert (line(state, "l3").unfulfilled, line(state, "l3").backordered, line(state, "l3").cancelled) == (0, 1, 2)


def test_failed_delivery_returned_to_sender_puts_units_back():
    state, records = run(placed(), created("P1", ("l1", 2)), dispatched("P1"), delivery_failed("P1"),
                         returned_to_sender("P1"))
    assert state.shipment("P1").status == "returned_to_sender"
    assert line(state, "l1").unfulfilled == 2 and line(state, "l1").shipped == 0
    assert [n.type for n in of(records, ShipmentNotice)] == ["shipment_dispatched", "delivery_failed"]


def test_delay_notifies_once_per_parcel():
    state, records = run(placed(), created("P1", ("l1", 2)), dispatched("P1"), tracking("P1", "DELAYED"),
                         tracking("P1", "DELAYED"))
    assert [n.type for n in of(records, ShipmentNotice)].count("shipment_delayed") == 1
    assert state.shipment("P1").delayed


# -- rejections and parking -----------------------------------------------------------------------

def test_shipping_more_than_ordered_is_rejected():
    state, records = run(placed(), created("P1", ("l1", 3)))
    [rejected] = of(records, Rejected)
    assert rejected.reason_code == "ships_more_than_open" and "2 ordered" in rejected.reason
    assert state.shipments == ()


def test_shipping_a_cancelled_line_is_rejected():
    _, records = run(placed(), line_cancelled("l2", 1), created("P1", ("l2", 1)))
    [rejected] = of(records, Rejected)
    assert rejected.reason_code == "ships_more_than_open" and "1 cancelled" in rejected.reason


def test_cancelling_the_order_cancels_packed_parcels_and_after_dispatch_what_has_not_left():
    state, records = run(placed(), created("P1", ("l1", 2)), order_cancelled())
    assert state.status == "cancelled" and state.shipment("P1").status == "cancelled"
    state, records = run(placed(), created("P1", ("l1", 2)), created("P2", ("l2", 1)), dispatched("P1"),
                         order_cancelled())
    assert of(records, Rejected) == [] and state.shipment("P2").status == "cancelled"
    assert [(x.line_id, x.shipped, x.cancelled) for x in state.lines] == [("l1", 2, 0), ("l2", 0, 1), ("l3", 0, 3)]
    assert state.status == "shipped", "what is left of the order has all left"
    [notice] = [n for n in of(records, ShipmentNotice) if n.type == "order_partly_cancelled"]
    assert notice.summary == ("Cancelled as you asked: 1 × Teapot; 3 × Tea towel. Part of your order had already "
                              "left our warehouse and still arrives: 2 × Blue mug.")


def test_a_shop_that_refuses_a_cancellation_after_dispatch_refuses_all_of_it_and_says_so():
    refused = domain.apply(run(placed(), created("P1", ("l1", 2)), dispatched("P1"))[0], order_cancelled(), "input",
                           NOW, PARK_FOR, domain.REFUSE_AFTER_DISPATCH)
    assert [r.reason_code for r in of(refused.records, Rejected)] == ["cancel_after_dispatch_refused"]
    assert all(x.cancelled == 0 for x in refused.state.lines)
    [notice] = [n for n in of(refused.records, ShipmentNotice) if n.type == "cancellation_refused"]
    assert "cannot be cancelled: 2 × Blue mug" in notice.summary


def test_delivered_before_dispatched_is_parked_and_applied_in_order():
    state, _ = run(placed(), created("P1", ("l1", 2)), delivered("P1"))
    assert state.parked[0].waiting_for == "the parcel to be dispatched"
    state, _ = run(dispatched("P1"), state=state)
    assert state.shipment("P1").status == "delivered" and line(state, "l1").delivered == 2


def test_warehouse_events_before_the_order_are_parked():
    state, _ = run(created("P1", ("l1", 2)))
    assert state.parked[0].waiting_for == "the order to be placed"
    state, _ = run(placed(), state=state)
    assert line(state, "l1").in_shipment == 2 and state.parked == ()


def test_duplicates_change_nothing():
    ship = created("P1", ("l1", 2))
    state, _ = run(placed(), ship)
    outcome = domain.apply(state, ship, "input", NOW, PARK_FOR)
    assert outcome.duplicate and outcome.state == state and outcome.records == ()


def test_eta_change_without_a_backorder_is_rejected():
    _, records = run(placed(), eta_changed("l1", ETA))
    assert of(records, Rejected)[0].reason_code == "no_backorder"


def test_state_survives_its_json_form():
    state, _ = run(placed(), backordered("l2", 1), created("P1", ("l1", 2)), dispatched("P1"), delivered("P9"))
    assert FulfillmentState.from_json(state.to_json()) == state
    assert state.parked  # the events it keeps for later are part of it
    assert FulfillmentState.from_json(orjson.loads(state.to_json_bytes())) == state  # the text its table stores


# -- the shipment table, every (state, trigger) through apply() -----------------------------------

TRIGGER_EVENTS = {
    "dispatch": lambda: dispatched("P1"), "deliver": lambda: delivered("P1"),
    "delivery_failed": lambda: delivery_failed("P1"), "return_to_sender": lambda: returned_to_sender("P1"),
    **{t: (lambda s=s: tracking("P1", s)) for s, t in TRACKING_TRIGGERS.items() if s != "UNKNOWN"},
    "cancel": order_cancelled,
}


@pytest.mark.parametrize("status", SHIPMENT.states)
@pytest.mark.parametrize("trigger", SHIPMENT.triggers)
def test_shipment_table(status, trigger):
    state, _ = run(placed(), created("P1", ("l1", 2)))
    buckets = {"created": "in_shipment", "delivered": "delivered", "cancelled": "cancelled",
               "returned_to_sender": "unfulfilled"}.get(status, "shipped")
    state = state.with_shipment(replace(state.shipment("P1"), status=status))
    state = state.with_line(replace(line(state, "l1"), **{"in_shipment": 0, buckets: 2}))
    outcome = domain.apply(state, TRIGGER_EVENTS[trigger](), "input", NOW, PARK_FOR)
    after = outcome.state.shipment("P1").status
    target = SHIPMENT.next(status, trigger)
    if target is not None and not (trigger == "cancel" and status != "created"):
        assert after == target, outcome.records
    elif trigger == "cancel":
        assert after == status  # the order cancellation is refused once a parcel left
    elif SHIPMENT.waits_for(status, trigger):
        assert outcome.waiting.waiting_for == SHIPMENT.waits_for(status, trigger)
    else:
        assert after == status and outcome.of(Rejected)[0].reason_code == "invalid_transition"
    assert domain.violated_invariants(outcome.state) == []


def test_every_shipment_event_has_a_trigger_in_the_table():
    assert set(SHIPMENT_TRIGGERS.values()) | set(TRACKING_TRIGGERS.values()) <= set(SHIPMENT.triggers)


def test_the_service_doc_shows_the_tables_as_they_are():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "services" / "fulfillment.md").read_text()
    assert SHIPMENT.as_markdown() in doc and unit_moves_markdown() in doc


def test_events_applied_late_still_publish_each_status_they_caused():
    """Warehouse events that arrived before the order are applied when it comes: every one of them
    still yields its own status snapshot, so downstream sees partially_shipped before delivered."""
    state, _ = run(created("P1", ("l1", 2)), dispatched("P1"), delivered("P1"))
    _, records = run(placed(), state=state)
    assert [s.status for s in of(records, StatusSnapshot)] == [
        "unfulfilled", "unfulfilled", "partially_shipped", "partially_delivered"]


def test_a_parcel_move_that_changes_no_line_publishes_its_transition_but_no_repeated_snapshot():
    """In transit and out for delivery say of each line what dispatched said ("on the way in parcel
    P1"): order-state, returns and the timeline would read the same snapshot again."""
    state, records = run(placed(), created("P1", ("l1", 2)), dispatched("P1"))
    last = of(records, StatusSnapshot)[-1]
    state, records = run(tracking("P1", "IN_TRANSIT"), tracking("P1", "OUT_FOR_DELIVERY"), state=state)
    assert [t.to_state for t in of(records, Transitioned)] == ["in_transit", "out_for_delivery"]
    assert of(records, StatusSnapshot) == []
    assert domain.line_statuses(state) == last.lines


def test_a_delay_or_a_delivery_changes_what_a_line_waits_for_and_is_published():
    state, _ = run(placed(), created("P1", ("l1", 2)), dispatched("P1"), tracking("P1", "IN_TRANSIT"))
    state, records = run(tracking("P1", "DELAYED"), state=state)
    [snapshot] = of(records, StatusSnapshot)
    said = snapshot.lines
    assert said[0].waiting_for == "2 on the way in parcel P1 (delayed)" and said[0].parcels == ("P1",)
    _, records = run(delivered("P1"), state=state)
    assert of(records, StatusSnapshot)[-1].status == "partially_delivered"


def test_a_tracking_link_that_is_not_http_is_not_kept_nor_sent_to_the_customer():
    unsafe = dispatched("P1", "JD0001")
    unsafe = replace(unsafe, payload={**unsafe.payload, "tracking_url": "javascript:alert(1)"})
    state, records = run(placed(), created("P1", ("l1", 2), ("l3", 3)), unsafe)
    [shipment] = state.shipments
    assert shipment.tracking_url == "" and shipment.tracking_number == "JD0001"
    assert all("javascript" not in repr(n) for n in of(records, ShipmentNotice))
