"""fulfillment's HTTP: GET /orders/{order_id}/fulfillment, answered by the owning worker."""

from __future__ import annotations

from faust import web

from fulfillment.app import app, orders
from fulfillment.domain import FulfillmentState, waiting_for


@app.page("/orders/{order_id}/fulfillment")
class FulfillmentView(web.View):
    @app.table_route(table=orders, match_info="order_id")
    async def get(self, request: web.Request, order_id: str) -> web.Response:
        stored = orders.get(order_id)
        if stored is None:
            return self.json({"error": f"order {order_id} is unknown to fulfillment"}, status=404)
        return self.json(describe(FulfillmentState.from_json(stored)))


def describe(state: FulfillmentState) -> dict:
    def when(moment):
        return moment.isoformat() if moment else None

    return {
        "order_id": state.order_id, "status": state.status, "backordered": state.backordered,
        "lines": [{**{k: v for k, v in vars(x).items() if k not in ("backorder_eta", "delivered_at")},
                   "backorder_eta": when(x.backorder_eta), "delivered_at": when(x.delivered_at),
                   "shipments": [s.shipment_id for s in state.shipments if s.quantity_of(x.line_id)],
                   "waiting_for": waiting_for(state, x)} for x in state.lines],
        "shipments": [{"shipment_id": s.shipment_id, "state": s.status, "delayed": s.delayed, "attempts": s.attempts,
                       "carrier": s.carrier, "tracking_number": s.tracking_number, "tracking_url": s.tracking_url,
                       "estimated_delivery": when(s.estimated_delivery),
                       "lines": [{"line_id": line_id, "quantity": q} for line_id, q in s.lines]}
                      for s in state.shipments],
        "parked": [{"event_id": p.event.event_id, "type": p.event.short_type, "waiting_for": p.waiting_for,
                    "deadline": p.deadline.isoformat()} for p in state.parked],
        "history": [{"machine": h.machine, "entity_id": h.entity_id, "from": h.from_state, "to": h.to_state,
                     "cause_event_id": h.cause_event_id, "at": h.at.isoformat(), "reason": h.reason}
                    for h in state.history],
    }
