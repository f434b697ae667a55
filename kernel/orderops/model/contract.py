"""What an upstream event must say, beyond fitting its schema: the named checks every state machine
runs before its handlers (``orderops.model.workflow.apply``). Pure: no Kafka.

A schema admits a negative quantity, a price in two currencies at once, a 100 kB product name, an
order placed in 1970. Such an event decodes, so it is not a dead letter; it is meaningless in any
state, so no handler should ever see it. Each state machine that reads it rejects it with an
``EventRejected`` audit record whose code names the check, before it can change an order — the
same in a live run and in a replay, since the checks read nothing but the event and the order's
own history.

Events the processors derive themselves are not checked: their writers are this code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from orderops.model import catalog, money
from orderops.model.envelope import Envelope

MAX_TEXT_CHARS = 2_000  # any string field: names, addresses, reasons, tracking references
MAX_QUANTITY = 10_000  # of one line, in any event
MAX_AMOUNT = Decimal("1000000000")  # in any currency
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # before it, a default value ("1970-01-01"), not a time
ORDER_LIFETIME = timedelta(days=400)  # an order's events come within this long of its first (returns, refunds)

Violation = tuple[str, str]  # (code, reason)


Trail = tuple[str | int, ...]  # the keys and indexes down to a value of the payload


def path(trail: Trail) -> str:
    """A trail as a violation's message names it: ``lines[0].price.amount``."""
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in trail).lstrip(".")


@dataclass(frozen=True, slots=True)
class Payload:
    """What the checks read of an event's payload, found in one walk: every string, every quantity
    and every amount, each with the trail of its container (a tuple made per container, not per
    value, and a path only for a violation's message: walking the payload once per check was a third
    of a replay's time, and a named tuple per field still two fifths)."""

    texts: list[tuple[Trail, str | int, str]]  # (container, key or index, the string)
    quantities: list[tuple[Trail, int]]  # (the container of a "quantity", its value)
    amounts: list[tuple[Trail, dict[str, Any]]]  # (the amount's own trail, {"amount": ..., "currency": ...})


_CONTAINERS = (dict, list, tuple)


def read_payload(value: Any) -> Payload:
    """Every string, quantity and amount of a payload, nested records and arrays included, once."""
    found = Payload([], [], [])
    if isinstance(value, _CONTAINERS):
        _visit(value, (), found)
    return found


def _visit(item: Any, at: Trail, found: Payload) -> None:
    """Depth first, in the payload's order. A function of the module, not a closure that calls
    itself: such a closure is a reference cycle, and with it every trail and list it reached was
    left for the garbage collector — 50 objects per event, whose collections took a third of a
    replay's time."""
    if isinstance(item, dict):
        if len(item) == 2 and "amount" in item and "currency" in item:
            found.amounts.append((at, item))
        entries: Iterable[tuple[Any, Any]] = item.items()
    else:
        entries = enumerate(item)
    for key, nested in entries:
        if isinstance(nested, str):
            found.texts.append((at, key, nested))
        elif isinstance(nested, _CONTAINERS):
            _visit(nested, (*at, key), found)
        elif key == "quantity" and isinstance(nested, int):
            found.quantities.append((at, nested))


def text_within_limits(event: Envelope, payload: Payload, began: datetime | None) -> Violation | None:
    for at, key, text in payload.texts:
        if len(text) > MAX_TEXT_CHARS:
            return "text_too_long", f"{path((*at, key))} has {len(text)} characters (at most {MAX_TEXT_CHARS})"
    return None


def quantities_in_range(event: Envelope, payload: Payload, began: datetime | None) -> Violation | None:
    for at, quantity in payload.quantities:
        if not 1 <= quantity <= MAX_QUANTITY:
            return "quantity_out_of_range", f"{path((*at, 'quantity'))} is {quantity} (a quantity is 1 to {MAX_QUANTITY})"
    return None


def amounts_in_range(event: Envelope, payload: Payload, began: datetime | None) -> Violation | None:
    for at, amount in payload.amounts:
        if isinstance(amount["amount"], Decimal) and not 0 <= amount["amount"] <= MAX_AMOUNT:
            return "amount_out_of_range", f"{path(at)} is {amount['amount']} {amount['currency']} (0 to {MAX_AMOUNT})"
    return None


def one_currency(event: Envelope, payload: Payload, began: datetime | None) -> Violation | None:
    currencies = {money["currency"] for _, money in payload.amounts}
    if len(currencies) > 1:
        return "currency_mismatch", f"amounts in {', '.join(sorted(currencies))} in one event"
    if any(not (len(c) == 3 and c.isascii() and c.isupper()) for c in currencies):
        return "currency_mismatch", f"{', '.join(sorted(currencies))} is not an ISO 4217 code"
    return None


def occurred_within_the_order(event: Envelope, payload: Payload, began: datetime | None) -> Violation | None:
    """``began``: when the order's first recorded transition happened, or the processor's now when
    nothing is recorded yet (an order placed a century ahead is as meaningless as one in 1970)."""
    if event.occurred_at < EARLIEST_EVENT_TIME:
        return "implausible_event_time", f"occurred_at {event.occurred_at.isoformat()} is before {EARLIEST_EVENT_TIME.year}"
    if began is not None and event.occurred_at > began + ORDER_LIFETIME:
        # Not naming ``began``: when it is the processor's now, a replay's differs by the moment.
        return "implausible_event_time", (f"occurred_at {event.occurred_at.isoformat()} is more than "
                                          f"{ORDER_LIFETIME.days} days after the order began")
    return None


def order_total_adds_up(event: Envelope, payload: Payload, began: datetime | None) -> Violation | None:
    """An order's total is its lines less their discounts, less the order's discounts, plus
    shipping (``money.total_problem``): refunds are computed from these figures."""
    if event.short_type != "OrderPlaced":
        return None
    problem = money.total_problem(event.payload)
    return None if problem is None else ("order_total_mismatch", problem)


CHECKS: tuple[Callable[[Envelope, Payload, datetime | None], Violation | None], ...] = (
    text_within_limits, quantities_in_range, amounts_in_range, one_currency, occurred_within_the_order,
    order_total_adds_up)


@functools.cache
def checks_topic(topic: str) -> bool:
    """Whether events of this topic are checked: those an upstream system writes."""
    found = catalog.BY_NAME.get(topic)
    return found is not None and bool(set(found.writers) & set(catalog.UPSTREAM_SYSTEMS))


def violation(event: Envelope, began: datetime | None) -> Violation | None:
    """The first check the event fails, as (code, reason), or None."""
    payload = read_payload(event.payload)
    for check in CHECKS:
        found = check(event, payload, began)
        if found is not None:
            return found
    return None


def web_link(url: str | None) -> str:
    """``url`` if it is a link a customer or an agent may be sent to (http or https, with a host),
    else "": a tracking URL comes from upstream and reaches an ``href`` in the console and the
    customer's messages, where ``javascript:`` or ``data:`` would run or mislead."""
    if not url:
        return ""
    parts = urlsplit(url.strip())
    return url.strip() if parts.scheme.lower() in ("http", "https") and parts.netloc else ""
