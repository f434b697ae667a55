"""What an upstream event must say, beyond fitting its schema: the named checks every state machine
runs before its handlers (``orderops.workflow.apply``). Pure: no Kafka.

A schema admits a negative quantity, a price in two currencies at once, a 100 kB product name, an
order placed in 1970. Such an event decodes, so it is not a dead letter; it is meaningless in any
state, so no handler should ever see it. Each state machine that reads it rejects it with an
``EventRejected`` audit record whose code names the check, before it can change an order — the
same in a live run and in a replay, since the checks read nothing but the event and the order's
own history.

Events the processors derive themselves are not checked: their writers are this code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from orderops import catalog
from orderops.envelope import Envelope

MAX_TEXT_CHARS = 2_000  # any string field: names, addresses, reasons, tracking references
MAX_QUANTITY = 10_000  # of one line, in any event
MAX_AMOUNT = Decimal("1000000000")  # in any currency
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # before it, a default value ("1970-01-01"), not a time
ORDER_LIFETIME = timedelta(days=400)  # an order's events come within this long of its first (returns, refunds)

Violation = tuple[str, str]  # (code, reason)


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) of every field, nested records and arrays included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}" if path else key, key, item
            yield from _walk(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            yield from _walk(item, f"{path}[{n}]")


def _money(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"amount", "currency"}


def text_within_limits(event: Envelope, began: datetime | None) -> Violation | None:
    for path, _, value in _walk(event.payload):
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            return "text_too_long", f"{path} has {len(value)} characters (at most {MAX_TEXT_CHARS})"
    return None


def quantities_in_range(event: Envelope, began: datetime | None) -> Violation | None:
    for path, key, value in _walk(event.payload):
        if key == "quantity" and isinstance(value, int) and not 1 <= value <= MAX_QUANTITY:
            return "quantity_out_of_range", f"{path} is {value} (a quantity is 1 to {MAX_QUANTITY})"
    return None


def amounts_in_range(event: Envelope, began: datetime | None) -> Violation | None:
    for path, _, value in _walk(event.payload):
        if _money(value) and isinstance(value["amount"], Decimal) and not 0 <= value["amount"] <= MAX_AMOUNT:
            return "amount_out_of_range", f"{path} is {value['amount']} {value['currency']} (0 to {MAX_AMOUNT})"
    return None


def one_currency(event: Envelope, began: datetime | None) -> Violation | None:
    currencies = {value["currency"] for _, _, value in _walk(event.payload) if _money(value)}
    if len(currencies) > 1:
        return "currency_mismatch", f"amounts in {', '.join(sorted(currencies))} in one event"
    if any(not (len(c) == 3 and c.isascii() and c.isupper()) for c in currencies):
        return "currency_mismatch", f"{', '.join(sorted(currencies))} is not an ISO 4217 code"
    return None


def occurred_within_the_order(event: Envelope, began: datetime | None) -> Violation | None:
    """``began``: when the order's first recorded transition happened, or the processor's now when
    nothing is recorded yet (an order placed a century ahead is as meaningless as one in 1970)."""
    if event.occurred_at < EARLIEST_EVENT_TIME:
        return "implausible_event_time", f"occurred_at {event.occurred_at.isoformat()} is before {EARLIEST_EVENT_TIME.year}"
    if began is not None and event.occurred_at > began + ORDER_LIFETIME:
        # Not naming ``began``: when it is the processor's now, a replay's differs by the moment.
        return "implausible_event_time", (f"occurred_at {event.occurred_at.isoformat()} is more than "
                                          f"{ORDER_LIFETIME.days} days after the order began")
    return None


CHECKS: tuple[Callable[[Envelope, datetime | None], Violation | None], ...] = (
    text_within_limits, quantities_in_range, amounts_in_range, one_currency, occurred_within_the_order)


def checks_topic(topic: str) -> bool:
    """Whether events of this topic are checked: those an upstream system writes."""
    found = catalog.BY_NAME.get(topic)
    return found is not None and bool(set(found.writers) & set(catalog.UPSTREAM_SYSTEMS))


def violation(event: Envelope, began: datetime | None) -> Violation | None:
    """The first check the event fails, as (code, reason), or None."""
    for check in CHECKS:
        found = check(event, began)
        if found is not None:
            return found
    return None
