"""What an outcome publishes, as records of the contract (still pure: dicts, no Kafka).

Output ids are derived from the cause: ``<cause event id>:<kind>:<n>``, and a notification's id
is ``<cause event id>:notify:<type>``. Reprocessing a cause yields the same ids and bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

from order_state.domain import Notify, OrderState, Outcome, ParkedRecord, Record, Rejected, Transitioned
from orderops.catalog import NOTIFICATIONS_REQUESTS, ORDERS_STATE_CHANGES, Topic
from orderops.envelope import Envelope

SOURCE = "order-state"
NS = "orderops.common."


def publishable(outcome: Outcome) -> Iterator[tuple[Topic, dict]]:
    counts: Counter[tuple[str, str]] = Counter()
    for record in outcome.records:
        kind = type(record.what).__name__.lower()
        n = counts[(record.cause.event_id, kind)]
        counts[(record.cause.event_id, kind)] += 1
        if isinstance(record.what, Notify):
            yield NOTIFICATIONS_REQUESTS, _notification(record, record.what, outcome.state)
        else:
            event_id = f"{record.cause.event_id}:{kind}:{n}"
            yield ORDERS_STATE_CHANGES, _envelope(record, event_id, *_state_change(record))


def _envelope(record: Record, event_id: str, type_name: str, payload: dict) -> dict:
    return Envelope(event_id, record.cause.order_id, record.cause.occurred_at, SOURCE, type_name, payload).to_record()


def _state_change(record: Record) -> tuple[str, dict]:
    what, cause = record.what, record.cause
    if isinstance(what, Transitioned):
        transition = {"machine": what.machine, "entity_id": what.entity_id, "from_state": what.from_state,
                      "to_state": what.to_state, "cause_event_id": cause.event_id, "cause_type": cause.type,
                      "reason": what.reason}
        if what.balance is None:
            return NS + "StateTransition", transition
        b = what.balance
        balance = {"instrument_id": b.instrument_id, "channel": b.channel, "authorized": _money(b.authorized, b.currency),
                   "captured": _money(b.captured, b.currency), "refunded": _money(b.refunded, b.currency)}
        return "orderops.orderstate.PaymentTransition", {"transition": transition, "balance": balance}
    common = {"cause_event_id": cause.event_id, "cause_type": cause.type, "cause_topic": record.cause_topic}
    if isinstance(what, ParkedRecord):
        p = what.parked
        return NS + "EventParked", {**common, "machine": p.machine, "entity_id": p.entity_id,
                                    "current_state": what.current_state, "waiting_for": p.waiting_for,
                                    "deadline": p.deadline}
    assert isinstance(what, Rejected)
    return NS + "EventRejected", {**common, "machine": what.machine, "entity_id": what.entity_id,
                                  "current_state": what.current_state, "reason_code": what.reason_code,
                                  "reason": what.reason}


def _notification(record: Record, notify: Notify, state: OrderState) -> dict:
    notification_id = f"{record.cause.event_id}:notify:{notify.type}"
    payload = {
        "notification_id": notification_id, "type": notify.type, "customer": state.customer,
        "cause_event_id": record.cause.event_id, "lines": [],
        "amounts": [{"instrument_id": i, "channel": channel, "amount": _money(amount, currency)}
                    for i, channel, amount, currency in notify.amounts],
        "shipment_id": None, "tracking_url": None, "facts": {"order_id": state.order_id, **notify.facts},
    }
    return _envelope(record, notification_id, "orderops.notifications.NotificationRequested", payload)


def _money(amount: Decimal, currency: str) -> dict:
    return {"amount": amount, "currency": currency}
