"""Event builders for the returns domain tests (pure: no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from pathlib import Path

from orderops.model.envelope import Envelope
from returns.domain import Policies
from returns.policy import load_policy

POLICY_DIR = Path(__file__).resolve().parents[3] / "policies"
V1, V2 = (load_policy(POLICY_DIR / f"standard-v{n}.yaml") for n in (1, 2))
POLICIES = Policies({V1.ref: V1, V2.ref: V2})
PLACED_V1 = datetime(2026, 11, 2, 9, tzinfo=UTC)
PLACED_V2 = datetime(2026, 12, 2, 9, tzinfo=UTC)
_n = count(1)


def ev(type_name: str, payload: dict, at: datetime, order_id: str = "o-1") -> Envelope:
    namespace = {"OrderPlaced": "storefront", "ReturnRequested": "storefront", "PaymentCaptured": "payments",
                 "RefundSucceeded": "payments", "RefundFailed": "payments", "PaymentVoided": "payments",
                 "AuthorizationExpired": "payments", "ReturnReceived": "warehouse",
                 "InspectionCompleted": "warehouse", "FulfillmentStatusChanged": "fulfillment",
                 "PolicyExceptionApproved": "support"}[type_name]
    return Envelope(f"{order_id}:{type_name}:{next(_n)}", order_id, at, namespace, f"orderops.{namespace}.{type_name}",
                    payload)


def money(amount) -> dict:
    return {"amount": Decimal(str(amount)), "currency": "EUR"}


LINES = (("l1", "Headphones", "electronics", 1, "80.00"), ("l2", "Mug", "home", 2, "10.00"),
         ("l3", "Gift card", "gift-cards", 1, "25.00"), ("l4", "Lipstick", "beauty", 1, "20.00"))


def placed(at=PLACED_V1, instruments=(("card-1", "CARD", "135.00"),), lines=LINES) -> Envelope:
    return ev("OrderPlaced", {
        "customer": {"customer_id": "c-1", "email": "ada@example.com", "name": "Ada", "locale": "en", "phone": None},
        "lines": [{"line_id": i, "sku": i, "name": n, "category": c, "quantity": q, "unit_price": money(p),
                   "final_sale": False} for i, n, c, q, p in lines],
        "instruments": [{"instrument_id": i, "channel": ch, "amount": money(a), "provider": ""}
                        for i, ch, a in instruments],
        "shipping_address": {}, "total": money("135.00"), "promised_delivery_by": None}, at)


def captured(instrument: str, amount, at: datetime, capture_id: str | None = None) -> Envelope:
    return ev("PaymentCaptured", {"instrument_id": instrument, "amount": money(amount),
                                  "capture_id": capture_id or f"cap-{next(_n)}"}, at)


def voided(instrument: str, amount, at: datetime) -> Envelope:
    return ev("PaymentVoided", {"instrument_id": instrument, "amount": money(amount)}, at)


def fulfilled(at: datetime, delivered=None, cancelled=None, lines=LINES) -> Envelope:
    delivered = delivered if delivered is not None else {i: q for i, _, _, q, _ in lines}
    cancelled = cancelled or {}
    return ev("FulfillmentStatusChanged", {"status": "delivered", "backordered": False, "lines": [
        {"line_id": i, "ordered": q, "unfulfilled": 0, "backordered": 0, "in_shipment": 0, "shipped": 0,
         "delivered": delivered.get(i, 0), "cancelled": cancelled.get(i, 0), "returned": 0, "shipment_ids": [],
         "backorder_eta": None, "delivered_at": at if delivered.get(i) else None, "waiting_for": ""}
        for i, _, _, q, _ in lines]}, at)


def requested(return_id: str, at: datetime, *lines: tuple[str, int, str], customer_returns_90d: int = 0) -> Envelope:
    return ev("ReturnRequested", {"return_id": return_id, "customer_id": "c-1", "customer_returns_90d":
                                  customer_returns_90d, "lines": [{"line_id": i, "quantity": q, "reason": r,
                                                                   "comment": ""} for i, q, r in lines]}, at)


def received(return_id: str, at: datetime, *lines: tuple[str, int]) -> Envelope:
    return ev("ReturnReceived", {"return_id": return_id, "lines": [{"line_id": i, "quantity": q} for i, q in lines]}, at)


def inspected(return_id: str, at: datetime, *results: tuple[str, int, str]) -> Envelope:
    return ev("InspectionCompleted", {"return_id": return_id, "results": [
        {"line_id": i, "quantity": q, "outcome": o, "disposition": "RESTOCK", "note": ""} for i, q, o in results]}, at)


def refund_result(key: str, instrument: str, amount, at: datetime, ok: bool = True, retryable: bool = True) -> Envelope:
    if ok:
        return ev("RefundSucceeded", {"refund_id": key, "instrument_id": instrument, "amount": money(amount)}, at)
    return ev("RefundFailed", {"refund_id": key, "instrument_id": instrument, "amount": money(amount),
                               "reason": "card closed", "retryable": retryable}, at)


def exception_approved(return_id: str, at: datetime) -> Envelope:
    return ev("PolicyExceptionApproved", {"actor": {"user_id": "lee", "role": "lead"}, "return_id": return_id,
                                          "reason": "loyal customer"}, at)


def days(n: float) -> timedelta:
    return timedelta(days=n)
