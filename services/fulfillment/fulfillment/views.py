"""fulfillment's HTTP: GET /orders/{order_id}/fulfillment, answered by the owning worker."""

from __future__ import annotations

from fulfillment.app import orders, service
from fulfillment.domain import FulfillmentState, waiting_for
from orderops.model.workflow import describe_history_and_parked


def _when(moment):
    return moment.isoformat() if moment else None


def describe(stored: dict) -> dict:
    state = FulfillmentState.from_json(stored)
    return {
        "order_id": state.order_id, "status": state.status, "backordered": state.backordered,
        "lines": [{**{k: v for k, v in vars(x).items() if k not in ("backorder_eta", "delivered_at")},
                   "backorder_eta": _when(x.backorder_eta), "delivered_at": _when(x.delivered_at),
                   "shipments": [s.shipment_id for s in state.shipments if s.quantity_of(x.line_id)],
                   "waiting_for": waiting_for(state, x)} for x in state.lines],
        "shipments": [{"shipment_id": s.shipment_id, "state": s.status, "delayed": s.delayed, "attempts": s.attempts,
                       "carrier": s.carrier, "tracking_number": s.tracking_number, "tracking_url": s.tracking_url,
                       "estimated_delivery": _when(s.estimated_delivery),
                       "lines": [{"line_id": line_id, "quantity": q} for line_id, q in s.lines]}
                      for s in state.shipments],
        **describe_history_and_parked(state),
    }


service.order_page("/orders/{order_id}/fulfillment", orders, describe,
                   "The order's lines, shipments and what each line waits for")
