"""Property tests: random warehouse sequences (valid or not), redeliveries, and the order's
placement arriving anywhere among them (another topic): the unit buckets always add up, the
parcels always match the lines, and the final state does not depend on when the order arrived."""

from __future__ import annotations

from datetime import timedelta

from events import (
    ETA,
    T0,
    backordered,
    created,
    delivered,
    delivery_failed,
    dispatched,
    eta_changed,
    placed,
    returned_to_sender,
    short_shipped,
    tracking,
    warehouse_cancelled,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fulfillment import domain

NOW = T0 + timedelta(hours=1)
PARK_FOR = timedelta(days=30)
LINES = ("l1", "l2", "l3")
PARCELS = ("P1", "P2", "P3")


@st.composite
def warehouse_events(draw):
    quantity = st.integers(1, 3)
    ops = st.one_of(
        st.builds(backordered, st.sampled_from(LINES), quantity),
        st.builds(lambda line_id, d: eta_changed(line_id, ETA + timedelta(days=d)), st.sampled_from(LINES),
                  st.integers(-3, 9)),
        st.builds(lambda p, ls: created(p, *ls), st.sampled_from(PARCELS),
                  st.lists(st.tuples(st.sampled_from(LINES), quantity), min_size=1, max_size=3,
                           unique_by=lambda t: t[0])),
        st.builds(dispatched, st.sampled_from(PARCELS)),
        st.builds(lambda p, s: tracking(p, s), st.sampled_from(PARCELS),
                  st.sampled_from(["IN_TRANSIT", "OUT_FOR_DELIVERY", "DELAYED", "DELIVERY_ATTEMPTED"])),
        st.builds(delivered, st.sampled_from(PARCELS)),
        st.builds(delivery_failed, st.sampled_from(PARCELS)),
        st.builds(returned_to_sender, st.sampled_from(PARCELS)),
        st.builds(warehouse_cancelled, st.sampled_from(LINES), quantity),
        st.builds(short_shipped, st.sampled_from(LINES), quantity),
    )
    return draw(st.lists(ops, max_size=25))


def apply_all(events):
    state = None
    for event in events:
        state = domain.apply(state, event, "input", NOW, PARK_FOR).state
        assert domain.violated_invariants(state) == [], (event.short_type, event.payload)
    return state


def projection(state):
    """What the order's events decide (whether a park's audit record was written yet is not)."""
    parked = tuple((p.event.event_id, p.machine, p.entity_id, p.waiting_for, p.deadline) for p in state.parked)
    return state.lines, state.shipments, parked, state.status


@settings(max_examples=400, deadline=None)
@given(warehouse_events(), st.data())
def test_buckets_add_up_under_any_sequence_and_redelivery(events, data):
    order = placed()
    sequence = [order, *events]
    for _ in range(data.draw(st.integers(0, 4))):
        original = data.draw(st.integers(0, len(sequence) - 1))
        sequence.insert(data.draw(st.integers(original + 1, len(sequence))), sequence[original])
    apply_all(sequence)


@settings(max_examples=300, deadline=None)
@given(warehouse_events(), st.data())
def test_when_the_order_arrives_does_not_change_the_result(events, data):
    order = placed()
    first = apply_all([order, *events])
    position = data.draw(st.integers(0, len(events)))
    late = apply_all([*events[:position], order, *events[position:]])
    assert projection(late) == projection(first)
