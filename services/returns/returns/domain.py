"""returns' pure domain: its own view of each order, the policy decision with its rule trace,
the return machine, refunds routed by payment channel, and the guard that no refund ever
exceeds what was captured on an instrument minus what was already refunded (or is on its way).

No Kafka here. The published policies arrive as the step's context (``Policies``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from orderops.model import money, workflow
from orderops.model.envelope import Envelope, StoredAsJson, from_json
from orderops.model.workflow import (
    CustomerNotice,
    HistoryEntry,
    Outcome,
    Park,
    Parked,
    Reject,
    Rejected,
    Step,
    evolve,
    known,
)
from returns.machines import CLOSE_AFTER_DAYS, DEFECT_REASONS, GRACE_DAYS, REFUND, RETURN
from returns.policy import Policy, Route, in_force

ZERO = Decimal(0)
CENT = Decimal("0.01")
CAPTURES_AWAITED = "captures covering the refund"
OPEN_REFUNDS = frozenset({"requested", "failed"})
PAID = frozenset({"succeeded", "overpaid"})


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


# -- state ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReturnableLine:
    line_id: str
    name: str
    category: str
    quantity: int
    unit_price: Decimal
    currency: str
    final_sale: bool = False
    delivered: int = 0
    delivered_at: datetime | None = None
    cancelled: int = 0
    cancel_refunded: int = 0  # cancelled units already refunded (or being refunded)
    line_discounts: Decimal = ZERO  # the line's own discounts, all its units together
    order_discount_share: Decimal = ZERO  # its share of the order's discounts (money.line_prices)

    @property
    def price(self) -> money.LinePrice:
        return money.LinePrice(self.line_id, self.quantity, self.unit_price, self.line_discounts,
                               self.order_discount_share)


@dataclass(frozen=True)
class RefundableInstrument:
    instrument_id: str
    channel: str
    currency: str
    allocated: Decimal = ZERO  # what the order put on it: more captures may come up to this
    authorized: Decimal = ZERO  # what the provider's authorization holds, once one was read
    captured: Decimal = ZERO
    first_captured_at: datetime | None = None
    refunded_elsewhere: Decimal = ZERO  # refunds this processor did not ask for
    operations: tuple[str, ...] = ()  # provider operations counted here (money.operation_key)
    lapsed: str = ""  # why the uncaptured rest of the allocation will never be captured, once it will not

    @property
    def still_capturable(self) -> Decimal:
        """What may still be captured: order-state's rule (``money``), with the order's allocation
        standing in for an authorization not read yet."""
        if self.lapsed:
            return ZERO
        return max((self.authorized if self.authorized > ZERO else self.allocated) - self.captured, ZERO)


@dataclass(frozen=True)
class ReturnLine:
    line_id: str
    quantity: int
    reason: str
    received: int = 0
    inspected: int = 0


@dataclass(frozen=True)
class Return:
    return_id: str
    requested_at: datetime
    lines: tuple[ReturnLine, ...]
    status: str = RETURN.initial
    decision: str = ""
    policy: str = ""
    trace: tuple[dict[str, Any], ...] = ()

    def line(self, line_id: str) -> ReturnLine | None:
        return next((x for x in self.lines if x.line_id == line_id), None)


@dataclass(frozen=True)
class Refund:
    refund_id: str  # stable id of the refund; each attempt's idempotency key is in ``keys``
    cause: str  # "return <id>", or "cancelled <units × name, ...>"
    return_id: str | None
    instrument_id: str
    channel: str
    method: str
    amount: Decimal
    currency: str
    reason: str
    requested_at: datetime
    policy: str
    status: str = REFUND.initial
    keys: tuple[str, ...] = ()
    paid_by: str = ""  # the attempt key whose success paid it
    surplus: Decimal = ZERO  # what further successes of it refunded again (overpaid)
    replaces: str = ""  # the refund this one replaced (a store-credit fallback)

    @property
    def paid(self) -> Decimal:
        """What the provider refunded for it."""
        return self.amount + self.surplus if self.status in PAID else ZERO

    @property
    def attempt(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class ReturnsState(StoredAsJson):
    order_id: str
    placed_at: datetime | None = None
    policy: str = ""  # the policy version in force when the order was placed: every decision is by it
    customer: dict[str, Any] | None = None
    lines: tuple[ReturnableLine, ...] = ()
    instruments: tuple[RefundableInstrument, ...] = ()
    returns: tuple[Return, ...] = ()
    refunds: tuple[Refund, ...] = ()
    seen: frozenset[str] = frozenset()
    parked: tuple[Parked, ...] = ()
    history: tuple[HistoryEntry, ...] = ()

    def line(self, line_id: str) -> ReturnableLine | None:
        return next((x for x in self.lines if x.line_id == line_id), None)

    def units_refunded(self, line_id: str) -> int:
        """How many units of a line were refunded (or are being): inspected in a return, or
        cancelled; the next unit refunded is priced after them (``LinePrice.units``)."""
        line = self.line(line_id)
        return sum(x.inspected for r in self.returns for x in r.lines if x.line_id == line_id) + (
            line.cancel_refunded if line else 0)

    def instrument(self, instrument_id: str) -> RefundableInstrument | None:
        return next((i for i in self.instruments if i.instrument_id == instrument_id), None)

    def return_(self, return_id: str) -> Return | None:
        return next((r for r in self.returns if r.return_id == return_id), None)

    def refund_by_key(self, key: str) -> Refund | None:
        return next((r for r in self.refunds if key in r.keys), None)

    def put(self, **items: Any) -> ReturnsState:
        """Replace one line/instrument/return/refund by its id (``put(refund=r)``)."""
        (kind, item), = items.items()
        attr, ident = {"line": ("lines", "line_id"), "instrument": ("instruments", "instrument_id"),
                       "return_": ("returns", "return_id"), "refund": ("refunds", "refund_id")}[kind]
        current = getattr(self, attr)
        key = getattr(item, ident)
        if any(getattr(x, ident) == key for x in current):
            return evolve(self, **{attr: tuple(item if getattr(x, ident) == key else x for x in current)})
        return evolve(self, **{attr: (*current, item)})

    def committed(self, instrument_id: str) -> Decimal:
        """Refunds on an instrument that succeeded or may still succeed."""
        return sum((r.paid or (r.amount if r.status in OPEN_REFUNDS else ZERO) for r in self.refunds
                    if r.instrument_id == instrument_id), ZERO)

    def partner(self, refund: Refund) -> Refund | None:
        """The refund ``refund`` replaced, or the one that replaced it (a store-credit fallback)."""
        if refund.replaces:
            return next((r for r in self.refunds if r.refund_id == refund.replaces), None)
        return next((r for r in self.refunds if r.replaces == refund.refund_id), None)

    def settled_by_partner(self, refund: Refund) -> bool:
        partner = self.partner(refund)
        return partner is not None and partner.status in PAID

    def refundable(self, instrument: RefundableInstrument) -> Decimal:
        """What this processor may still ask to refund: in-flight requests count as taken."""
        return money.refundable(instrument.captured, instrument.refunded_elsewhere
                                + self.committed(instrument.instrument_id))

    def refunded(self, instrument: RefundableInstrument) -> Decimal:
        """What the provider confirmed refunded on the instrument (the amount order-state books)."""
        return instrument.refunded_elsewhere + sum((r.paid for r in self.refunds if r.instrument_id ==
                                                    instrument.instrument_id), ZERO)

    def json_value(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id, "placed_at": self.placed_at, "policy": self.policy, "customer": self.customer,
            "lines": [vars(x) for x in self.lines], "instruments": [vars(i) for i in self.instruments],
            "returns": [{**vars(r), "lines": [vars(x) for x in r.lines], "trace": list(r.trace)} for r in self.returns],
            "refunds": [{**vars(r), "keys": list(r.keys)} for r in self.refunds],
            "seen": sorted(self.seen), "history": [vars(h) for h in self.history],
            "parked": [p.json_value() for p in self.parked],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReturnsState:
        d = from_json({k: v for k, v in data.items() if k != "parked"})
        return cls(
            order_id=d["order_id"], placed_at=d["placed_at"], policy=d.get("policy", ""), customer=d["customer"],
            lines=tuple(ReturnableLine(**x) for x in d["lines"]),
            instruments=tuple(RefundableInstrument(**{**i, "operations": tuple(i.get("operations", ()))})
                              for i in d["instruments"]),
            returns=tuple(Return(**{**r, "lines": tuple(ReturnLine(**x) for x in r["lines"]),
                                    "trace": tuple(r["trace"])}) for r in d["returns"]),
            refunds=tuple(Refund(**{**r, "keys": tuple(r["keys"])}) for r in d["refunds"]),
            seen=frozenset(d["seen"]), parked=tuple(Parked.from_json(p) for p in data["parked"]),
            history=tuple(HistoryEntry(**h) for h in d["history"]),
        )


# -- what outcomes say besides transitions --------------------------------------------------------

@dataclass(frozen=True)
class Decided:
    return_id: str
    decision: str
    policy: str
    trace: tuple[dict[str, Any], ...]
    reason: str


@dataclass(frozen=True)
class RefundCommand:
    refund: Refund
    key: str
    sla_hours: int | None = None  # what the refund's policy version gives its channel to complete it


@dataclass(frozen=True)
class Measure:
    """A duration the processor reports as a metric (computed from event time)."""

    name: str
    seconds: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policies:
    """The returns.policies the processor has read, and which policy orders are judged by."""

    by_ref: dict[str, Policy]
    policy_id: str = "standard"

    def for_order(self, placed_at: datetime) -> Policy | None:
        return in_force(self.by_ref, self.policy_id, placed_at)


# -- invariants -----------------------------------------------------------------------------------

def refunds_within_captured(state: ReturnsState) -> list[str]:
    return [f"refunds_within_captured({i.instrument_id})" for i in state.instruments if state.refundable(i) < ZERO]


def returned_within_delivered(state: ReturnsState) -> list[str]:
    found = []
    for line in state.lines:
        asked = sum(x.quantity for r in state.returns if r.status != "rejected" for x in r.lines
                    if x.line_id == line.line_id)
        if asked > line.delivered:
            found.append(f"returned_within_delivered({line.line_id})")
    return found


def violated_invariants(state: ReturnsState) -> list[str]:
    return refunds_within_captured(state) + returned_within_delivered(state)


# -- the policy decision --------------------------------------------------------------------------

def evaluate(policy: Policy, state: ReturnsState, request: dict[str, Any],
             requested_at: datetime) -> tuple[str, list[dict[str, Any]], str]:
    """Every rule, in order, with its inputs and outcome. Any fail rejects; else any review sends
    it to a person; else authorized. Returns (decision, trace, reason in plain words)."""
    trace: list[dict[str, Any]] = []

    def rule(name: str, outcome: str, detail: str, **inputs: Any) -> None:
        trace.append({"rule": name, "inputs": {k: str(v) for k, v in inputs.items()}, "outcome": outcome,
                      "detail": detail})

    placed = state.placed_at.isoformat() if state.placed_at else ""
    rule("policy_version", "pass", f"judged by {policy.ref}, in force when the order was placed ({placed})"
         + (f"; {policy.ref} was published backdated" if policy.backdated else ""),
         version=policy.ref, effective_from=policy.effective_from.isoformat(), placed_at=placed,
         backdated=str(policy.backdated).lower())
    for asked in request["lines"]:
        line = state.line(asked["line_id"])
        name = line.name if line else asked["line_id"]
        if line is None:
            rule("line_exists", "fail", f"the order has no line {asked['line_id']}", line_id=asked["line_id"])
            continue
        price = line.price
        rule("net_price", "pass", price.explain(name, line.currency) + (
            f"; {asked['quantity']} of them {price.units(state.units_refunded(line.line_id), asked['quantity']):.2f}"
            f" {line.currency}"), unit_price=price.unit_price, quantity=price.quantity,
             line_discounts=price.line_discounts, order_discount_share=price.order_discount_share, net=price.net)
        others = sum(x.quantity for r in state.returns if r.status != "rejected" and r.return_id != request["return_id"]
                     for x in r.lines if x.line_id == line.line_id)
        returnable = line.delivered - others
        rule("quantity_returnable", "pass" if 0 < asked["quantity"] <= returnable else "fail",
             f"{asked['quantity']} of {name} asked, {returnable} delivered and not yet returned",
             asked=asked["quantity"], delivered=line.delivered, already_returned=others)
        final = line.final_sale or line.category in policy.final_sale_categories
        if final:
            defect = asked["reason"] in DEFECT_REASONS
            rule("final_sale", "review" if defect else "fail",
                 f"{name} was sold as final sale" + (", but it is reported defective" if defect else ""),
                 category=line.category, reason=asked["reason"])
        else:
            rule("final_sale", "pass", f"{name} is not final sale", category=line.category)
        days = (requested_at - line.delivered_at).days if line.delivered_at else 0
        window = policy.window_days(line.category)
        outcome = "pass" if days <= window else ("review" if days <= window + GRACE_DAYS else "fail")
        rule("return_window", outcome, f"{name}: asked {days} days after delivery; the window for "
             f"{line.category} is {window} days", days_since_delivery=days, window_days=window,
             delivered_at=line.delivered_at.isoformat() if line.delivered_at else "")
        for condition in policy.condition_rules:
            applies = not condition.categories or line.category in condition.categories
            hit = applies and {
                "always": True,
                "reason_is_no_longer_needed": asked["reason"] == "NO_LONGER_NEEDED",
                "line_value_over_500": line.unit_price * asked["quantity"] > 500,
            }[condition.when]
            rule(f"condition:{condition.rule_id}", "review" if hit else "pass",
                 condition.description if hit else f"does not apply to {name}", category=line.category,
                 reason=asked["reason"], when=condition.when)
        exempt = asked["reason"] in policy.restocking_fee_exempt_reasons
        fee = 0 if exempt else policy.restocking_fee_percent
        rule("restocking_fee", "pass", f"{fee} % restocking fee on {name}" + (" (reason exempt)" if exempt else ""),
             percent=fee, reason=asked["reason"])
    limit, count = policy.max_returns_per_customer_90d, request.get("customer_returns_90d", 0)
    rule("customer_limit", "review" if limit and count >= limit else "pass",
         f"{count} returns in 90 days; the policy looks at more than {limit}" if limit else "no limit",
         returns_90d=count, limit=limit)
    failed = [t for t in trace if t["outcome"] == "fail"]
    if failed:
        return "REJECTED", trace, "; ".join(t["detail"] for t in failed)
    reviews = [t for t in trace if t["outcome"] == "review"]
    if reviews:
        return "NEEDS_REVIEW", trace, "; ".join(t["detail"] for t in reviews)
    return "AUTHORIZED", trace, "every rule passed"


# -- steps ----------------------------------------------------------------------------------------

class ReturnsStep(Step):
    state: ReturnsState
    context: Policies

    def policy(self) -> Policy:
        """The version the order is judged by: the one in force when it was placed, recorded with
        the order then (or at its first decision, if none was published yet), so that a version
        published later, even one dated back, never changes the rules for it."""
        if self.state.policy:
            policy = self.context.by_ref.get(self.state.policy) if self.context else None
            if policy is None:
                raise Park(RETURN.name, self.state.order_id, "unknown", f"policy {self.state.policy} to be read")
            return policy
        placed_at = known(self.state.placed_at, "the order's placement")
        policy = self.context.for_order(placed_at) if self.context else None
        if policy is None:
            raise Park(RETURN.name, self.state.order_id, "unknown",
                       f"a {self.context.policy_id if self.context else ''} return policy in force at "
                       f"{placed_at.isoformat()} to be published")
        self.state = evolve(self.state, policy=policy.ref)
        return policy

    def return_trigger(self, ret: Return, trigger: str, reason: str) -> Return:
        target = RETURN.require(ret.status, trigger, ret.return_id)
        updated = evolve(ret, status=target)
        self.state = self.state.put(return_=updated)
        self.move(RETURN.name, ret.return_id, ret.status, target, reason)
        return updated

    def refund_trigger(self, refund: Refund, trigger: str, reason: str, **changes: Any) -> Refund:
        target = REFUND.require(refund.status, trigger, refund.refund_id)
        updated = evolve(refund, status=target, **changes)
        self.state = self.state.put(refund=updated)
        self.move(REFUND.name, refund.refund_id, refund.status, target, reason)
        return updated

    def issue_refunds(self, refund_id: str, cause: str, return_id: str | None, amount: Decimal, reason: str,
                      policy: Policy) -> list[Refund]:
        """Split ``amount`` over the instruments in proportion to what each can still refund,
        route each part by its channel, and command it. Never more than is refundable."""
        state = self.state
        balances = [(i, state.refundable(i)) for i in state.instruments if state.refundable(i) > ZERO]
        available = sum((b for _, b in balances), ZERO)
        amount = cents(amount)
        not_refunded = ""
        if amount > available:
            if any(i.still_capturable > ZERO for i in state.instruments):
                # The rest of an authorization may still be captured (a capture may have overtaken
                # nothing yet): wait for it, never cut; when it lapses, what was captured is refunded.
                raise Park(REFUND.name, refund_id, REFUND.initial, CAPTURES_AWAITED)
            currency = state.instruments[0].currency
            lapsed = "; ".join(sorted({i.lapsed for i in state.instruments if i.lapsed}))
            why = f"only {cents(available)} {currency} was captured and not yet refunded" + (
                f": {lapsed}" if lapsed else "")
            not_refunded = f"{cents(amount - available)} {currency} of {amount} {currency}, because {why}"
            self.emit(Rejected(REFUND.name, refund_id, REFUND.initial, "refund_exceeds_captured",
                               f"{cents(amount - available)} {currency} of {amount} cannot be refunded: {why}"))
            amount = available
        if amount <= ZERO:
            if not_refunded:
                self.emit(CustomerNotice("refund_not_possible", {"cause": cause, "not_refunded": not_refunded}))
            return []
        parts: list[tuple[RefundableInstrument, Decimal]] = []
        for instrument, balance in balances:
            parts.append((instrument, min(balance, cents(amount * balance / available))))
        shortfall = amount - sum((p for _, p in parts), ZERO)
        if shortfall:  # rounding: the instrument with most room takes the cents
            index = max(range(len(parts)), key=lambda k: balances[k][1] - parts[k][1])
            parts[index] = (parts[index][0], parts[index][1] + shortfall)
        issued = []
        for instrument, part in parts:
            if part <= ZERO:
                continue
            route = policy.refund_routes[instrument.channel]
            method, why = route.method, f"{instrument.channel.lower().replace('_', ' ')} → {route.method.lower()}"
            age = (self.event.occurred_at - instrument.first_captured_at).days if instrument.first_captured_at else 0
            if policy.store_credit_after_capture_days and age > policy.store_credit_after_capture_days:
                method, why = "STORE_CREDIT", f"captured {age} days ago, over {policy.store_credit_after_capture_days}"
            refund = Refund(f"{refund_id}:{instrument.instrument_id}", cause, return_id, instrument.instrument_id,
                            instrument.channel, method, part, instrument.currency, f"{reason} ({why})",
                            self.event.occurred_at, policy.ref)
            issued.append(self.command(refund, f"refund requested: {part} {instrument.currency} by {method.lower()}"))
        if issued:
            facts = {"cause": cause, **_methods(issued), **({"not_refunded": not_refunded} if not_refunded else {})}
            self.emit(CustomerNotice("refund_issued", facts,
                                     tuple((r.instrument_id, r.channel, r.amount, r.currency) for r in issued)))
        return issued

    def command(self, refund: Refund, reason: str) -> Refund:
        key = f"{refund.refund_id}#{refund.attempt + 1}"
        if refund.status == REFUND.initial:
            refund = self.refund_trigger(refund, "request", reason, keys=(key,))
        else:
            refund = self.refund_trigger(refund, "retry", reason, keys=(*refund.keys, key))
        route = refund_route(self, refund)
        self.emit(RefundCommand(refund, key, route.sla_hours if route else None))
        return refund


# -- handlers -------------------------------------------------------------------------------------

def _placed(step: ReturnsStep) -> None:
    payload = step.event.payload
    if step.state.placed_at is not None:
        raise Reject(RETURN.name, step.state.order_id, "placed", "duplicate_order",
                     "an order with this id was already placed (with another event id)")
    in_force = step.context.for_order(step.event.occurred_at) if step.context else None
    prices = money.line_prices(payload)
    step.state = evolve(
        step.state, placed_at=step.event.occurred_at, customer=payload["customer"],
        policy=in_force.ref if in_force else "",
        lines=tuple(ReturnableLine(x["line_id"], x["name"], x["category"], x["quantity"], x["unit_price"]["amount"],
                                   x["unit_price"]["currency"], x.get("final_sale", False),
                                   line_discounts=price.line_discounts, order_discount_share=price.order_discount_share)
                    for x, price in zip(payload["lines"], prices, strict=True)),
        instruments=tuple(RefundableInstrument(i["instrument_id"], i["channel"], i["amount"]["currency"], i["amount"]["amount"])
                          for i in payload["instruments"]))


def _require_order(step: ReturnsStep) -> None:
    if step.state.placed_at is None:
        raise Park(RETURN.name, step.state.order_id, "unknown", "the order to be placed")


def _captured(step: ReturnsStep) -> None:
    _require_order(step)
    payload = step.event.payload
    instrument = _instrument(step)
    _require_currency(instrument, payload["amount"])
    operation = _once(step, instrument)
    refused = money.capture_verdict(payload["amount"]["amount"], instrument.captured, instrument.still_capturable,
                                    instrument.currency)
    if refused:
        raise Reject(REFUND.name, instrument.instrument_id, "capturing", "capture_exceeds_authorization", refused)
    step.state = step.state.put(instrument=evolve(
        instrument, captured=instrument.captured + payload["amount"]["amount"],
        first_captured_at=instrument.first_captured_at or step.event.occurred_at,
        operations=(*instrument.operations, operation)))
    # A line cancelled before the money was taken is refunded once the whole order is captured,
    # by the capture: not by whichever warehouse snapshot happens to come next (a race between
    # two topics, so a replay would attribute the refund to another event), nor never, if none does.
    if all(i.captured >= i.allocated for i in step.state.instruments):
        _refund_cancelled_units(step)


def _once(step: ReturnsStep, instrument: RefundableInstrument) -> str:
    """The provider operation this outcome reports, which must not have been counted already."""
    operation = known(money.operation_key(step.event.short_type, step.event.payload),
                      f"the provider operation of {step.event.short_type}")
    if money.counted(instrument.operations, operation):
        raise Reject(REFUND.name, instrument.instrument_id, "counted", "duplicate_provider_outcome",
                     f"{step.event.short_type} for {operation}, already counted (delivered again under event id "
                     f"{step.event.event_id}): the books keep the first")
    return operation


def _authorized(step: ReturnsStep) -> None:
    """An authorization, or a re-authorization after one lapsed: it holds more to capture."""
    _require_order(step)
    payload = step.event.payload
    instrument = _instrument(step)
    _require_currency(instrument, payload["amount"])
    step.state = step.state.put(instrument=evolve(
        instrument, authorized=money.authorized_after(instrument.captured, payload["amount"]["amount"]), lapsed=""))


def _authorization_lapsed(step: ReturnsStep) -> None:
    """A void or an expiry: what was not captured on the instrument never will be, so a refund
    waiting for it goes on with what was captured."""
    _require_order(step)
    instrument = _instrument(step)
    if "amount" in step.event.payload:
        _require_currency(instrument, step.event.payload["amount"])
    if instrument.lapsed:
        return
    why = {"PaymentVoided": "the rest of the authorization was voided",
           "AuthorizationExpired": "the rest of the authorization expired"}[step.event.short_type]
    step.state = step.state.put(instrument=evolve(instrument, lapsed=why))


def _instrument(step: ReturnsStep) -> RefundableInstrument:
    instrument_id = step.event.payload["instrument_id"]
    instrument = step.state.instrument(instrument_id)
    if instrument is None:
        raise Reject("refund", instrument_id, "unknown", "unknown_instrument",
                     f"the order has no payment instrument {instrument_id}")
    return instrument


def _require_currency(instrument: RefundableInstrument, amount: dict[str, Any]) -> None:
    """Money taken or given back on an instrument is in the instrument's currency: refunds are
    computed from these sums."""
    if amount["currency"] != instrument.currency:
        raise Reject("refund", instrument.instrument_id, "unknown", "currency_mismatch",
                     f"{amount['amount']} {amount['currency']} on instrument {instrument.instrument_id}, which is in "
                     f"{instrument.currency}")


def _fulfillment(step: ReturnsStep) -> None:
    """Delivery dates for return windows; newly cancelled units that were paid get refunded."""
    _require_order(step)
    said = {snapshot["line_id"]: snapshot for snapshot in step.event.payload["lines"]}
    lines = tuple(_as_said(x, said.get(x.line_id)) for x in step.state.lines)
    # Most snapshots change nothing returns keeps: the state stays the very same value, so parked
    # events are not tried again for nothing (workflow._moved).
    if any(new is not old for new, old in zip(lines, step.state.lines, strict=True)):
        step.state = evolve(step.state, lines=lines)
    if any(i.captured > ZERO for i in step.state.instruments):
        _refund_cancelled_units(step)


def _as_said(line: ReturnableLine, snapshot: dict[str, Any] | None) -> ReturnableLine:
    """The line as fulfillment's snapshot says it is now (delivered and cancelled units)."""
    if snapshot is None:
        return line
    delivered_at = snapshot.get("delivered_at") or line.delivered_at
    if (line.delivered, line.cancelled, line.delivered_at) == (snapshot["delivered"], snapshot["cancelled"], delivered_at):
        return line
    return evolve(line, delivered=snapshot["delivered"], cancelled=snapshot["cancelled"], delivered_at=delivered_at)


