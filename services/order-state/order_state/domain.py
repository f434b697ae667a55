"""order-state's pure domain: state as immutable values, one handler per kind of input.

No Kafka here. ``apply(state, event, topic, now, park_for)`` returns an ``Outcome``: the new state
and the records to publish (transitions, parked and rejected events, notification requests).
The shared mechanics (applying once, parking, draining, deadlines) are the kernel's
``orderops.model.workflow``; this module says what orders and payments are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from order_state.machines import (
    BY_AMOUNT,
    FULFILLMENT_TRIGGERS,
    NO_AUTHORIZATION_CHANNELS,
    ORDER,
    PAYMENT,
    PAYMENT_TRIGGERS,
    PROBLEM_PAYMENT_STATES,
    RESUME,
    SECURED_PAYMENT_STATES,
)
from orderops.model import money, workflow
from orderops.model.envelope import Envelope, StoredAsJson, from_json
from orderops.model.workflow import CustomerNotice, HistoryEntry, Outcome, Park, Parked, Reject, Step, Transitioned, evolve

ZERO = Decimal(0)


# -- state ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaymentInstrument:
    instrument_id: str
    channel: str
    currency: str
    allocated: Decimal
    status: str = PAYMENT.initial
    authorized: Decimal = ZERO
    captured: Decimal = ZERO
    refunded: Decimal = ZERO
    charged_back: Decimal = ZERO
    operations: tuple[str, ...] = ()  # the provider operations counted in these amounts (money.operation_key)

    @property
    def secured(self) -> bool:
        return self.channel in NO_AUTHORIZATION_CHANNELS or self.status in SECURED_PAYMENT_STATES

    @property
    def refundable(self) -> Decimal:
        return money.refundable(self.captured, self.refunded)

    @property
    def still_capturable(self) -> Decimal:
        return max(self.authorized - self.captured, ZERO)  # a void or an expiry sets authorized to captured


@dataclass(frozen=True)
class OrderedLine:
    line_id: str
    name: str
    quantity: int
    unit_price: Decimal
    currency: str
    cancelled: int = 0


@dataclass(frozen=True)
class OrderState(StoredAsJson):
    order_id: str
    status: str = ORDER.initial
    held_from: str | None = None
    hold_reason: str = ""
    customer: dict[str, Any] | None = None
    lines: tuple[OrderedLine, ...] = ()
    instruments: tuple[PaymentInstrument, ...] = ()
    fulfillment_status: str = "unfulfilled"
    completed_at: datetime | None = None
    seen: frozenset[str] = frozenset()
    parked: tuple[Parked, ...] = ()
    history: tuple[HistoryEntry, ...] = ()

    def instrument(self, instrument_id: str) -> PaymentInstrument | None:
        return next((i for i in self.instruments if i.instrument_id == instrument_id), None)

    def line(self, line_id: str) -> OrderedLine | None:
        return next((x for x in self.lines if x.line_id == line_id), None)

    def with_instrument(self, updated: PaymentInstrument) -> OrderState:
        return evolve(self, instruments=tuple(updated if i.instrument_id == updated.instrument_id else i
                                               for i in self.instruments))

    def with_line(self, updated: OrderedLine) -> OrderState:
        return evolve(self, lines=tuple(updated if x.line_id == updated.line_id else x for x in self.lines))

    def json_value(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id, "status": self.status, "held_from": self.held_from,
            "hold_reason": self.hold_reason, "customer": self.customer,
            "lines": [vars(x) for x in self.lines], "instruments": [vars(i) for i in self.instruments],
            "fulfillment_status": self.fulfillment_status, "completed_at": self.completed_at,
            "seen": sorted(self.seen), "history": [vars(h) for h in self.history],
            "parked": [p.json_value() for p in self.parked],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderState:
        plain = from_json({k: v for k, v in data.items() if k != "parked"})
        return cls(
            order_id=plain["order_id"], status=plain["status"], held_from=plain["held_from"],
            hold_reason=plain["hold_reason"], customer=plain["customer"],
            lines=tuple(OrderedLine(**x) for x in plain["lines"]),
            instruments=tuple(PaymentInstrument(**{**i, "operations": tuple(i.get("operations", ()))})
                              for i in plain["instruments"]),
            fulfillment_status=plain["fulfillment_status"], completed_at=plain["completed_at"],
            seen=frozenset(plain["seen"]), parked=tuple(Parked.from_json(p) for p in data["parked"]),
            history=tuple(HistoryEntry(**h) for h in plain["history"]),
        )


# -- invariants -----------------------------------------------------------------------------------

def refunded_within_captured(i: PaymentInstrument) -> bool:
    return ZERO <= i.refunded <= i.captured


def captured_within_authorized(i: PaymentInstrument) -> bool:
    return ZERO <= i.captured <= i.authorized or i.channel in NO_AUTHORIZATION_CHANNELS


def cancelled_within_ordered(x: OrderedLine) -> bool:
    return 0 <= x.cancelled <= x.quantity


def violated_invariants(state: OrderState) -> list[str]:
    found = [f"{check.__name__}({i.instrument_id})" for i in state.instruments
             for check in (refunded_within_captured, captured_within_authorized) if not check(i)]
    found += [f"cancelled_within_ordered({x.line_id})" for x in state.lines if not cancelled_within_ordered(x)]
    return found


# -- the order machine's steps --------------------------------------------------------------------

_ORDER_ADVICE = {
    ("completed", "cancel"): " (it was delivered: start a return instead)",
}


class OrderStep(Step):
    state: OrderState

    def order_trigger(self, trigger: str, reason: str) -> bool:
        """Fire a trigger on the order machine if the table allows it here; True if it moved."""
        current = self.state.status
        target = ORDER.next(current, trigger)
        if target is None:
            return False
        if target == RESUME:
            # Releasing a hold returns the order where it was; the trigger then applies there too
            # (a hold taken while pending payment ends in confirmed once payment is secured).
            resumed = self.state.held_from or ORDER.initial
            self.state = evolve(self.state, status=resumed, held_from=None, hold_reason="")
            self.move(ORDER.name, self.state.order_id, current, resumed, f"hold released: {reason}")
            self.order_trigger(trigger, reason)
            return True
        held_from, hold_reason = self.state.held_from, self.state.hold_reason
        if target == "on_hold":
            held_from, hold_reason = current, reason
        completed_at = self.event.occurred_at if target == "completed" and current != "completed" else \
            self.state.completed_at
        self.state = evolve(self.state, status=target, held_from=held_from, hold_reason=hold_reason,
                             completed_at=completed_at)
        self.move(ORDER.name, self.state.order_id, current, target, reason)
        self._notify_order_change(current, target)
        return True

    def require_order_trigger(self, trigger: str, reason: str) -> None:
        """A trigger the event itself asks for: parked or rejected when the table says no."""
        if not self.order_trigger(trigger, reason):
            current = self.state.status
            ORDER.require(current, trigger, self.state.order_id, _ORDER_ADVICE.get((current, trigger), ""))

    def reconcile_payment(self, reason: str) -> None:
        """The order follows its payments: a problem holds it; all instruments secured confirm it."""
        problem = next((i for i in self.state.instruments if i.status in PROBLEM_PAYMENT_STATES), None)
        if problem is not None:
            self.order_trigger("payment_problem", f"payment {problem.status} on {problem.instrument_id}: {reason}")
        elif self.state.instruments and all(i.secured for i in self.state.instruments):
            self.order_trigger("payment_secured", reason)

    def _notify_order_change(self, before: str, after: str) -> None:
        if after == "confirmed" and before == "pending_payment":
            self.emit(CustomerNotice("order_confirmed", {"lines": str(len(self.state.lines))}))
        elif after == "cancelled":
            refunds = tuple((i.instrument_id, i.channel, i.refundable, i.currency)
                            for i in self.state.instruments if i.refundable > ZERO)
            released = [i.instrument_id for i in self.state.instruments if i.authorized > i.captured]
            self.emit(CustomerNotice("order_cancelled", {"released_authorizations": ",".join(released)}, refunds))


# -- entry points ---------------------------------------------------------------------------------

def new_state(order_id: str) -> OrderState:
    return OrderState(order_id=order_id)


def apply(state: OrderState | None, event: Envelope, topic: str, now: datetime, park_for: timedelta) -> Outcome:
    """Apply one input event. ``now`` is the processor clock (wall clock live, event time in replay)."""
    return workflow.apply(state or new_state(event.order_id), event, topic, now, park_for, HANDLERS, OrderStep)


def expire(state: OrderState, now: datetime, close_after: timedelta, timer_topic: str) -> Outcome:
    """Reject parked events whose deadline passed; close an order whose completion is old enough."""
    outcome = workflow.expire_parked(state, now, _current_state)
    state = outcome.state
    if state.status == "completed" and state.completed_at and state.completed_at + close_after <= now:
        due = state.completed_at + close_after
        closing = Envelope(f"{state.order_id}:close-after:{state.completed_at.isoformat()}", state.order_id, due,
                           "order-state", "orderops.common.TimerFired", {"due_at": due, "fired_at": now})
        step = OrderStep(state, closing, timer_topic)
        step.order_trigger("close", f"completed more than {close_after.days} days ago")
        return Outcome(step.state, (*outcome.records, *step.records))
    return outcome


def next_deadline(state: OrderState, close_after: timedelta) -> datetime | None:
    candidates = [d for d in (workflow.earliest_park_deadline(state),) if d is not None]
    if state.status == "completed" and state.completed_at:
        candidates.append(state.completed_at + close_after)
    return min(candidates, default=None)


def _current_state(state: OrderState, machine: str, entity_id: str) -> str:
    if machine == PAYMENT.name:
        instrument = state.instrument(entity_id)
        return instrument.status if instrument else PAYMENT.initial
    return state.status


# -- one handler per input event type -------------------------------------------------------------

def _order_placed(step: OrderStep) -> None:
    payload = step.event.payload
    if step.state.status != ORDER.initial:
        raise Reject(ORDER.name, step.state.order_id, step.state.status, "duplicate_order",
                     "an order with this id was already placed (with another event id)")
    lines = tuple(OrderedLine(x["line_id"], x["name"], x["quantity"], x["unit_price"]["amount"], x["unit_price"]["currency"])
                  for x in payload["lines"])
    instruments = tuple(PaymentInstrument(i["instrument_id"], i["channel"], i["amount"]["currency"], i["amount"]["amount"])
                        for i in payload["instruments"])
    step.state = evolve(step.state, customer=payload["customer"], lines=lines, instruments=instruments)
    step.require_order_trigger("placed", "order placed")
    step.reconcile_payment("cash on delivery needs no authorization")


def _order_cancelled(step: OrderStep) -> None:
    """The customer's or the shop's cancellation is a request: what it cancels depends on what has
    left the warehouse, which only fulfillment knows when it reads it (order-state's own view of
    fulfillment may be a snapshot behind). The order follows fulfillment's status snapshot caused by
    this request: cancelled if nothing had left, else in fulfillment with the rest cancelled."""
    state, payload = step.state, step.event.payload
    if state.status == ORDER.initial:
        raise Park(ORDER.name, state.order_id, state.status, ORDER.waits_for(state.status, "cancel") or "")
    if state.status in ORDER.terminal or state.status == "completed":
        ORDER.require(state.status, "cancel", state.order_id, _ORDER_ADVICE.get((state.status, "cancel"), ""))
    step.move(ORDER.name, state.order_id, state.status, state.status,
              f"cancellation requested by {payload['requested_by']}: {payload['reason']}; fulfillment cancels what "
              "has not left the warehouse", always=True)


def _line_cancelled(step: OrderStep) -> None:
    """A request, as an order cancellation is: fulfillment cancels the units that have not left
    (it alone knows which), and the lines' cancelled units follow its status snapshot."""
    state, payload = step.state, step.event.payload
    if state.status == ORDER.initial:
        raise Park(ORDER.name, state.order_id, state.status, ORDER.waits_for(state.status, "cancel") or "")
    if state.status in ORDER.terminal or state.status == "completed":
        raise Reject(ORDER.name, state.order_id, state.status, "invalid_transition",
                     f"order is {state.status}: its lines can no longer be cancelled")
    line = state.line(payload["line_id"])
    if line is None:
        raise Reject(ORDER.name, state.order_id, state.status, "unknown_line",
                     f"the order has no line {payload['line_id']}")
    quantity = payload["quantity"]
    if quantity <= 0 or line.cancelled + quantity > line.quantity:
        raise Reject(ORDER.name, state.order_id, state.status, "cancel_exceeds_line",
                     f"cannot cancel {quantity} of line {line.line_id}: {line.quantity - line.cancelled} left")
    step.move(ORDER.name, state.order_id, state.status, state.status,
              f"cancellation of {quantity} × {line.name} requested: {payload['reason']}; fulfillment cancels what "
              "has not left the warehouse", always=True)


