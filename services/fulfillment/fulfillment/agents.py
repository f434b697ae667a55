"""fulfillment's agent: the kernel's state-machine agent over this processor's pure domain."""

from __future__ import annotations

from fulfillment import domain
from fulfillment.app import PARK_FOR, orders, service
from fulfillment.domain import FulfillmentState
from fulfillment.records import publishable
from orderops.catalog import STOREFRONT_ORDERS, WAREHOUSE_FULFILLMENT

lines_and_parcels = service.state_machine_agent(
    (STOREFRONT_ORDERS, WAREHOUSE_FULFILLMENT), orders,
    load=FulfillmentState.from_json,
    apply=lambda state, event, topic, now: domain.apply(state, event, topic, now, PARK_FOR),
    expire=lambda state, now, topic: domain.expire(state, now),
    publish=publishable,
    deadline=domain.next_deadline,
)
