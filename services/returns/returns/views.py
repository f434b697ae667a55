"""returns' HTTP: GET /orders/{order_id}/returns — returns with decisions and traces, refunds."""

from __future__ import annotations

from orderops.model.workflow import describe_history_and_parked
from returns.app import orders, service
from returns.domain import ReturnsState


def describe(stored: dict) -> dict:
    state = ReturnsState.from_json(stored)
    return {
        "order_id": state.order_id,
        "returns": [{"return_id": r.return_id, "state": r.status, "decision": r.decision, "policy": r.policy,
                     "requested_at": r.requested_at.isoformat(), "trace": list(r.trace),
                     "lines": [vars(x) for x in r.lines]} for r in state.returns],
        "refunds": [{"refund_id": r.refund_id, "state": r.status, "cause": r.cause, "return_id": r.return_id,
                     "instrument_id": r.instrument_id, "channel": r.channel, "method": r.method,
                     "amount": str(r.amount), "currency": r.currency, "attempts": list(r.keys), "reason": r.reason}
                    for r in state.refunds],
        "instruments": [{"instrument_id": i.instrument_id, "channel": i.channel, "captured": str(i.captured),
                         "refundable": str(state.refundable(i))} for i in state.instruments],
        **describe_history_and_parked(state),
    }


service.order_page("/orders/{order_id}/returns", orders, describe,
                   "The order's returns (decisions with their rule traces) and refunds")
