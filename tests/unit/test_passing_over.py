"""A state machine passes over an event no handler applies, on a topic no upstream system writes
and no record it reads can wait for as its cause (``MachineProcessor.skips``; issue 12: half of
order-state's and returns' input is fulfillment's transitions and audit records, and each one was a
state written and sent to the changelog). Passing over must change no outcome."""

from __future__ import annotations

from dataclasses import replace

from order_state.processor import definition
from orderops import catalog
from orderops.catalog import FULFILLMENT_STATE_CHANGES, STOREFRONT_ORDERS
from orderops.codec import Codec
from orderops.envelope import cause_of
from orderops.rebuild import Message, replay
from orderops.settings import ServiceSettings


def test_only_processor_topics_that_hold_no_cause_are_passed_over():
    assert catalog.cause_topics(catalog.ORDER_STATE) == {STOREFRONT_ORDERS.name, catalog.WAREHOUSE_FULFILLMENT.name}
    order_state = definition(ServiceSettings.from_env(catalog.ORDER_STATE, 0))
    assert order_state.skips(FULFILLMENT_STATE_CHANGES.name, "StateTransition")
    assert order_state.skips(FULFILLMENT_STATE_CHANGES.name, "EventParked")
    assert not order_state.skips(FULFILLMENT_STATE_CHANGES.name, "FulfillmentStatusChanged")  # it has a handler
    assert not order_state.skips(STOREFRONT_ORDERS.name, "Unheard")  # upstream: checked, a meaningless one rejected
    assert not replace(order_state, handles=None).skips(FULFILLMENT_STATE_CHANGES.name, "StateTransition")


def test_order_state_passing_over_fulfillments_other_records_gives_the_same_records_and_states():
    """The simulator's orders through fulfillment (offline), then order-state over the upstream events
    and fulfillment's records, with and without passing over: the same records, the same states but
    for the ids of the events passed over."""
    from orderops_tools.bench import workload

    from fulfillment.processor import definition as fulfillment_definition

    codec, sends = Codec(), workload(3000, seed=7)[0]
    upstream = [Message(send.topic.name, 0, n, 1_000 * n, send.key, send.value) for n, send in enumerate(sends)]
    fulfillment = replay(fulfillment_definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0)), upstream)
    written_at = {codec.decode(m.value, catalog.topic(m.topic).value_schema).record["event_id"]: m.timestamp_ms
                  for m in upstream}
    derived = [Message(topic, 0, n, written_at[cause_of(event_id, catalog.FULFILLMENT)] + 1, record["order_id"].encode(),
                       codec.encode(catalog.topic(topic).value_schema, record))
               for n, (event_id, (topic, record)) in enumerate(fulfillment.outputs.items())]
    messages = upstream + derived

    order_state = definition(ServiceSettings.from_env(catalog.ORDER_STATE, 0))
    passing, applying = replay(order_state, messages), replay(replace(order_state, handles=None), messages)
    assert passing.skipped > len(derived) / 3 and applying.skipped == 0
    assert passing.outputs == applying.outputs and passing.dead_letters == applying.dead_letters
    assert passing.states.keys() == applying.states.keys()
    for order_id, state in applying.states.items():
        assert replace(passing.states[order_id], seen=state.seen) == state, order_id
        assert passing.states[order_id].seen < state.seen
