"""Property test: whatever the provider answers, however events are duplicated or reordered
across topics, no refund command ever makes the refunds on an instrument exceed its captures,
and every refund command id is issued once."""

from __future__ import annotations

from datetime import timedelta

from builders import (
    PLACED_V1,
    POLICIES,
    captured,
    days,
    fulfilled,
    inspected,
    placed,
    received,
    refund_result,
    requested,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from returns import domain
from returns.domain import RefundCommand

NOW = PLACED_V1 + days(60)
PARK_FOR = timedelta(days=30)
INSTRUMENTS = (("gift-1", "GIFT_CARD", "35.00"), ("card-1", "CARD", "100.00"))


@st.composite
def stories(draw):
    """Per topic, events of an order with captures, deliveries, cancellations and returns."""
    at = PLACED_V1
    payments = [captured(i, draw(st.sampled_from(["5.00", a])), at + timedelta(hours=1)) for i, _, a in INSTRUMENTS]
    cancelled = {"l2": draw(st.integers(0, 1))}
    fulfillment = [fulfilled(at + days(3), delivered={"l1": 1, "l2": 2 - cancelled["l2"], "l4": 1},
                             cancelled=cancelled)]
    storefront = [placed(at, INSTRUMENTS)]
    warehouse = []
    for n in range(draw(st.integers(1, 3))):
        line = draw(st.sampled_from(["l1", "l2", "l4"]))
        reason = draw(st.sampled_from(["DAMAGED", "NO_LONGER_NEEDED", "WRONG_ITEM"]))
        storefront.append(requested(f"r-{n}", at + days(5 + n), (line, 1, reason)))
        warehouse.append(received(f"r-{n}", at + days(8 + n), (line, 1)))
        warehouse.append(inspected(f"r-{n}", at + days(9 + n), (line, 1, draw(st.sampled_from(
            ["AS_EXPECTED", "DAMAGED", "MISSING"])))))
    return {"storefront": storefront, "payments": payments, "fulfillment": fulfillment, "warehouse": warehouse}


def interleave(data, story):
    queues = {k: list(v) for k, v in story.items() if v}
    order = []
    while queues:
        topic = data.draw(st.sampled_from(sorted(queues)))
        order.append(queues[topic].pop(0))
        if not queues[topic]:
            del queues[topic]
    return order


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_refunds_never_exceed_captures(data):
    pending = interleave(data, data.draw(stories()))
    state, commands = None, []
    step = 0
    while pending and step < 200:
        step += 1
        event = pending.pop(0)
        outcome = domain.apply(state, event, "input", NOW, PARK_FOR, POLICIES)
        state = outcome.state
        assert domain.violated_invariants(state) == [], domain.violated_invariants(state)
        for command in outcome.of(RefundCommand):
            commands.append(command)
            # The provider answers, at some point, succeeding or failing; sometimes twice.
            answer = refund_result(command.key, command.refund.instrument_id, command.refund.amount,
                                   event.occurred_at + timedelta(hours=1), ok=data.draw(st.booleans()))
            pending.insert(data.draw(st.integers(0, len(pending))), answer)
            if data.draw(st.booleans()):
                pending.append(answer)
        if data.draw(st.integers(0, 9)) == 0 and step > 1:
            pending.insert(data.draw(st.integers(0, len(pending))), event)  # a redelivery
    keys = [c.key for c in commands]
    assert len(keys) == len(set(keys)), "each refund command is issued once"
    for instrument in state.instruments:
        succeeded = sum(r.amount for r in state.refunds
                        if r.instrument_id == instrument.instrument_id and r.status == "succeeded")
        assert succeeded <= instrument.captured
