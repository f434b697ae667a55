"""order-state's one agent: decode, call the domain, then settle (emit, store, schedule)."""

from __future__ import annotations

from order_state import domain
from order_state.app import CLOSE_AFTER, PARK_FOR, orders, service
from order_state.domain import OrderState
from order_state.records import publishable
from orderops.catalog import FULFILLMENT_STATE_CHANGES, PAYMENTS_EVENTS, STOREFRONT_ORDERS, TIMER_TOPICS

TIMERS = TIMER_TOPICS[service.name]
inputs = service.topic(STOREFRONT_ORDERS, PAYMENTS_EVENTS, FULFILLMENT_STATE_CHANGES, TIMERS)


@service.app.agent(inputs)
async def order_and_payment_machines(stream):
    async for event in stream.events():
        async with service.dead_letter_on_error(event):
            envelope = service.decode(event)
            stored = orders.get(envelope.order_id)
            state = OrderState.from_json(stored) if stored else None
            if event.message.topic == TIMERS.name:
                if state is None:
                    continue
                outcome = domain.expire(state, envelope.payload["fired_at"], CLOSE_AFTER, TIMERS.name)
            else:
                outcome = domain.apply(state, envelope, event.message.topic, service.clock.now(), PARK_FOR)
            await service.settle(orders, envelope.order_id, outcome, publishable(outcome),
                                 domain.next_deadline(outcome.state, CLOSE_AFTER))
