"""fulfillment as a state-machine processor: its inputs, its table and its pure functions — run
live on the batch path (worker.py) and offline by ``orderops replay rebuild``."""

from __future__ import annotations

from datetime import timedelta

from fulfillment import domain
from fulfillment.domain import FulfillmentState
from fulfillment.records import publishable
from orderops.model.catalog import FULFILLMENT, order_inputs
from orderops.model.processor import MachineProcessor
from orderops.ops.settings import ServiceSettings


def definition(settings: ServiceSettings, bootstrap: str | None = None) -> MachineProcessor:
    park_for = timedelta(seconds=settings.park_deadline_seconds)
    return MachineProcessor(
        FULFILLMENT, order_inputs(FULFILLMENT), "orders",
        load=FulfillmentState.from_json,
        apply=lambda state, event, topic, now: domain.apply(state, event, topic, now, park_for),
        expire=lambda state, now, topic: domain.expire(state, now),
        publish=publishable,
        deadline=domain.next_deadline,
        handles=frozenset(domain.HANDLERS),
    )