def _fulfillment_status(step: OrderStep) -> None:
    status = step.event.payload["status"]
    if status != step.state.fulfillment_status:  # else the state stays the same value: nothing parked is retried
        step.state = evolve(step.state, fulfillment_status=status)
    for said in step.event.payload["lines"]:  # cancelled units as fulfillment decided them
        line = step.state.line(said["line_id"])
        if line is not None and line.cancelled != said["cancelled"]:
            step.state = step.state.with_line(evolve(line, cancelled=min(said["cancelled"], line.quantity)))
    trigger = FULFILLMENT_TRIGGERS.get(status)
    if trigger is not None:
        step.require_order_trigger(trigger, f"fulfillment is {status.replace('_', ' ')}")


def _payment(step: OrderStep) -> None:
    state, event, payload = step.state, step.event, step.event.payload
    trigger = PAYMENT_TRIGGERS[event.short_type]
    instrument_id = payload["instrument_id"]
    instrument = state.instrument(instrument_id)
    if instrument is None:
        if state.status == ORDER.initial:
            raise Park(PAYMENT.name, instrument_id, PAYMENT.initial, "the order to be placed")
        raise Reject(PAYMENT.name, instrument_id, "unknown", "unknown_instrument",
                     f"the order has no payment instrument {instrument_id}")
    if trigger == "captured" and state.status == "cancelled":
        raise Reject(PAYMENT.name, instrument_id, instrument.status, "capture_on_cancelled_order",
                     "the order is cancelled: nothing may be captured (void the authorization)")
    amount = payload.get("amount")
    if amount is not None and amount["currency"] != instrument.currency:
        raise Reject(PAYMENT.name, instrument_id, instrument.status, "currency_mismatch",
                     f"{amount['currency']} on an instrument paid in {instrument.currency}")
    operation = money.operation_key(event.short_type, payload)
    if money.counted(instrument.operations, operation):
        raise Reject(PAYMENT.name, instrument_id, instrument.status, "duplicate_provider_outcome",
                     f"{event.short_type} for {operation}, already counted (delivered again under event id "
                     f"{event.event_id}): the books keep the first")
    target = PAYMENT.require(instrument.status, trigger, instrument_id)
    updated = _amounts_after(instrument, trigger, amount["amount"] if amount else ZERO)
    if operation is not None:
        updated = evolve(updated, operations=(*updated.operations, operation))
    if target == BY_AMOUNT:
        target = _status_by_amount(updated)
    updated = evolve(updated, status=target)
    step.state = state.with_instrument(updated)
    reason = _payment_reason(event.short_type, payload)
    # Payment records are kept even without a state change: they are the amount ledger.
    step.move(PAYMENT.name, instrument_id, instrument.status, target, reason, detail=updated, always=True)
    if trigger == "auth_failed":
        step.emit(CustomerNotice("payment_failed", {"instrument_id": instrument_id, "reason": payload["reason"],
                                            "customer_action": payload.get("customer_action") or
                                            "please update your payment method"}))
    step.reconcile_payment(reason)


