"""Property tests: random stories, arriving interleaved across topics (order within a topic
partition is kept, as Kafka keeps it), with redeliveries. Invariants hold after every event, and
once everything has arrived the final state does not depend on the arrival order."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from stories import T0, authorized, captured, fulfillment, placed, refunded

from order_state import domain

NOW = T0 + timedelta(hours=1)
PARK_FOR = timedelta(days=30)
INSTRUMENT_MIXES = [
    (("card-1", "CARD", 100),),
    (("gift-1", "GIFT_CARD", 30), ("card-1", "CARD", 70)),
    (("cod-1", "CASH_ON_DELIVERY", 100),),
    (("bnpl-1", "BUY_NOW_PAY_LATER", 100),),
]


@st.composite
def stories(draw):
    """Per topic, the events of one consistent order story."""
    instruments = draw(st.sampled_from(INSTRUMENT_MIXES))
    n = iter(range(1, 1000))
    payments = []
    for instrument_id, channel, amount in instruments:
        if channel == "CASH_ON_DELIVERY":
            continue
        payments.append(authorized(amount, instrument_id, n=next(n)))
        parts = draw(st.lists(st.integers(1, amount), min_size=0, max_size=3))
        captured_total = 0
        for part in parts:
            if captured_total + part <= amount:
                payments.append(captured(part, instrument_id, n=next(n)))
                captured_total += part
        refund_total = 0
        for part in draw(st.lists(st.integers(1, 50), max_size=2)):
            if refund_total + part <= captured_total:
                payments.append(refunded(part, instrument_id, n=next(n)))
                refund_total += part
    statuses = ["partially_shipped", "shipped", "delivered"][: draw(st.integers(0, 3))]
    return {
        "storefront": [placed(instruments)],
        "payments": payments,
        "fulfillment": [fulfillment(s, n=next(n)) for s in statuses],
    }


@st.composite
def arrivals(draw, story):
    """One arrival order: topics interleaved at random, each topic in order, some redelivered."""
    queues = {topic: list(events) for topic, events in story.items() if events}
    order = []
    while queues:
        topic = draw(st.sampled_from(sorted(queues)))
        order.append(queues[topic].pop(0))
        if not queues[topic]:
            del queues[topic]
    for _ in range(draw(st.integers(0, 3))):
        original = draw(st.integers(0, len(order) - 1))
        order.insert(draw(st.integers(original + 1, len(order))), order[original])
    return order


def final_state(events):
    state = None
    for event in events:
        state = domain.apply(state, event, "input", NOW, PARK_FOR).state
        assert domain.violated_invariants(state) == [], (event, state)
    return state


def projection(state):
    return state.status, state.instruments, state.lines, state.parked, state.fulfillment_status


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_invariants_hold_and_arrival_order_does_not_matter(data):
    story = data.draw(stories())
    in_order = final_state([e for topic in ("storefront", "payments", "fulfillment") for e in story[topic]])
    shuffled = final_state(data.draw(arrivals(story)))
    assert projection(shuffled) == projection(in_order)
    assert shuffled.parked == (), "once everything arrived, nothing waits"


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_reprocessing_yields_identical_outputs(data):
    """Replaying the same arrivals from scratch produces the same records (derived ids included)."""
    from order_state.records import publishable

    events = data.draw(arrivals(data.draw(stories())))

    def outputs():
        state, out = None, []
        for event in events:
            outcome = domain.apply(state, event, "input", NOW, PARK_FOR)
            state = outcome.state
            out.extend(publishable(outcome))
        return out

    first, second = outputs(), outputs()
    assert first == second
    ids = [record["event_id"] for _, record in first]
    assert len(ids) == len(set(ids)), "every output has its own id"
