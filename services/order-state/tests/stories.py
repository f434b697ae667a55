"""Event builders for order-state's domain tests (pure: no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from orderops.model.envelope import Envelope

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
ORDER_ID = "o-1"


def money(amount, currency: str = "EUR") -> dict:
    return {"amount": Decimal(str(amount)), "currency": currency}


def event(type_name: str, payload: dict, n: int = 0, order_id: str = ORDER_ID, at: datetime | None = None,
          event_id: str | None = None) -> Envelope:
    namespace = {"OrderPlaced": "storefront", "OrderCancelled": "storefront", "LineCancelled": "storefront",
                 "FulfillmentStatusChanged": "fulfillment"}.get(type_name, "payments")
    return Envelope(event_id or f"{order_id}:{n}:{type_name}", order_id, at or T0 + timedelta(minutes=n),
                    namespace, f"orderops.{namespace}.{type_name}", payload)


def placed(instruments=(("card-1", "CARD", 100),), lines=(("l1", "Blue mug", 2, 30), ("l2", "Teapot", 1, 40)),
           n: int = 0, **kw) -> Envelope:
    return event("OrderPlaced", {
        "customer": {"customer_id": "c-1", "email": "ada@example.com", "name": "Ada", "locale": "en", "phone": None},
        "lines": [{"line_id": i, "sku": f"sku-{i}", "name": name, "category": "home", "quantity": q,
                   "unit_price": money(p), "final_sale": False} for i, name, q, p in lines],
        "instruments": [{"instrument_id": i, "channel": c, "amount": money(a), "provider": ""} for i, c, a in instruments],
        "shipping_address": {}, "total": money(sum(a for _, _, a in instruments)), "promised_delivery_by": None,
    }, n, **kw)


def authorized(amount=100, instrument="card-1", n: int = 1, **kw) -> Envelope:
    return event("PaymentAuthorized", {"instrument_id": instrument, "amount": money(amount),
                                       "authorization_id": f"auth-{n}", "expires_at": None}, n, **kw)


def auth_failed(instrument="card-1", n: int = 1, **kw) -> Envelope:
    return event("AuthorizationFailed", {"instrument_id": instrument, "amount": money(100), "reason": "insufficient funds",
                                         "customer_action": "use another card"}, n, **kw)


def auth_expired(instrument="card-1", n: int = 1, **kw) -> Envelope:
    return event("AuthorizationExpired", {"instrument_id": instrument, "authorization_id": "auth"}, n, **kw)


def captured(amount, instrument="card-1", n: int = 2, **kw) -> Envelope:
    return event("PaymentCaptured", {"instrument_id": instrument, "amount": money(amount), "capture_id": f"cap-{n}"},
                 n, **kw)


def capture_failed(instrument="card-1", n: int = 2, **kw) -> Envelope:
    return event("CaptureFailed", {"instrument_id": instrument, "amount": money(10), "reason": "processor down"}, n, **kw)


def voided(instrument="card-1", n: int = 2, **kw) -> Envelope:
    return event("PaymentVoided", {"instrument_id": instrument, "amount": money(10)}, n, **kw)


def refunded(amount, instrument="card-1", n: int = 3, **kw) -> Envelope:
    return event("RefundSucceeded", {"refund_id": f"r-{n}", "instrument_id": instrument, "amount": money(amount)},
                 n, **kw)


def refund_failed(instrument="card-1", n: int = 3, **kw) -> Envelope:
    return event("RefundFailed", {"refund_id": f"r-{n}", "instrument_id": instrument, "amount": money(10),
                                  "reason": "closed account", "retryable": False}, n, **kw)


def chargeback(amount=10, instrument="card-1", n: int = 4, **kw) -> Envelope:
    return event("Chargeback", {"instrument_id": instrument, "amount": money(amount), "reason": "fraud"}, n, **kw)


def cancelled(n: int = 5, **kw) -> Envelope:
    return event("OrderCancelled", {"reason": "changed my mind", "requested_by": "customer"}, n, **kw)


def line_cancelled(line_id="l1", quantity=1, n: int = 5, **kw) -> Envelope:
    return event("LineCancelled", {"line_id": line_id, "quantity": quantity, "reason": "out of budget"}, n, **kw)


def fulfillment(status: str, n: int = 6, **kw) -> Envelope:
    return event("FulfillmentStatusChanged", {"status": status, "backordered": False, "lines": []}, n, **kw)


TRIGGER_EVENTS = {
    "authorized": lambda: authorized(100, n=90),
    "auth_failed": lambda: auth_failed(n=91),
    "auth_expired": lambda: auth_expired(n=92),
    "captured": lambda: captured(10, n=93),
    "capture_failed": lambda: capture_failed(n=94),
    "voided": lambda: voided(n=95),
    "refunded": lambda: refunded(10, n=96),
    "refund_failed": lambda: refund_failed(n=97),
    "charged_back": lambda: chargeback(10, n=98),
}
