"""A state machine passes over an event no handler applies, on a topic no upstream system writes
and no record it reads can wait for as its cause (``MachineProcessor.skips``: half of
order-state's and returns' input was fulfillment's transitions and audit records, and each one was a
state written and sent to the changelog). Since then fulfillment's status has a topic of its own
(``fulfillment.status``), so they do not even read those; passing over stays the guard for a type
added to a processor's topic that it has no use for. Neither may change an outcome."""

from __future__ import annotations

from dataclasses import replace

from order_state.processor import definition
from orderops.codec.avro import Codec
from orderops.model import catalog
from orderops.model.catalog import FULFILLMENT_STATE_CHANGES, FULFILLMENT_STATUS, STOREFRONT_ORDERS
from orderops.model.envelope import cause_of
from orderops.ops.settings import ServiceSettings
from orderops.replay.rebuild import Message, replay


def test_only_processor_topics_that_hold_no_cause_are_passed_over():
    assert catalog.cause_topics(catalog.ORDER_STATE) == {STOREFRONT_ORDERS.name, catalog.WAREHOUSE_FULFILLMENT.name}
    order_state = definition(ServiceSettings.from_env(catalog.ORDER_STATE, 0))
    assert order_state.skips(FULFILLMENT_STATUS.name, "StateTransition")
    assert not order_state.skips(FULFILLMENT_STATUS.name, "FulfillmentStatusChanged")  # it has a handler
    assert not order_state.skips(STOREFRONT_ORDERS.name, "Unheard")  # upstream: checked, a meaningless one rejected
    assert not replace(order_state, handles=None).skips(FULFILLMENT_STATUS.name, "StateTransition")


def test_order_state_needs_nothing_of_fulfillment_but_its_status():
    """The simulator's orders through fulfillment (offline), then order-state over the upstream events
    and fulfillment's records: reading fulfillment.status, and reading fulfillment.state-changes as
    well with every record applied (nothing passed over), give the same records and the same states
    but for the ids of the events seen."""
    from orderops_tools.bench import workload

    from fulfillment.processor import definition as fulfillment_definition

    codec, sends = Codec(), workload(3000, seed=7)[0]
    # Written as the events happen (from the first one's time on): at 1970 the contract rejected them all.
    began = int(codec.decode(sends[0].value, sends[0].topic.value_schema).record["occurred_at"].timestamp() * 1000)
    upstream = [Message(send.topic.name, 0, n, began + 1_000 * n, send.key, send.value) for n, send in enumerate(sends)]
    fulfillment = replay(fulfillment_definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0)), upstream)
    written_at = {codec.decode(m.value, catalog.topic(m.topic).value_schema).record["event_id"]: m.timestamp_ms
                  for m in upstream}
    derived = [Message(topic, 0, n, written_at[cause_of(event_id, catalog.FULFILLMENT)] + 1, record["order_id"].encode(),
                       codec.encode(catalog.topic(topic).value_schema, record))
               for n, (event_id, (topic, record)) in enumerate(fulfillment.outputs.items())
               if topic in (FULFILLMENT_STATE_CHANGES.name, FULFILLMENT_STATUS.name)]
    messages = upstream + derived
    transitions = sum(m.topic == FULFILLMENT_STATE_CHANGES.name for m in derived)
    assert transitions > sum(m.topic == FULFILLMENT_STATUS.name for m in derived) > 0

    order_state = definition(ServiceSettings.from_env(catalog.ORDER_STATE, 0))
    reading_all = replace(order_state, inputs=(*order_state.inputs, FULFILLMENT_STATE_CHANGES), handles=None)
    status_only = replay(order_state, [m for m in messages if m.topic != FULFILLMENT_STATE_CHANGES.name])
    everything = replay(reading_all, messages)
    assert status_only.skipped == 0 and everything.applied == status_only.applied + transitions
    assert status_only.outputs == everything.outputs and status_only.dead_letters == everything.dead_letters
    assert status_only.states.keys() == everything.states.keys()
    for order_id, state in everything.states.items():
        assert replace(status_only.states[order_id], seen=state.seen) == state, order_id
        assert status_only.states[order_id].seen < state.seen
