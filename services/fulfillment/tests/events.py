"""Event builders for fulfillment's domain tests (pure: no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from orderops.model.envelope import Envelope

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
ETA = datetime(2026, 12, 3, tzinfo=UTC)
ORDER_ID = "o-1"
_counter = iter(range(1, 10**9))


def event(type_name: str, payload: dict, n: int | None = None, namespace: str = "warehouse") -> Envelope:
    n = next(_counter) if n is None else n
    return Envelope(f"{ORDER_ID}:{type_name}:{n}", ORDER_ID, T0 + timedelta(minutes=n % 100000), namespace,
                    f"orderops.{namespace}.{type_name}", payload)


def placed(lines=(("l1", "Blue mug", 2), ("l2", "Teapot", 1), ("l3", "Tea towel", 3))) -> Envelope:
    return event("OrderPlaced", {
        "customer": {"customer_id": "c-1", "email": "ada@example.com", "name": "Ada", "locale": "en", "phone": None},
        "lines": [{"line_id": i, "sku": f"sku-{i}", "name": name, "category": "home", "quantity": q,
                   "unit_price": {"amount": Decimal(10), "currency": "EUR"}, "final_sale": False} for i, name, q in lines],
        "instruments": [], "shipping_address": {}, "total": {"amount": Decimal(60), "currency": "EUR"},
        "promised_delivery_by": None,
    }, namespace="storefront")


def order_cancelled() -> Envelope:
    return event("OrderCancelled", {"reason": "changed my mind", "requested_by": "customer"}, namespace="storefront")


def line_cancelled(line_id: str, quantity: int) -> Envelope:
    return event("LineCancelled", {"line_id": line_id, "quantity": quantity, "reason": "no longer needed"},
                 namespace="storefront")


def created(shipment_id: str, *lines: tuple[str, int]) -> Envelope:
    return event("ShipmentCreated", {"shipment_id": shipment_id, "warehouse": "ams-1",
                                     "lines": [{"line_id": i, "quantity": q} for i, q in lines]})


def dispatched(shipment_id: str, tracking: str = "JD0001") -> Envelope:
    return event("ShipmentDispatched", {"shipment_id": shipment_id, "carrier": "DHL", "tracking_number": tracking,
                                        "tracking_url": f"https://track.example/{tracking}", "estimated_delivery": None})


def tracking(shipment_id: str, status: str) -> Envelope:
    return event("TrackingUpdated", {"shipment_id": shipment_id, "status": status, "detail": "hub scan",
                                     "estimated_delivery": None})


def delivered(shipment_id: str) -> Envelope:
    return event("ShipmentDelivered", {"shipment_id": shipment_id})


def delivery_failed(shipment_id: str) -> Envelope:
    return event("DeliveryFailed", {"shipment_id": shipment_id, "reason": "address not found"})


def returned_to_sender(shipment_id: str) -> Envelope:
    return event("ReturnedToSender", {"shipment_id": shipment_id})


def backordered(line_id: str, quantity: int, eta: datetime = ETA) -> Envelope:
    return event("LineBackordered", {"line_id": line_id, "quantity": quantity, "eta": eta})


def eta_changed(line_id: str, eta: datetime) -> Envelope:
    return event("BackorderEtaChanged", {"line_id": line_id, "eta": eta, "reason": "supplier delay"})


def warehouse_cancelled(line_id: str, quantity: int) -> Envelope:
    return event("LineCancelledByWarehouse", {"line_id": line_id, "quantity": quantity, "reason": "discontinued"})


def short_shipped(line_id: str, quantity: int) -> Envelope:
    return event("LineShortShipped", {"line_id": line_id, "quantity": quantity, "reason": "not found in stock"})
