"""What a fulfillment outcome publishes, as records of the contract (pure: dicts, no Kafka)."""

from __future__ import annotations

from collections.abc import Iterator

from fulfillment.domain import FulfillmentState, LineClaim, LineStatus, ShipmentNotice, StatusSnapshot
from orderops.model import workflow
from orderops.model.catalog import FULFILLMENT_STATE_CHANGES, FULFILLMENT_STATUS, NOTIFICATIONS_REQUESTS, Topic
from orderops.model.workflow import Outcome, Record, Transitioned

SOURCE = "fulfillment"


def publishable(outcome: Outcome) -> Iterator[tuple[Topic, dict]]:
    for record, event_id in workflow.with_ids(outcome, SOURCE):
        what = record.what
        if isinstance(what, ShipmentNotice):
            yield NOTIFICATIONS_REQUESTS, _notification(record, what, outcome.state)
        elif isinstance(what, StatusSnapshot):
            yield FULFILLMENT_STATUS, workflow.envelope(
                record, event_id, SOURCE, "orderops.fulfillment.FulfillmentStatusChanged",
                _snapshot(what))
        elif isinstance(what, Transitioned):
            yield FULFILLMENT_STATE_CHANGES, workflow.envelope(
                record, event_id, SOURCE, workflow.COMMON + "StateTransition", workflow.transition_payload(record))
        else:
            yield FULFILLMENT_STATE_CHANGES, workflow.envelope(record, event_id, SOURCE, *workflow.audit(record))


def _snapshot(snapshot: StatusSnapshot) -> dict:
    return {"status": snapshot.status, "backordered": snapshot.backordered, "lines": [_line(said) for said in snapshot.lines]}


def _line(said: LineStatus) -> dict:
    x = said.line
    return {"line_id": x.line_id, "ordered": x.ordered, "unfulfilled": x.unfulfilled, "backordered": x.backordered,
            "in_shipment": x.in_shipment, "shipped": x.shipped, "delivered": x.delivered, "cancelled": x.cancelled,
            "returned": 0, "shipment_ids": list(said.parcels),
            "backorder_eta": x.backorder_eta, "delivered_at": x.delivered_at, "waiting_for": said.waiting_for}


def _claim(claim: LineClaim) -> dict:
    return dict(vars(claim))


def _notification(record: Record, notify: ShipmentNotice, state: FulfillmentState) -> dict:
    notification_id = f"{record.cause.event_id}:notify:{notify.type}"
    shipment = notify.shipment
    facts = {"order_id": state.order_id, "summary": notify.summary, "status": state.status, **dict(notify.facts)}
    if shipment is not None:
        facts.update({"carrier": shipment.carrier, "tracking_number": shipment.tracking_number})
    payload = {
        "notification_id": notification_id, "type": notify.type, "customer": state.customer,
        "cause_event_id": record.cause.event_id, "lines": [_claim(c) for c in notify.lines], "amounts": [],
        "shipment_id": shipment.shipment_id if shipment else None,
        "tracking_url": (shipment.tracking_url or None) if shipment else None, "facts": facts,
    }
    return workflow.envelope(record, notification_id, SOURCE, "orderops.notifications.NotificationRequested", payload)
