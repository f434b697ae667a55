"""fulfillment as a state-machine processor: its inputs, its table and its pure functions — run
live on the batch path (worker.py) and offline by ``orderops replay rebuild``."""

from __future__ import annotations

import os
from datetime import timedelta

from fulfillment import domain
from fulfillment.domain import FulfillmentState
from fulfillment.records import publishable
from orderops.model.catalog import FULFILLMENT, order_inputs
from orderops.model.processor import MachineProcessor
from orderops.ops.settings import ServiceSettings


def cancel_after_dispatch() -> str:
    """``ORDEROPS_CANCEL_AFTER_DISPATCH``: ``cancel-rest`` (default: what has not left is cancelled,
    what has still arrives) or ``refuse`` (the whole cancellation is refused once anything left)."""
    value = os.environ.get("ORDEROPS_CANCEL_AFTER_DISPATCH", domain.CANCEL_REST_AFTER_DISPATCH)
    if value not in (domain.CANCEL_REST_AFTER_DISPATCH, domain.REFUSE_AFTER_DISPATCH):
        raise ValueError(f"ORDEROPS_CANCEL_AFTER_DISPATCH must be {domain.CANCEL_REST_AFTER_DISPATCH!r} or "
                         f"{domain.REFUSE_AFTER_DISPATCH!r}, not {value!r}")
    return value


def definition(settings: ServiceSettings, bootstrap: str | None = None) -> MachineProcessor:
    park_for = timedelta(seconds=settings.park_deadline_seconds)
    policy = cancel_after_dispatch()
    return MachineProcessor(
        FULFILLMENT, order_inputs(FULFILLMENT), "orders",
        load=FulfillmentState.from_json,
        apply=lambda state, event, topic, now: domain.apply(state, event, topic, now, park_for, policy),
        expire=lambda state, now, topic: domain.expire(state, now),
        publish=publishable,
        deadline=domain.next_deadline,
        handles=frozenset(domain.HANDLERS),
    )