def _refund_cancelled_units(step: ReturnsStep) -> None:
    """Refund every cancelled unit not refunded yet, once: all the lines one event cancelled in one
    refund, so the customer gets one message for it (a notification's id is its cause's and its
    type's). The refund id counts each line's cancelled units."""
    newly = [(line, line.cancelled - line.cancel_refunded) for line in step.state.lines
             if line.cancelled > line.cancel_refunded]
    if not newly:
        return
    policy = step.policy()
    amount = sum((line.price.units(step.state.units_refunded(line.line_id), count) for line, count in newly), ZERO)
    for line, _ in newly:
        step.state = step.state.put(line=evolve(line, cancel_refunded=line.cancelled))
    items = ", ".join(f"{count} × {line.name}" for line, count in newly)
    step.issue_refunds(f"{step.state.order_id}:cancel:" + "+".join(f"{line.line_id}:{line.cancelled}" for line, _ in newly),
                       f"cancelled {items}", None, amount,
                       f"{items} cancelled ({amount:.2f} {newly[0][0].currency} paid for them)", policy)


def _return_requested(step: ReturnsStep) -> None:
    _require_order(step)
    payload, event = step.event.payload, step.event
    if (existing := step.state.return_(payload["return_id"])) is not None:
        raise Reject(RETURN.name, payload["return_id"], existing.status,
                     "duplicate_return", "a return with this id was already requested (with another event id)")
    for asked in payload["lines"]:
        line = step.state.line(asked["line_id"])
        if line is not None and line.delivered == 0 and line.cancelled < line.quantity:
            raise Park(RETURN.name, payload["return_id"], "new", f"delivery of {line.name}")
    policy = step.policy()
    ret = Return(payload["return_id"], event.occurred_at,
                 tuple(ReturnLine(x["line_id"], x["quantity"], x["reason"]) for x in payload["lines"]))
    step.state = step.state.put(return_=ret)
    ret = step.return_trigger(ret, "request", "return requested")
    decision, trace, reason = evaluate(policy, step.state, payload, event.occurred_at)
    ret = evolve(ret, decision=decision, policy=policy.ref, trace=tuple(trace))
    step.state = step.state.put(return_=ret)
    step.emit(Decided(ret.return_id, decision, policy.ref, tuple(trace), reason))
    trigger = {"AUTHORIZED": "authorize", "REJECTED": "reject", "NEEDS_REVIEW": "review"}[decision]
    step.return_trigger(ret, trigger, f"{decision.lower().replace('_', ' ')} under {policy.ref}: {reason}")
    notice = {"AUTHORIZED": "return_authorized", "REJECTED": "return_rejected", "NEEDS_REVIEW": "return_needs_review"}
    step.emit(CustomerNotice(notice[decision], {"return_id": ret.return_id, "reason": reason, "policy": policy.ref}))


