"""returns' agent: the kernel's state-machine agent over this processor's pure domain."""

from __future__ import annotations

from orderops.catalog import (
    FULFILLMENT_STATE_CHANGES,
    PAYMENTS_EVENTS,
    STOREFRONT_ORDERS,
    STOREFRONT_RETURNS,
    SUPPORT_ACTIONS,
    WAREHOUSE_RETURNS,
)
from orderops.workflow import Outcome
from returns import domain
from returns.app import METRICS, PARK_FOR, current_policies, orders, service
from returns.domain import ReturnsState
from returns.records import measures, publishable


def observe(outcome: Outcome) -> None:
    for measure in measures(outcome):
        METRICS[measure.name].labels(measure.labels["channel"], measure.labels["policy"]).observe(measure.seconds)


returns_and_refunds = service.state_machine_agent(
    (STOREFRONT_ORDERS, STOREFRONT_RETURNS, WAREHOUSE_RETURNS, PAYMENTS_EVENTS, FULFILLMENT_STATE_CHANGES,
     SUPPORT_ACTIONS), orders,
    load=ReturnsState.from_json,
    apply=lambda state, event, topic, now: domain.apply(state, event, topic, now, PARK_FOR, current_policies()),
    expire=lambda state, now, topic: domain.expire(state, now, PARK_FOR, current_policies(), topic),
    publish=publishable,
    deadline=lambda state: domain.next_deadline(state, PARK_FOR),
    observe=observe,
)
