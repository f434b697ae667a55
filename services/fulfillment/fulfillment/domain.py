"""fulfillment's pure domain: lines as unit buckets, parcels as machines, on orderops.model.workflow.

The order-level status (unfulfilled, partially_shipped, shipped, partially_delivered, delivered,
cancelled, plus a backordered flag) is derived from the lines whenever it is needed and never
stored. Every notification request carries the item-level facts it claims, computed from the
same state it was derived from, and a sentence a customer could read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fulfillment.machines import BUCKETS, SHIPMENT, SHIPMENT_TRIGGERS, SHIPPED_STATES, TRACKING_TRIGGERS, UNIT_MOVES
from orderops.model import workflow
from orderops.model.contract import web_link
from orderops.model.envelope import Envelope, StoredAsJson, from_json
from orderops.model.workflow import HistoryEntry, Outcome, Park, Parked, Reject, Rejected, Step, evolve, known

ORDER_MACHINE = "fulfillment"  # the derived order-level status, published as its own "machine"


# -- state ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LineUnits:
    line_id: str
    name: str
    ordered: int
    unfulfilled: int
    backordered: int = 0
    in_shipment: int = 0
    shipped: int = 0
    delivered: int = 0
    cancelled: int = 0
    backorder_eta: datetime | None = None
    delivered_at: datetime | None = None

    @property
    def open(self) -> int:
        return self.unfulfilled + self.backordered


@dataclass(frozen=True)
class Shipment:
    shipment_id: str
    lines: tuple[tuple[str, int], ...]  # (line_id, quantity)
    status: str = SHIPMENT.initial
    delayed: bool = False
    attempts: int = 0
    carrier: str = ""
    tracking_number: str = ""
    tracking_url: str = ""
    estimated_delivery: datetime | None = None

    def quantity_of(self, line_id: str) -> int:
        total = 0
        for line, quantity in self.lines:  # a loop, not sum() over a generator: called per line per parcel per event
            if line == line_id:
                total += quantity
        return total


@dataclass(frozen=True)
class FulfillmentState(StoredAsJson):
    order_id: str
    placed: bool = False
    customer: dict[str, Any] | None = None
    lines: tuple[LineUnits, ...] = ()
    shipments: tuple[Shipment, ...] = ()
    seen: frozenset[str] = frozenset()
    parked: tuple[Parked, ...] = ()
    history: tuple[HistoryEntry, ...] = ()

    def line(self, line_id: str) -> LineUnits | None:
        for x in self.lines:
            if x.line_id == line_id:
                return x
        return None

    def shipment(self, shipment_id: str) -> Shipment | None:
        for s in self.shipments:
            if s.shipment_id == shipment_id:
                return s
        return None

    def with_line(self, updated: LineUnits) -> FulfillmentState:
        return evolve(self, lines=tuple(updated if x.line_id == updated.line_id else x for x in self.lines))

    def with_shipment(self, updated: Shipment) -> FulfillmentState:
        shipments = tuple(updated if s.shipment_id == updated.shipment_id else s for s in self.shipments)
        if self.shipment(updated.shipment_id) is None:
            shipments = (*shipments, updated)
        return evolve(self, shipments=shipments)

    @property
    def status(self) -> str:
        return derived_status(self.lines)

    @property
    def backordered(self) -> bool:
        return any(x.backordered for x in self.lines)

    def json_value(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id, "placed": self.placed, "customer": self.customer,
            "lines": [vars(x) for x in self.lines],
            "shipments": [{**vars(s), "lines": [list(x) for x in s.lines]} for s in self.shipments],
            "seen": sorted(self.seen), "history": [vars(h) for h in self.history],
            "parked": [p.json_value() for p in self.parked],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FulfillmentState:
        plain = from_json({k: v for k, v in data.items() if k != "parked"})
        return cls(
            order_id=plain["order_id"], placed=plain["placed"], customer=plain["customer"],
            lines=tuple(LineUnits(**x) for x in plain["lines"]),
            shipments=tuple(Shipment(**{**s, "lines": tuple(tuple(x) for x in s["lines"])}) for s in plain["shipments"]),
            seen=frozenset(plain["seen"]), parked=tuple(Parked.from_json(p) for p in data["parked"]),
            history=tuple(HistoryEntry(**h) for h in plain["history"]),
        )


def derived_status(lines: tuple[LineUnits, ...]) -> str:
    ordered = sum(x.ordered for x in lines)
    active = ordered - sum(x.cancelled for x in lines)
    delivered = sum(x.delivered for x in lines)
    left_warehouse = delivered + sum(x.shipped for x in lines)
    if ordered and active == 0:
        return "cancelled"
    if active and delivered == active:
        return "delivered"
    if delivered:
        return "partially_delivered"
    if active and left_warehouse == active:
        return "shipped"
    if left_warehouse:
        return "partially_shipped"
    return "unfulfilled"


# -- invariants -----------------------------------------------------------------------------------

def quantities_add_up(x: LineUnits) -> bool:
    return all(getattr(x, b) >= 0 for b in BUCKETS) and sum(getattr(x, b) for b in BUCKETS) == x.ordered


def parcels_match_lines(state: FulfillmentState) -> bool:
    """What the parcels hold is what the lines say is packed, shipped or delivered."""
    for x in state.lines:
        packed = sum(s.quantity_of(x.line_id) for s in state.shipments if s.status == "created")
        shipped = sum(s.quantity_of(x.line_id) for s in state.shipments if s.status in SHIPPED_STATES)
        delivered = sum(s.quantity_of(x.line_id) for s in state.shipments if s.status == "delivered")
        if (packed, shipped, delivered) != (x.in_shipment, x.shipped, x.delivered):
            return False
    return True


def violated_invariants(state: FulfillmentState) -> list[str]:
    found = [f"quantities_add_up({x.line_id})" for x in state.lines if not quantities_add_up(x)]
    return found + ([] if parcels_match_lines(state) else ["parcels_match_lines"])


# -- notifications and their claims ---------------------------------------------------------------

@dataclass(frozen=True)
class LineClaim:
    line_id: str
    name: str
    quantity_in_this_shipment: int
    quantity_shipped: int
    quantity_delivered: int
    quantity_backordered: int
    quantity_cancelled: int
    eta: datetime | None
    shipment_id: str | None


@dataclass(frozen=True)
class ShipmentNotice:
    type: str
    lines: tuple[LineClaim, ...]
    summary: str
    shipment: Shipment | None = None
    facts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StatusSnapshot:
    """Published whenever what it says changed: the status derived from the lines, and per line
    its quantities, the parcels holding it and what it waits for (``line_statuses``)."""

    status: str
    backordered: bool
    lines: tuple[LineStatus, ...]


def claims(state: FulfillmentState, shipment: Shipment | None = None) -> tuple[LineClaim, ...]:
    return tuple(LineClaim(
        x.line_id, x.name, shipment.quantity_of(x.line_id) if shipment else 0, x.shipped + x.delivered, x.delivered,
        x.backordered, x.cancelled, x.backorder_eta if x.backordered else None,
        shipment.shipment_id if shipment and shipment.quantity_of(x.line_id) else None,
    ) for x in state.lines)


@dataclass(frozen=True)
class LineStatus:
    """What a status snapshot says of one line: its quantities, the parcels holding any of it (in
    the parcels' order) and what its undelivered units wait for."""

    line: LineUnits
    parcels: tuple[str, ...]
    waiting_for: str


def line_statuses(state: FulfillmentState) -> tuple[LineStatus, ...]:
    held = parcel_contents(state)
    parcels_of: dict[str, list[str]] = {}
    for s, contents in held:
        for line_id, quantity in contents.items():
            if quantity:
                parcels_of.setdefault(line_id, []).append(s.shipment_id)
    return tuple(LineStatus(x, tuple(parcels_of.get(x.line_id, ())), _waiting_for(x, held)) for x in state.lines)


def parcel_contents(state: FulfillmentState) -> list[tuple[Shipment, dict[str, int]]]:
    """Each parcel with its quantity per line, counted once: a snapshot asks every line about every
    parcel, and asking each parcel again per line was a fifth of a fulfillment replay."""
    held = []
    for s in state.shipments:
        contents: dict[str, int] = {}
        for line_id, quantity in s.lines:
            contents[line_id] = contents.get(line_id, 0) + quantity
        held.append((s, contents))
    return held


def _day(moment: datetime | None) -> str:
    return f"{moment:%a %d %b}" if moment else "a date we do not know yet"


def waiting_for(state: FulfillmentState, x: LineUnits, besides: str | None = None) -> str:
    """What the line's undelivered units wait for, in words (empty when nothing); ``besides``
    leaves out the parcel a message is about."""
    return _waiting_for(x, parcel_contents(state), besides)


def _waiting_for(x: LineUnits, held: list[tuple[Shipment, dict[str, int]]], besides: str | None = None) -> str:
    parts = []
    if x.backordered:
        parts.append(f"{x.backordered} backordered until {_day(x.backorder_eta)}")
    for s, contents in held:
        q = contents.get(x.line_id)
        if q and s.shipment_id != besides and (words := _parcel_words(s)):
            parts.append(f"{q} {words}")
    if x.unfulfilled:
        parts.append(f"{x.unfulfilled} not yet packed")
    return "; ".join(parts)


def _parcel_words(s: Shipment) -> str:
    """What a parcel says of the units it holds of a line (empty once nothing waits on it)."""
    if s.status in SHIPMENT.terminal:  # delivered, returned or cancelled: nothing waits on it
        return ""
    if s.status == "created":
        return f"being packed in parcel {s.shipment_id}"
    if s.status == "delivery_failed":
        return f"in parcel {s.shipment_id}, delivery failed"
    return f"on the way in parcel {s.shipment_id}" + (" (delayed)" if s.delayed else "")


def _parcels_said(state: FulfillmentState) -> list[tuple[str, tuple[tuple[str, int], ...], str]]:
    """All that the parcels make the line statuses say: with the same lines, the same statuses."""
    return [(s.shipment_id, s.lines, _parcel_words(s)) for s in state.shipments]


def sentence(state: FulfillmentState, notice_type: str, shipment: Shipment | None = None,
             lines: tuple[str, ...] = ()) -> str:
    """What a customer should be told, from the same facts the claims carry."""
    active = sum(x.ordered - x.cancelled for x in state.lines)
    if shipment is not None:
        inside = [(x, shipment.quantity_of(x.line_id)) for x in state.lines if shipment.quantity_of(x.line_id)]
        items = ", ".join(f"{q} × {x.name}" for x, q in inside)
        count = sum(q for _, q in inside)
        tracking = f" ({shipment.carrier} {shipment.tracking_number})" if shipment.tracking_number else ""
        head = {
            "shipment_dispatched": f"Parcel {shipment.shipment_id}{tracking} is on its way with {count} of your "
                                   f"{active} items: {items}.",
            "shipment_delivered": f"Parcel {shipment.shipment_id} was delivered: {items}.",
            "shipment_delayed": f"Parcel {shipment.shipment_id}{tracking} is delayed: {items}.",
            "delivery_failed": f"We could not deliver parcel {shipment.shipment_id}{tracking}: {items}.",
        }[notice_type]
        held = parcel_contents(state)
        rest = [f"{x.name}: {w}" for x in state.lines if (w := _waiting_for(x, held, besides=shipment.shipment_id))]
        return head + (f" Still to come — {'; '.join(rest)}." if rest else "")
    named = [known(state.line(line_id), f"line {line_id}") for line_id in lines]
    if notice_type == "line_backordered":
        return "; ".join(f"{x.name}: {x.backordered} backordered until {_day(x.backorder_eta)}" for x in named) + "."
    if notice_type == "backorder_eta_changed":
        return "; ".join(f"{x.name} is now expected {_day(x.backorder_eta)}" for x in named) + "."
    if notice_type == "line_cancelled":
        return "; ".join(f"{x.name}: {x.cancelled} of {x.ordered} cancelled by our warehouse" for x in named) + "."
    on_its_way = "; ".join(f"{x.shipped + x.delivered} × {x.name}" for x in state.lines if x.shipped or x.delivered)
    if notice_type == "order_partly_cancelled":
        return (f"Cancelled as you asked: {'; '.join(f'{x.cancelled} × {x.name}' for x in named)}. Part of your order "
                f"had already left our warehouse and still arrives: {on_its_way}.")
    if notice_type == "cancellation_refused":
        return (f"Part of your order had already left our warehouse, so it cannot be cancelled: {on_its_way}. "
                "Please return what you do not want once it arrives.")
    raise ValueError(f"no sentence for {notice_type}")


# -- steps ----------------------------------------------------------------------------------------

class FulfillmentStep(Step):
    state: FulfillmentState

    def move_units(self, event_type: str, line_id: str, quantity: int) -> LineUnits:
        sources, target, code = UNIT_MOVES[event_type]
        line = self.state.line(line_id)
        if line is None:
            raise Reject(ORDER_MACHINE, line_id, self.state.status, "unknown_line",
                         f"the order has no line {line_id}")
        available = sum(getattr(line, s) for s in sources)
        if quantity <= 0 or quantity > available:
            raise Reject(ORDER_MACHINE, line_id, self.state.status, code,
                         f"{event_type} asks for {quantity} of {line.name} ({line_id}); "
                         f"{' + '.join(sources)} hold {available} ({line.cancelled} cancelled, "
                         f"{line.shipped + line.delivered} already shipped, {line.ordered} ordered)")
        changes: dict[str, Any] = {}
        remaining = quantity
        for source in sources:
            taken = min(remaining, getattr(line, source))
            changes[source] = getattr(line, source) - taken
            remaining -= taken
        changes[target] = getattr(line, target) + quantity
        if changes.get("backordered") == 0:
            changes["backorder_eta"] = None
        if target == "delivered":
            changes["delivered_at"] = self.event.occurred_at
        updated = evolve(line, **changes)
        self.state = self.state.with_line(updated)
        return updated

    def shipment_trigger(self, shipment: Shipment, trigger: str, reason: str, **changes: Any) -> Shipment:
        target = SHIPMENT.require(shipment.status, trigger, shipment.shipment_id)
        updated = evolve(shipment, status=target, **changes)
        self.state = self.state.with_shipment(updated)
        self.move(SHIPMENT.name, shipment.shipment_id, shipment.status, target, reason)
        return updated

    def finished(self, before: FulfillmentState) -> None:
        """Per applied event: the derived status (and its transition) when lines or parcels changed.
        A parcel's move that leaves every line's words as they were (in transit, out for delivery)
        publishes no snapshot: it would repeat the last one to order-state, returns and the
        timeline, which read every snapshot (31% of its snapshots on the bench's workload)."""
        after = self.state
        if (after.lines, after.shipments) == (before.lines, before.shipments):
            return
        parcels_only = after.lines == before.lines and before.placed
        if parcels_only and _parcels_said(after) == _parcels_said(before):
            return
        said = line_statuses(after)
        if parcels_only and said == line_statuses(before):
            return
        status, was = after.status, before.status if before.placed else "(none)"  # each derived from the lines: once
        if was != status:
            self.emit(workflow.Transitioned(ORDER_MACHINE, after.order_id, was, status, f"lines now {status.replace('_', ' ')}"))
        self.emit(StatusSnapshot(status, after.backordered, said))

    def notify(self, notice_type: str, shipment: Shipment | None = None, lines: tuple[str, ...] = (),
               **facts: str) -> None:
        self.emit(ShipmentNotice(notice_type, claims(self.state, shipment),
                         sentence(self.state, notice_type, shipment, lines), shipment, tuple(facts.items())))


def _placed_or_park(step: FulfillmentStep) -> None:
    if not step.state.placed:
        raise Park(ORDER_MACHINE, step.state.order_id, "unknown", "the order to be placed")


def _shipment_or_park(step: FulfillmentStep, shipment_id: str) -> Shipment:
    _placed_or_park(step)
    shipment = step.state.shipment(shipment_id)
    if shipment is None:
        raise Park(SHIPMENT.name, shipment_id, "unknown", "the shipment to be created")
    return shipment


# -- handlers -------------------------------------------------------------------------------------

def _order_placed(step: FulfillmentStep) -> None:
    if step.state.placed:
        raise Reject(ORDER_MACHINE, step.state.order_id, step.state.status, "duplicate_order",
                     "an order with this id was already placed (with another event id)")
    payload = step.event.payload
    lines = tuple(LineUnits(x["line_id"], x["name"], x["quantity"], x["quantity"]) for x in payload["lines"])
    step.state = evolve(step.state, placed=True, customer=payload["customer"], lines=lines)


def _order_cancelled(step: FulfillmentStep) -> None:
    """A cancellation cancels what has not left the warehouse; what has still arrives. Fulfillment
    alone knows what has left, so it decides for every machine: order-state follows its status
    snapshot, returns refunds the cancelled units that were paid. ``cancel_after_dispatch`` (the
    shop's policy, ``ORDEROPS_CANCEL_AFTER_DISPATCH``) may refuse instead once anything left."""
    _placed_or_park(step)
    state = step.state
    left = [x for x in state.lines if x.shipped or x.delivered]
    if left and step.context == REFUSE_AFTER_DISPATCH:
        # A refusal the customer hears of: the audit record and the message, nothing else changes.
        step.emit(Rejected(ORDER_MACHINE, state.order_id, state.status, "cancel_after_dispatch_refused",
                           "part of the order has left the warehouse and the shop's policy refuses a cancellation "
                           "then (the customer is told to return it when it arrives)"))
        step.notify("cancellation_refused", lines=tuple(x.line_id for x in left))
        return
    for shipment in state.shipments:
        if shipment.status == "created":
            step.shipment_trigger(shipment, "cancel", "order cancelled before dispatch")
    cancelled = []
    for x in step.state.lines:
        open_units = x.unfulfilled + x.backordered + x.in_shipment
        if open_units:
            step.move_units("OrderCancelled", x.line_id, open_units)
            cancelled.append(x.line_id)
    if left and cancelled:
        step.notify("order_partly_cancelled", lines=tuple(cancelled))


def _line_cancelled(step: FulfillmentStep) -> None:
    _placed_or_park(step)
    payload = step.event.payload
    step.move_units(step.event.short_type, payload["line_id"], payload["quantity"])
    if step.event.short_type != "LineCancelled":  # the warehouse's decision: the customer must hear it
        step.notify("line_cancelled", lines=(payload["line_id"],), reason=payload["reason"])


def _backordered(step: FulfillmentStep) -> None:
    _placed_or_park(step)
    payload = step.event.payload
    line = step.move_units("LineBackordered", payload["line_id"], payload["quantity"])
    step.state = step.state.with_line(evolve(line, backorder_eta=payload["eta"]))
    step.notify("line_backordered", lines=(line.line_id,))


def _eta_changed(step: FulfillmentStep) -> None:
    _placed_or_park(step)
    payload = step.event.payload
    line = step.state.line(payload["line_id"])
    if line is None or not line.backordered:
        raise Reject(ORDER_MACHINE, payload["line_id"], step.state.status, "no_backorder",
                     f"line {payload['line_id']} has nothing backordered whose ETA could change")
    before = line.backorder_eta
    step.state = step.state.with_line(evolve(line, backorder_eta=payload["eta"]))
    slipped = before is not None and payload["eta"] > before
    step.notify("backorder_eta_changed", lines=(line.line_id,), slipped=str(slipped).lower(),
                previous_eta=before.isoformat() if before else "", reason=payload.get("reason", ""))


def _shipment_created(step: FulfillmentStep) -> None:
    _placed_or_park(step)
    payload = step.event.payload
    if (existing := step.state.shipment(payload["shipment_id"])) is not None:
        raise Reject(SHIPMENT.name, payload["shipment_id"], existing.status,
                     "duplicate_shipment", "a shipment with this id already exists (with another event id)")
    lines = tuple((x["line_id"], x["quantity"]) for x in payload["lines"])
    for line_id, quantity in lines:
        step.move_units("ShipmentCreated", line_id, quantity)
    step.state = step.state.with_shipment(Shipment(payload["shipment_id"], lines))
    step.move(SHIPMENT.name, payload["shipment_id"], "(none)", SHIPMENT.initial, "parcel packed")


def _shipment_event(step: FulfillmentStep) -> None:
    payload, kind = step.event.payload, step.event.short_type
    shipment = _shipment_or_park(step, payload["shipment_id"])
    trigger = SHIPMENT_TRIGGERS[kind]
    changes: dict[str, Any] = {}
    if kind == "ShipmentDispatched":
        changes = {"carrier": payload["carrier"], "tracking_number": payload["tracking_number"],
                   "tracking_url": web_link(payload.get("tracking_url")), "estimated_delivery": payload.get("estimated_delivery")}
    reason = {"DeliveryFailed": f"delivery failed: {payload.get('reason', '')}"}.get(kind, kind)
    updated = step.shipment_trigger(shipment, trigger, reason, **changes)
    unit_event = {"ShipmentDispatched": "ShipmentDispatched", "ShipmentDelivered": "ShipmentDelivered",
                  "ReturnedToSender": "ReturnedToSender"}.get(kind)
    if unit_event:
        for line_id, quantity in updated.lines:
            step.move_units(unit_event, line_id, quantity)
    notice = {"ShipmentDispatched": "shipment_dispatched", "ShipmentDelivered": "shipment_delivered",
              "DeliveryFailed": "delivery_failed"}.get(kind)
    if notice:
        step.notify(notice, step.state.shipment(updated.shipment_id), reason=payload.get("reason", ""))


def _tracking(step: FulfillmentStep) -> None:
    payload = step.event.payload
    shipment = _shipment_or_park(step, payload["shipment_id"])
    trigger = TRACKING_TRIGGERS[payload["status"]]
    changes: dict[str, Any] = {}
    if payload.get("estimated_delivery"):
        changes["estimated_delivery"] = payload["estimated_delivery"]
    if trigger == "delayed":
        changes["delayed"] = True
    elif trigger == "out_for_delivery":
        changes["delayed"] = False
    elif trigger == "delivery_attempted":
        changes["attempts"] = shipment.attempts + 1
    updated = step.shipment_trigger(shipment, trigger, f"carrier scan: {payload['status'].lower()} "
                                                       f"{payload.get('detail', '')}".strip(), **changes)
    if trigger == "delayed" and not shipment.delayed:
        step.notify("shipment_delayed", updated, detail=payload.get("detail", ""))


HANDLERS = {
    "OrderPlaced": _order_placed,
    "OrderCancelled": _order_cancelled,
    "LineCancelled": _line_cancelled,
    "LineCancelledByWarehouse": _line_cancelled,
    "LineShortShipped": _line_cancelled,
    "LineBackordered": _backordered,
    "BackorderEtaChanged": _eta_changed,
    "ShipmentCreated": _shipment_created,
    "ShipmentDispatched": _shipment_event,
    "ShipmentDelivered": _shipment_event,
    "DeliveryFailed": _shipment_event,
    "ReturnedToSender": _shipment_event,
    "TrackingUpdated": _tracking,
}


# -- entry points ---------------------------------------------------------------------------------

CANCEL_REST_AFTER_DISPATCH, REFUSE_AFTER_DISPATCH = "cancel-rest", "refuse"


def apply(state: FulfillmentState | None, event: Envelope, topic: str, now: datetime, park_for: timedelta,
          cancel_after_dispatch: str = CANCEL_REST_AFTER_DISPATCH) -> Outcome:
    """``cancel_after_dispatch``: what an order cancellation does once part of it has left."""
    state = state or FulfillmentState(order_id=event.order_id)
    return workflow.apply(state, event, topic, now, park_for, HANDLERS, FulfillmentStep, cancel_after_dispatch)


def expire(state: FulfillmentState, now: datetime) -> Outcome:
    return workflow.expire_parked(state, now, lambda s, machine, entity: (
        s.shipment(entity).status if machine == SHIPMENT.name and s.shipment(entity) else s.status))


def next_deadline(state: FulfillmentState) -> datetime | None:
    return workflow.earliest_park_deadline(state)