def _return_or_park(step: ReturnsStep) -> Return:
    """The return an event is about; it waits if its request has not been read yet (another topic)."""
    _require_order(step)
    return_id = step.event.payload["return_id"]
    ret = step.state.return_(return_id)
    if ret is None:
        raise Park(RETURN.name, return_id, "new", "the return request")
    return ret


def _exception_approved(step: ReturnsStep) -> None:
    payload = step.event.payload
    ret = _return_or_park(step)
    actor = payload["actor"]
    ret = evolve(ret, decision="AUTHORIZED", trace=(*ret.trace, {
        "rule": "policy_exception", "inputs": {"approved_by": actor["user_id"], "role": actor["role"]},
        "outcome": "pass", "detail": payload["reason"]}))
    step.state = step.state.put(return_=ret)
    step.return_trigger(ret, "approve_exception",
                        f"policy exception approved by {actor['user_id']} ({actor['role']}): {payload['reason']}")
    step.emit(Decided(ret.return_id, "AUTHORIZED", ret.policy, ret.trace,
                      f"policy exception approved by {actor['user_id']}: {payload['reason']}"))
    step.emit(CustomerNotice("return_authorized", {"return_id": ret.return_id, "reason": payload["reason"],
                                           "policy": ret.policy}))


def _received(step: ReturnsStep) -> None:
    payload = step.event.payload
    ret = _return_or_park(step)
    RETURN.require(ret.status, "receive", ret.return_id)  # parks while the decision is pending
    lines = []
    for line in ret.lines:
        got = sum(x["quantity"] for x in payload["lines"] if x["line_id"] == line.line_id)
        if line.received + got > line.quantity:
            raise Reject(RETURN.name, ret.return_id, ret.status, "received_more_than_authorized",
                         f"{line.received + got} of line {line.line_id} received; {line.quantity} were authorized")
        lines.append(evolve(line, received=line.received + got))
    unknown = {x["line_id"] for x in payload["lines"]} - {x.line_id for x in ret.lines}
    if unknown:
        raise Reject(RETURN.name, ret.return_id, ret.status, "unexpected_item",
                     f"received lines {sorted(unknown)} that are not part of return {ret.return_id}")
    ret = evolve(ret, lines=tuple(lines))
    step.state = step.state.put(return_=ret)
    step.return_trigger(ret, "receive", "return parcel received")
    step.emit(CustomerNotice("return_received", {"return_id": ret.return_id}))


