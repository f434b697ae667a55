"""What an outcome publishes, as records of the contract (still pure: dicts, no Kafka).

Audit ids come from the kernel (``<cause event id>:order-state:<kind>:<n>``); a notification's id is
``<cause event id>:notify:<type>``. Reprocessing a cause yields the same ids and bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from order_state.domain import OrderState
from orderops.model import workflow
from orderops.model.catalog import NOTIFICATIONS_REQUESTS, ORDERS_STATE_CHANGES, Topic
from orderops.model.workflow import CustomerNotice, Outcome, Record, Transitioned

SOURCE = "order-state"


def publishable(outcome: Outcome) -> Iterator[tuple[Topic, dict]]:
    for record, event_id in workflow.with_ids(outcome, SOURCE):
        if isinstance(record.what, CustomerNotice):
            yield NOTIFICATIONS_REQUESTS, _notification(record, record.what, outcome.state)
        elif isinstance(record.what, Transitioned):
            yield ORDERS_STATE_CHANGES, workflow.envelope(record, event_id, SOURCE, *_transition(record))
        else:
            yield ORDERS_STATE_CHANGES, workflow.envelope(record, event_id, SOURCE, *workflow.audit(record))


def _transition(record: Record) -> tuple[str, dict]:
    transition = workflow.transition_payload(record)
    balance = record.what.detail
    if balance is None:
        return workflow.COMMON + "StateTransition", transition
    amounts = {name: _money(getattr(balance, name), balance.currency) for name in ("authorized", "captured", "refunded")}
    return "orderops.orderstate.PaymentTransition", {
        "transition": transition,
        "balance": {"instrument_id": balance.instrument_id, "channel": balance.channel, **amounts},
    }


def _notification(record: Record, notice: CustomerNotice, state: OrderState) -> dict:
    return workflow.notification_request(record, notice, state.customer, state.order_id, SOURCE)


def _money(amount: Decimal, currency: str) -> dict:
    return {"amount": amount, "currency": currency}