def _amounts_after(i: PaymentInstrument, trigger: str, amount: Decimal) -> PaymentInstrument:
    """The amounts after a payment trigger; raises when a guard says it cannot happen."""
    if trigger == "authorized":
        return evolve(i, authorized=money.authorized_after(i.captured, amount))
    if trigger == "captured":
        refused = money.capture_verdict(amount, i.captured, i.authorized - i.captured, i.currency)
        if refused:
            raise Reject(PAYMENT.name, i.instrument_id, i.status, "capture_exceeds_authorization", refused)
        return evolve(i, captured=i.captured + amount)
    if trigger == "refunded":
        verdict = money.refund_verdict(amount, i.captured, i.refunded, i.still_capturable, i.currency)
        if verdict.outcome == money.WAIT:
            raise Park(PAYMENT.name, i.instrument_id, i.status, verdict.reason)
        if verdict.outcome == money.EXCEEDS:
            raise Reject(PAYMENT.name, i.instrument_id, i.status, "refund_exceeds_captured", verdict.reason)
        return evolve(i, refunded=i.refunded + amount)
    if trigger in ("voided", "auth_expired"):
        return evolve(i, authorized=i.captured) if i.captured > ZERO else i
    if trigger == "charged_back":
        return evolve(i, charged_back=i.charged_back + amount)
    return i


def _status_by_amount(i: PaymentInstrument) -> str:
    if i.refunded > ZERO:
        # Refunded in full only once nothing more can be captured: a terminal state must not
        # refuse a capture the authorization still holds.
        return "refunded" if i.refunded == i.captured and i.captured >= i.authorized else "partially_refunded"
    if i.captured > ZERO:
        return "captured" if i.captured == i.authorized else "partially_captured"
    return "authorized"


def _payment_reason(short_type: str, payload: dict[str, Any]) -> str:
    amount = payload.get("amount")
    money = f" {amount['amount']} {amount['currency']}" if amount else ""
    detail = payload.get("reason")
    return f"{short_type}{money}" + (f": {detail}" if detail else "")


HANDLERS = {
    "OrderPlaced": _order_placed,
    "OrderCancelled": _order_cancelled,
    "LineCancelled": _line_cancelled,
    "FulfillmentStatusChanged": _fulfillment_status,
    **{name: _payment for name in PAYMENT_TRIGGERS},
}

__all__ = [
    "HANDLERS",
    "CustomerNotice",
    "OrderState",
    "OrderedLine",
    "Outcome",
    "PaymentInstrument",
    "Transitioned",
    "apply",
    "expire",
    "next_deadline",
    "violated_invariants",
]