def _inspected(step: ReturnsStep) -> None:
    payload = step.event.payload
    ret = _return_or_park(step)
    RETURN.require(ret.status, "inspect", ret.return_id)
    policy = step.context.by_ref.get(ret.policy) if step.context else None
    if policy is None:
        raise Park(RETURN.name, ret.return_id, ret.status, f"policy {ret.policy} to be published")
    amount, lines = ZERO, list(ret.lines)
    for result in payload["results"]:
        index = next((k for k, x in enumerate(lines) if x.line_id == result["line_id"]), None)
        if index is None or lines[index].inspected + result["quantity"] > lines[index].received:
            raise Reject(RETURN.name, ret.return_id, ret.status, "inspected_more_than_received",
                         f"inspection of {result['quantity']} × line {result['line_id']} exceeds what was received")
        returned, order_line = lines[index], known(step.state.line(result["line_id"]), f"line {result['line_id']}")
        # Priced after the units of the line refunded before, those of this inspection included.
        first = step.state.units_refunded(order_line.line_id) + sum(
            x.inspected - y.inspected for x, y in zip(lines, ret.lines, strict=True) if x.line_id == order_line.line_id)
        lines[index] = evolve(returned, inspected=returned.inspected + result["quantity"])
        share = policy.share(result["outcome"])
        fee = ZERO if returned.reason in policy.restocking_fee_exempt_reasons or result["outcome"] != "AS_EXPECTED" \
            else Decimal(policy.restocking_fee_percent) / 100
        amount += order_line.price.units(first, result["quantity"]) * share * (1 - fee)
    ret = evolve(ret, lines=tuple(lines))
    step.state = step.state.put(return_=ret)
    ret = step.return_trigger(ret, "inspect", "inspection completed")
    n = sum(1 for r in step.state.refunds if r.return_id == ret.return_id)
    issued = step.issue_refunds(f"{step.state.order_id}:return:{ret.return_id}:{n}", f"return {ret.return_id}",
                                ret.return_id, amount, f"return {ret.return_id}", policy)
    if issued:
        step.return_trigger(ret, "issue_refunds", f"refund of {cents(amount)} {issued[0].currency} issued")
    else:
        step.return_trigger(ret, "nothing_to_refund", "inspection leaves nothing to refund")


