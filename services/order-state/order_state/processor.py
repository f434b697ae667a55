"""order-state as a state-machine processor: its inputs, its table and its pure functions — run
live on the batch path (worker.py) and offline by ``orderops replay rebuild``."""

from __future__ import annotations

import os
from datetime import timedelta

from order_state import domain
from order_state.domain import OrderState
from order_state.records import publishable
from orderops.model.catalog import ORDER_STATE, order_inputs
from orderops.model.processor import MachineProcessor
from orderops.ops.settings import ServiceSettings


def close_after() -> timedelta:
    """A completed order closes this long after completion (ORDEROPS_ORDER_CLOSE_AFTER_DAYS, default 90)."""
    return timedelta(days=float(os.environ.get("ORDEROPS_ORDER_CLOSE_AFTER_DAYS", "90")))


def definition(settings: ServiceSettings, bootstrap: str | None = None) -> MachineProcessor:
    park_for, closing = timedelta(seconds=settings.park_deadline_seconds), close_after()
    return MachineProcessor(
        ORDER_STATE, order_inputs(ORDER_STATE), "orders",
        load=OrderState.from_json,
        apply=lambda state, event, topic, now: domain.apply(state, event, topic, now, park_for),
        expire=lambda state, now, topic: domain.expire(state, now, closing, topic),
        publish=publishable,
        deadline=lambda state: domain.next_deadline(state, closing),
        handles=frozenset(domain.HANDLERS),
    )
