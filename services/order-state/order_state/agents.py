"""order-state's agent: the kernel's state-machine agent over this processor's pure domain."""

from __future__ import annotations

from order_state import domain
from order_state.app import CLOSE_AFTER, PARK_FOR, orders, service
from order_state.domain import OrderState
from order_state.records import publishable
from orderops.catalog import FULFILLMENT_STATE_CHANGES, PAYMENTS_EVENTS, STOREFRONT_ORDERS

order_and_payment_machines = service.state_machine_agent(
    (STOREFRONT_ORDERS, PAYMENTS_EVENTS, FULFILLMENT_STATE_CHANGES), orders,
    load=OrderState.from_json,
    apply=lambda state, event, topic, now: domain.apply(state, event, topic, now, PARK_FOR),
    expire=lambda state, now, topic: domain.expire(state, now, CLOSE_AFTER, topic),
    publish=publishable,
    deadline=lambda state: domain.next_deadline(state, CLOSE_AFTER),
)