def _refund_result(step: ReturnsStep) -> None:
    _require_order(step)
    payload, kind = step.event.payload, step.event.short_type
    refund = step.state.refund_by_key(payload["refund_id"])
    if refund is None and requested_here(step.state.order_id, payload["refund_id"]):
        # An answer to a request of ours that this state does not hold (yet): its cause is parked
        # or being read again after a restart. It is matched to the request once that is re-made
        # (the same key), never counted as a refund made elsewhere.
        raise Park(REFUND.name, payload["refund_id"], "unknown", "the refund request it answers")
    if refund is None:
        if kind != "RefundSucceeded":
            raise Reject(REFUND.name, payload["refund_id"], "unknown", "unknown_refund",
                         f"{kind} for {payload['refund_id']}, a refund this processor never asked for")
        _refunded_elsewhere(step)
        return
    if kind == "RefundSucceeded":
        _refund_succeeded(step, refund, payload["refund_id"])
        return
    if payload["refund_id"] != refund.keys[-1] or refund.status != "requested":
        raise Reject(REFUND.name, refund.refund_id, refund.status, "stale_refund_result",
                     f"{kind} for attempt key {payload['refund_id']} arrived after the refund moved on")
    refund = step.refund_trigger(refund, "fail", f"the provider refused: {payload['reason']}")
    if step.state.settled_by_partner(refund):
        return  # the refund it replaced was paid late: nothing to try again
    policy = step.context.by_ref.get(refund.policy) if step.context else None
    attempts = policy.max_refund_attempts if policy else 3
    if payload.get("retryable", True) and refund.attempt < attempts:
        step.command(refund, f"retry {refund.attempt + 1} of {attempts}")
        return
    if refund.method != "STORE_CREDIT":
        step.refund_trigger(refund, "fall_back", "replaced by store credit")
        fallback = Refund(f"{refund.refund_id}:store-credit", refund.cause, refund.return_id, refund.instrument_id,
                          refund.channel, "STORE_CREDIT", refund.amount, refund.currency,
                          f"{refund.reason}; fallback after: {payload['reason']}", step.event.occurred_at, refund.policy,
                          replaces=refund.refund_id)
        step.command(fallback, "store-credit fallback requested")
        return
    step.refund_trigger(refund, "give_up", f"store credit failed too: {payload['reason']}")
    if refund.return_id:
        ret = known(step.state.return_(refund.return_id), f"return {refund.return_id}")
        step.return_trigger(ret, "refund_gave_up", f"refund {refund.refund_id} failed for good: support must act")


