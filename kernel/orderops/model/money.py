"""The money rules that more than one machine decides by, each defined once (pure, no Kafka).

order-state keeps each instrument's books; returns keeps what it may still refund. Both read the
provider's outcomes on ``payments.events``, and where they decide the same question they must
answer it the same way, or one of them ends up with books the other and the provider disagree with:

- **Counted once per provider operation.** A capture is one ``capture_id``, a refund one
  ``refund_id`` (the idempotency key it was requested under). A provider, or a connector in
  front of it, may deliver an outcome again under a new event id; the event-id check cannot see
  that, so each machine keeps the operations it has counted (``operation_key``, ``counted``).
- **What a capture may take.** At most what the authorization still holds: nothing once it was
  voided or expired (``capture_verdict``). A re-authorization holds ``captured + amount``.
- **What a provider refund may take.** At most what was captured and not yet refunded; a refund
  above that, while more of the authorization may still be captured, waits for the captures
  (they arrive on the same topic, but a provider's refund may overtake its capture); otherwise it
  is refused (``refund_verdict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)

FITS, WAIT, EXCEEDS = "fits", "wait", "exceeds"


def operation_key(short_type: str, payload: dict[str, Any]) -> str | None:
    """The provider operation whose money an outcome on ``payments.events`` moves, or None (a
    failure moves none; a chargeback or a void names no operation: applied once per event id)."""
    if short_type == "PaymentCaptured":
        return f"capture:{payload['capture_id']}"
    if short_type == "RefundSucceeded":
        return f"refund:{payload['refund_id']}"
    return None


def counted(operations: tuple[str, ...], key: str | None) -> bool:
    """Whether this operation's money was counted already."""
    return key is not None and key in operations


def refundable(captured: Decimal, refunded: Decimal) -> Decimal:
    """What may still be refunded on an instrument: captured and not yet refunded."""
    return captured - refunded


@dataclass(frozen=True)
class RefundVerdict:
    outcome: str  # FITS, WAIT or EXCEEDS
    reason: str


def refund_verdict(amount: Decimal, captured: Decimal, refunded: Decimal, still_capturable: Decimal,
                   currency: str) -> RefundVerdict:
    """Whether a refund the provider reports can be counted on the instrument now.

    ``still_capturable``: what the authorization may still capture (zero once it was captured in
    full, voided or expired)."""
    room = refundable(captured, refunded)
    if amount <= room:
        return RefundVerdict(FITS, "")
    if still_capturable > ZERO and amount <= room + still_capturable:
        return RefundVerdict(WAIT, "further captures covering the refund")
    return RefundVerdict(EXCEEDS, f"refund of {amount} {currency} exceeds the {room} {currency} captured and not "
                                  "yet refunded")


def capture_verdict(amount: Decimal, captured: Decimal, still_capturable: Decimal, currency: str) -> str | None:
    """Why a capture the provider reports cannot be counted, or None if it can."""
    if amount <= still_capturable:
        return None
    return (f"capture of {amount} {currency} exceeds the {still_capturable} {currency} still authorized "
            f"({captured} {currency} captured already)")


def authorized_after(captured: Decimal, amount: Decimal) -> Decimal:
    """An authorization (or a re-authorization) holds ``amount`` beyond what was captured."""
    return captured + amount


# -- prices net of discounts ----------------------------------------------------------------------

CENT = Decimal("0.01")


def split_to_cents(amount: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """``amount`` (in cents) split in proportion to ``weights``, each share in cents, the shares
    adding up to ``amount`` exactly (largest remainder: every share rounded down, the cents left
    over to the largest remainders, ties to the first)."""
    total = sum(weights, Decimal(0))
    if not weights:
        return []
    if total <= 0:
        return [amount if n == 0 else Decimal(0) for n in range(len(weights))]
    exact = [amount * w / total for w in weights]
    shares = [(e // CENT) * CENT for e in exact]
    left = int(((amount - sum(shares, Decimal(0))) / CENT).to_integral_value())
    for n in sorted(range(len(weights)), key=lambda k: (-(exact[k] - shares[k]), k))[:left]:
        shares[n] += CENT
    return shares


@dataclass(frozen=True)
class LinePrice:
    """What a line of an order costs the customer: its units at their price, less its own
    discounts and its share of the order's discounts."""

    line_id: str
    quantity: int
    unit_price: Decimal
    line_discounts: Decimal = ZERO
    order_discount_share: Decimal = ZERO

    @property
    def gross(self) -> Decimal:
        return self.unit_price * self.quantity

    @property
    def net(self) -> Decimal:
        return self.gross - self.line_discounts - self.order_discount_share

    def units(self, first: int, count: int) -> Decimal:
        """What units ``first`` to ``first + count - 1`` of the line cost: the net split to the cent
        over its units, so that every unit refunded, in any number of refunds, adds up to the net."""
        return sum(split_to_cents(self.net, [Decimal(1)] * self.quantity)[first:first + count], ZERO)

    def explain(self, name: str, currency: str) -> str:
        said = f"{name}: {self.quantity} × {self.unit_price:.2f} = {self.gross:.2f} {currency}"
        if self.line_discounts:
            said += f", less {self.line_discounts:.2f} of its discounts"
        if self.order_discount_share:
            said += f", less {self.order_discount_share:.2f} of the order's discounts"
        return said + f": {self.net:.2f} {currency} paid for it"


def discounts(item: dict[str, Any]) -> Decimal:
    """What the discounts of an ``OrderPlaced`` payload, or of one of its lines, take off."""
    return sum((d["amount"]["amount"] for d in item.get("discounts") or ()), ZERO)


def discounted(line: dict[str, Any]) -> Decimal:
    """A line of ``OrderPlaced`` at its price less its own discounts."""
    price: Decimal = line["unit_price"]["amount"]
    return Decimal(price * line["quantity"] - discounts(line))


def line_prices(placed: dict[str, Any]) -> list[LinePrice]:
    """Every line of an ``OrderPlaced`` payload priced net of its discounts and its share of the
    order's (in proportion to the lines' discounted prices, to the cent, by largest remainder)."""
    lines = placed["lines"]
    shares = split_to_cents(discounts(placed), [max(discounted(x), ZERO) for x in lines])
    return [LinePrice(x["line_id"], x["quantity"], x["unit_price"]["amount"], discounts(x), share)
            for x, share in zip(lines, shares, strict=True)]


def total_problem(placed: dict[str, Any]) -> str | None:
    """Why an ``OrderPlaced``'s total is not its lines less their discounts, less the order's
    discounts, plus shipping; or None."""
    for line in placed["lines"]:
        if discounted(line) < 0:
            return f"line {line['line_id']}: its discounts exceed its price"
    lines = sum((discounted(x) for x in placed["lines"]), ZERO)
    order_discounts = discounts(placed)
    if order_discounts > lines:
        return f"the order's discounts ({order_discounts:.2f}) exceed its lines ({lines:.2f})"
    shipping = (placed.get("shipping") or {}).get("amount", ZERO)
    expected = lines - order_discounts + shipping
    if expected != placed["total"]["amount"]:
        return (f"total {placed['total']['amount']:.2f} is not the lines {lines:.2f} (less their discounts) less the "
                f"order's discounts {order_discounts:.2f} plus shipping {shipping:.2f} = {expected:.2f}")
    return None
