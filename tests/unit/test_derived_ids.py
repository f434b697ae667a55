"""Records derived from one upstream event by different processors never share an event id.

Found by the real-scrape test: order-state's and returns' transitions for one refund result had
the same id, and the timeline, which dedupes by event id across all its inputs, dropped one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orderops_tools.scenario import Story, address, card, customer, line, money

from fulfillment.processor import definition as fulfillment
from order_state.processor import definition as order_state
from orderops.model.catalog import PAYMENTS_EVENTS, STOREFRONT_ORDERS
from orderops.ops.paths import source_root
from orderops.ops.settings import ServiceSettings
from returns.domain import Policies
from returns.policy import load_policy
from returns.processor import definition as returns

PLACED = datetime(2026, 11, 2, 9, tzinfo=UTC)


def test_processors_reacting_to_the_same_events_derive_distinct_ids():
    story = Story("ids-1", start=PLACED)
    story.on(STOREFRONT_ORDERS).OrderPlaced(customer=customer(), lines=[line("l1", "Mug", 1, "10.00")],
                                            instruments=[card("card-1", "10.00")], shipping_address=address(),
                                            total=money("10.00"))
    story.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("10.00"),
                                                                 authorization_id="a-1")
    settings = ServiceSettings.from_env("test", 0)
    standard = load_policy(source_root() / "policies" / "standard-v1.yaml")
    policies = Policies({standard.ref: standard}, standard.policy_id)
    processors = [order_state(settings), fulfillment(settings), returns(settings, policies=lambda: policies)]
    ids_by_processor: dict[str, set[str]] = {}
    for processor in processors:
        state, ids = None, set()
        for event in story.events:
            if event.topic not in processor.inputs:
                continue
            outcome = processor.apply(state, event.envelope, event.topic.name, PLACED + timedelta(hours=1))
            state = outcome.state
            ids |= {record["event_id"] for _, record in processor.publish(outcome)}
        if ids:
            ids_by_processor[processor.name] = ids
    # order-state and fulfillment both transition on OrderPlaced (the collision the scrape test met)
    assert {"order-state", "fulfillment"} <= set(ids_by_processor), ids_by_processor
    names = list(ids_by_processor)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids_by_processor[a] & ids_by_processor[b], (a, b, ids_by_processor[a] & ids_by_processor[b])