def _refund_succeeded(step: ReturnsStep, refund: Refund, key: str) -> None:
    """A success for any attempt of a refund completes it, however late: the customer is told once
    and the metric counts once. The money of a second success (another attempt of the refund, or of
    the refund it replaced or that replaced it) was refunded twice: it is booked, the refund becomes
    ``overpaid``, and the timeline escalates it for reversal with the provider. There is no command
    to withdraw an attempt once sent: a provider's attempts are operations of their own."""
    state, amount = step.state, step.event.payload["amount"]["amount"]
    if key == refund.paid_by:
        raise Reject(REFUND.name, refund.refund_id, refund.status, "duplicate_provider_outcome",
                     f"RefundSucceeded for {key}, already counted (delivered again under event id "
                     f"{step.event.event_id})")
    if refund.status in PAID or state.settled_by_partner(refund):
        instrument = known(state.instrument(refund.instrument_id), f"instrument {refund.instrument_id}")
        verdict = money.refund_verdict(amount, instrument.captured, state.refunded(instrument), ZERO,
                                       instrument.currency)
        if verdict.outcome != money.FITS:  # as order-state books it: beyond the capture, refused
            raise Reject(REFUND.name, refund.refund_id, refund.status, "refund_exceeds_captured", verdict.reason)
        why = (f"attempt {key} succeeded too: {amount} {refund.currency} of {refund.cause} refunded twice; ask the "
               "provider to reverse it")
        if refund.status in PAID:
            step.refund_trigger(refund, "succeed_again", why, surplus=refund.surplus + amount)
        else:
            refund = step.refund_trigger(refund, "succeed", f"attempt {key} succeeded", paid_by=key)
            step.refund_trigger(refund, "succeed_again", why)
        return
    late = key != refund.keys[-1] or refund.status != "requested"
    refund = step.refund_trigger(refund, "succeed", "the provider confirmed the refund" + (
        f" (attempt {key}, after a later one was sent)" if late else ""), paid_by=key)
    seconds = (step.event.occurred_at - refund.requested_at).total_seconds()
    route = refund_route(step, refund)
    within_sla = "unknown" if route is None else str(seconds <= route.sla_hours * 3600).lower()
    step.emit(Measure("refund_completion_seconds", seconds, {"channel": refund.channel, "policy": refund.policy,
                                                             "within_sla": within_sla}))
    _settle(step, refund)


