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

ZERO = Decimal(0)

FITS, WAIT, EXCEEDS = "fits", "wait", "exceeds"


def operation_key(short_type: str, payload: dict) -> str | None:
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
