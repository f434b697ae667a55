"""order-state's HTTP: GET /orders/{order_id}, answered by the worker that owns the order."""

from __future__ import annotations

from order_state.app import orders, service
from order_state.domain import OrderState
from order_state.machines import ORDER, PAYMENT
from orderops.model.workflow import describe_history_and_parked


def describe(stored: dict) -> dict:
    """Both machines side by side, with history and what is parked (JSON-friendly)."""
    state = OrderState.from_json(stored)
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
        **describe_history_and_parked(state),
    }


service.order_page("/orders/{order_id}", orders, describe,
                   "The order's state, payments and history")