def refund_route(step: ReturnsStep, refund: Refund) -> Route | None:
    """The route the refund's policy version gives its channel (method, alternative, SLA), if that
    version is known here: one place for the SLA the metric and the refund command carry."""
    policy = step.context.by_ref.get(refund.policy) if step.context else None
    return policy.refund_routes.get(refund.channel) if policy else None


def requested_here(order_id: str, key: str) -> bool:
    """Whether an idempotency key is one this processor derives for its own refund requests
    (``<order id>:<cause>:...#<attempt>``, see ``ReturnsStep.command``)."""
    head, _, attempt = key.rpartition("#")
    return attempt.isdigit() and head.startswith(f"{order_id}:") and (":return:" in head or ":cancel:" in head)


def _refunded_elsewhere(step: ReturnsStep) -> None:
    """A refund made elsewhere (by support, in the provider's console): it still uses up the
    capture, by the rule order-state books refunds by (``money.refund_verdict``)."""
    payload = step.event.payload
    instrument = step.state.instrument(payload["instrument_id"])
    if instrument is None:
        raise Reject(REFUND.name, payload["refund_id"], "unknown", "unknown_instrument",
                     f"the order has no payment instrument {payload['instrument_id']}")
    _require_currency(instrument, payload["amount"])
    operation = _once(step, instrument)
    amount = payload["amount"]["amount"]
    verdict = money.refund_verdict(amount, instrument.captured, step.state.refunded(instrument),
                                   instrument.still_capturable, instrument.currency)
    if verdict.outcome == money.WAIT:
        raise Park(REFUND.name, payload["refund_id"], "unknown", verdict.reason)
    if verdict.outcome == money.EXCEEDS:
        raise Reject(REFUND.name, payload["refund_id"], "unknown", "refund_exceeds_captured", verdict.reason)
    step.state = step.state.put(instrument=evolve(
        instrument, refunded_elsewhere=instrument.refunded_elsewhere + amount,
        operations=(*instrument.operations, operation)))


