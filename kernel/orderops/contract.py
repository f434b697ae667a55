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

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from orderops import catalog
from orderops.envelope import Envelope

MAX_TEXT_CHARS = 2_000  # any string field: names, addresses, reasons, tracking references
MAX_QUANTITY = 10_000  # of one line, in any event
MAX_AMOUNT = Decimal("1000000000")  # in any currency
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # before it, a default value ("1970-01-01"), not a time
ORDER_LIFETIME = timedelta(days=400)  # an order's events come within this long of its first (returns, refunds)

Violation = tuple[str, str]  # (code, reason)


class Field(NamedTuple):
    """One field of an event's payload, nested records and arrays included. ``trail``: the keys and
    indexes down to it, made into a path only for a violation's message. A tuple, not a frozen
    dataclass: every upstream event makes a dozen or more of them (issue 12)."""

    trail: tuple[str | int, ...]
    value: Any

    @property
    def key(self) -> str | int:
        return self.trail[-1]

    @property
    def path(self) -> str:
        return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in self.trail).lstrip(".")


_CONTAINERS = (dict, list, tuple)


def fields(value: Any, trail: tuple[str | int, ...] = ()) -> list[Field]:
    """Every field of a payload, once: the checks all read this one list (walking the payload once per
    check was a third of a replay's time)."""
    found: list[Field] = []

    def visit(item: Any, at: tuple[str | int, ...]) -> None:  # depth first, in the payload's order
        if isinstance(item, dict):
            for key, nested in item.items():
                trail = (*at, key)
                found.append(Field(trail, nested))
                if isinstance(nested, _CONTAINERS):  # a leaf needs no call
                    visit(nested, trail)
        elif isinstance(item, list | tuple):
            for n, nested in enumerate(item):
                visit(nested, (*at, n))

    visit(value, trail)
    return found


def _money(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 2 and "amount" in value and "currency" in value


def text_within_limits(event: Envelope, payload: list[Field], began: datetime | None) -> Violation | None:
    for field in payload:
        if isinstance(field.value, str) and len(field.value) > MAX_TEXT_CHARS:
            return "text_too_long", f"{field.path} has {len(field.value)} characters (at most {MAX_TEXT_CHARS})"
    return None


def quantities_in_range(event: Envelope, payload: list[Field], began: datetime | None) -> Violation | None:
    for field in payload:
        if field.key == "quantity" and isinstance(field.value, int) and not 1 <= field.value <= MAX_QUANTITY:
            return "quantity_out_of_range", f"{field.path} is {field.value} (a quantity is 1 to {MAX_QUANTITY})"
    return None


def amounts_in_range(event: Envelope, payload: list[Field], began: datetime | None) -> Violation | None:
    for field in payload:
        money = field.value
        if _money(money) and isinstance(money["amount"], Decimal) and not 0 <= money["amount"] <= MAX_AMOUNT:
            return "amount_out_of_range", f"{field.path} is {money['amount']} {money['currency']} (0 to {MAX_AMOUNT})"
    return None


def one_currency(event: Envelope, payload: list[Field], began: datetime | None) -> Violation | None:
    currencies = {field.value["currency"] for field in payload if _money(field.value)}
    if len(currencies) > 1:
        return "currency_mismatch", f"amounts in {', '.join(sorted(currencies))} in one event"
    if any(not (len(c) == 3 and c.isascii() and c.isupper()) for c in currencies):
        return "currency_mismatch", f"{', '.join(sorted(currencies))} is not an ISO 4217 code"
    return None


def occurred_within_the_order(event: Envelope, payload: list[Field], began: datetime | None) -> Violation | None:
    """``began``: when the order's first recorded transition happened, or the processor's now when
    nothing is recorded yet (an order placed a century ahead is as meaningless as one in 1970)."""
    if event.occurred_at < EARLIEST_EVENT_TIME:
        return "implausible_event_time", f"occurred_at {event.occurred_at.isoformat()} is before {EARLIEST_EVENT_TIME.year}"
    if began is not None and event.occurred_at > began + ORDER_LIFETIME:
        # Not naming ``began``: when it is the processor's now, a replay's differs by the moment.
        return "implausible_event_time", (f"occurred_at {event.occurred_at.isoformat()} is more than "
                                          f"{ORDER_LIFETIME.days} days after the order began")
    return None


CHECKS: tuple[Callable[[Envelope, list[Field], datetime | None], Violation | None], ...] = (
    text_within_limits, quantities_in_range, amounts_in_range, one_currency, occurred_within_the_order)


def checks_topic(topic: str) -> bool:
    """Whether events of this topic are checked: those an upstream system writes."""
    found = catalog.BY_NAME.get(topic)
    return found is not None and bool(set(found.writers) & set(catalog.UPSTREAM_SYSTEMS))


def violation(event: Envelope, began: datetime | None) -> Violation | None:
    """The first check the event fails, as (code, reason), or None."""
    payload = fields(event.payload)
    for check in CHECKS:
        found = check(event, payload, began)
        if found is not None:
            return found
    return None
