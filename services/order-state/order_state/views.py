"""order-state's HTTP: GET /orders/{order_id}, answered by the worker that owns the order."""

from __future__ import annotations

from faust import web

from order_state.app import app, orders
from order_state.domain import OrderState
from order_state.machines import ORDER, PAYMENT


@app.page("/orders/{order_id}")
class OrderView(web.View):
    @app.table_route(table=orders, match_info="order_id")
    async def get(self, request: web.Request, order_id: str) -> web.Response:
        stored = orders.get(order_id)
        if stored is None:
            return self.json({"error": f"order {order_id} is unknown to order-state"}, status=404)
        return self.json(describe(OrderState.from_json(stored)))


def describe(state: OrderState) -> dict:
    """Both machines side by side, with history and what is parked (JSON-friendly)."""
    return {
        "order_id": state.order_id,
        "order": {"state": state.status, "terminal": state.status in ORDER.terminal,
                  "held_from": state.held_from, "hold_reason": state.hold_reason,
                  "fulfillment_status": state.fulfillment_status},
        "payments": [
            {"instrument_id": i.instrument_id, "channel": i.channel, "state": i.status,
             "terminal": i.status in PAYMENT.terminal, "currency": i.currency, "allocated": str(i.allocated),
             "authorized": str(i.authorized), "captured": str(i.captured), "refunded": str(i.refunded),
             "charged_back": str(i.charged_back)}
            for i in state.instruments
        ],
        "lines": [{"line_id": x.line_id, "name": x.name, "quantity": x.quantity, "cancelled": x.cancelled}
                  for x in state.lines],
        "parked": [{"event_id": p.event.event_id, "type": p.event.short_type, "topic": p.topic,
                    "machine": p.machine, "waiting_for": p.waiting_for, "deadline": p.deadline.isoformat()}
                   for p in state.parked],
        "history": [{"machine": h.machine, "entity_id": h.entity_id, "from": h.from_state, "to": h.to_state,
                     "cause_event_id": h.cause_event_id, "at": h.at.isoformat(), "reason": h.reason}
                    for h in state.history],
    }