def _settle(step: ReturnsStep, refund: Refund) -> None:
    """When every refund of a return has succeeded, the return is refunded (or partly, if more
    of it is still to come)."""
    state = step.state
    ret = state.return_(refund.return_id) if refund.return_id else None
    mine = [r for r in state.refunds if r.return_id == (ret.return_id if ret else None) and r.cause == refund.cause]
    if any(r.status in OPEN_REFUNDS and not state.settled_by_partner(r) for r in mine):
        return
    succeeded = [r for r in mine if r.status in PAID]
    step.emit(CustomerNotice("refund_completed", {"cause": refund.cause, **_methods(succeeded)},
                     tuple((r.instrument_id, r.channel, r.amount, r.currency) for r in succeeded)))
    if ret is None or ret.status not in ("refund_pending", "refund_failed"):
        return
    complete = all(x.inspected == x.quantity for x in ret.lines)
    step.return_trigger(ret, "refunds_settled" if complete else "part_settled",
                        "every refund succeeded" if complete else "refunded what was received; the rest may follow")
    if complete:
        seconds = (step.event.occurred_at - ret.requested_at).total_seconds()
        channels = sorted({r.channel for r in mine})
        step.emit(Measure("return_cycle_seconds", seconds, {"channel": "+".join(channels), "policy": ret.policy}))


def _methods(refunds: list[Refund]) -> dict[str, str]:
    """Where each instrument's money goes, in words, for the customer's message."""
    words = {"ORIGINAL_INSTRUMENT": "back to your original payment method", "STORE_CREDIT": "as store credit",
             "BANK_TRANSFER": "by bank transfer", "PROVIDER": "through your pay-later provider"}
    return {"methods": "; ".join(f"{r.amount} {r.currency} {words.get(r.method, r.method.lower())}" for r in refunds)}


HANDLERS = {
    "OrderPlaced": _placed,
    "PaymentCaptured": _captured,
    "PaymentAuthorized": _authorized,
    "PaymentVoided": _authorization_lapsed,
    "AuthorizationExpired": _authorization_lapsed,
    "FulfillmentStatusChanged": _fulfillment,
    "ReturnRequested": _return_requested,
    "PolicyExceptionApproved": _exception_approved,
    "ReturnReceived": _received,
    "InspectionCompleted": _inspected,
    "RefundSucceeded": _refund_result,
    "RefundFailed": _refund_result,
}


# -- entry points ---------------------------------------------------------------------------------

def apply(state: ReturnsState | None, event: Envelope, topic: str, now: datetime, park_for: timedelta,
          policies: Policies) -> Outcome:
    state = state or ReturnsState(order_id=event.order_id)
    return workflow.apply(state, event, topic, now, park_for, HANDLERS, ReturnsStep, policies)


def expire(state: ReturnsState, now: datetime, park_for: timedelta, policies: Policies, timer_topic: str) -> Outcome:
    """On a timer tick: retry what waits for a policy, reject what waited too long, close returns
    refunded more than CLOSE_AFTER_DAYS ago. A refund that waited its whole deadline for captures
    goes on with what was captured: the rest of the authorization is taken as lapsed."""
    state = _lapse_uncaptured(state, now)
    retried = workflow.retry_parked(state, now, park_for, HANDLERS, ReturnsStep, policies)
    expired = workflow.expire_parked(retried.state, now, lambda s, machine, entity: (
        s.return_(entity).status if machine == RETURN.name and s.return_(entity) else "unknown"))
    state, records = expired.state, [*retried.records, *expired.records]
    for ret in state.returns:
        due = _close_due(state, ret)
        if due is not None and due <= now:
            closing = Envelope(f"{state.order_id}:close:{ret.return_id}", state.order_id, due, "returns",
                               "orderops.common.TimerFired", {"due_at": due, "fired_at": now})
            step = ReturnsStep(state, closing, timer_topic, policies)
            step.return_trigger(ret, "close", f"refunded more than {CLOSE_AFTER_DAYS} days ago")
            state, records = step.state, records + step.records
    return Outcome(state, tuple(records))


def _lapse_uncaptured(state: ReturnsState, now: datetime) -> ReturnsState:
    due = [p.deadline for p in state.parked if p.waiting_for == CAPTURES_AWAITED and p.deadline <= now]
    if not due:
        return state
    # No time in the words: a park's deadline counts from when the worker parked the event, on its own
    # clock, so a replay would word it otherwise (its moment is in the rejection at the deadline).
    why = "the rest of the authorization was not captured while the refund waited for it"
    return evolve(state, instruments=tuple(evolve(i, lapsed=why) if i.still_capturable > ZERO else i
                                           for i in state.instruments))


POLICY_RETRY = timedelta(seconds=30)


def next_deadline(state: ReturnsState, park_for: timedelta) -> datetime | None:
    """Deadlines of parked events and closings; an event waiting for a policy is retried soon after
    it parked (the policy may be published any moment) and then at every sweep until its deadline."""
    waiting_for_policy = [p.deadline - park_for + POLICY_RETRY for p in state.parked if "policy" in p.waiting_for]
    candidates = [workflow.earliest_park_deadline(state), *waiting_for_policy,
                  *(_close_due(state, r) for r in state.returns)]
    return min((c for c in candidates if c is not None), default=None)


def _close_due(state: ReturnsState, ret: Return) -> datetime | None:
    if ret.status not in ("refunded", "partially_refunded"):
        return None
    last = max((h.at for h in state.history if h.machine == RETURN.name and h.entity_id == ret.return_id), default=None)
    return last + timedelta(days=CLOSE_AFTER_DAYS) if last else None
