"""A cross-domain story as the timeline receives it (every processor's outputs included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from orderops_tools.scenario import address

from orderops.model.catalog import (
    FULFILLMENT_STATE_CHANGES,
    FULFILLMENT_STATUS,
    NOTIFICATIONS_DELIVERIES,
    NOTIFICATIONS_REQUESTS,
    ORDERS_STATE_CHANGES,
    PAYMENTS_EVENTS,
    STOREFRONT_ORDERS,
    SUPPORT_CONTACTS,
    WAREHOUSE_FULFILLMENT,
    Topic,
)
from orderops.model.envelope import Envelope

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
ETA = datetime(2026, 11, 12, tzinfo=UTC)


class Feed:
    def __init__(self, order_id: str = "o-1") -> None:
        self.order_id, self.at, self.events, self.n, self.topics = order_id, T0, [], 0, []

    def after(self, **delta) -> Feed:
        self.at += timedelta(**delta)
        return self

    def add(self, topic: Topic, type_name: str, **payload) -> Envelope:
        self.n += 1
        namespace = {"StateTransition": "common", "PaymentTransition": "orderstate", "EventParked": "common",
                     "EventRejected": "common", "FulfillmentStatusChanged": "fulfillment", "NotificationDelivered":
                     "notifications", "NotificationRequested": "notifications", "ReturnAuthorizationDecided": "returns",
                     "RefundRequested": "returns"}.get(
                         type_name, topic.name.split(".")[0])
        event = Envelope(f"{self.order_id}:{self.n}:{type_name}", self.order_id, self.at, topic.writers[0],
                         f"orderops.{namespace}.{type_name}", payload)
        self.events.append((topic.name, event))
        self.topics.append(topic)
        return event

    def transition(self, topic: Topic, machine: str, entity: str, before: str, after: str, reason: str = "") -> Envelope:
        return self.add(topic, "StateTransition", machine=machine, entity_id=entity, from_state=before, to_state=after,
                        cause_event_id="c", cause_type="orderops.x.Y", reason=reason)


def money(amount) -> dict:
    return {"amount": Decimal(str(amount)), "currency": "EUR"}


def line_snapshot(line_id, ordered, backordered=0, shipped=0, delivered=0, eta=None, unfulfilled=None):
    return {"line_id": line_id, "ordered": ordered,
            "unfulfilled": ordered - backordered - shipped - delivered if unfulfilled is None else unfulfilled,
            "backordered": backordered, "in_shipment": 0, "shipped": shipped, "delivered": delivered, "cancelled": 0,
            "returned": 0, "shipment_ids": [], "backorder_eta": eta, "delivered_at": None, "waiting_for": ""}


def split_order_story() -> Feed:
    f = Feed()
    f.add(STOREFRONT_ORDERS, "OrderPlaced", customer={"customer_id": "c-1", "email": "ada@example.com", "name": "Ada",
                                                        "locale": "en", "phone": None},
          lines=[{"line_id": "l1", "sku": "s", "name": "Blue mug", "category": "home", "quantity": 2,
                  "unit_price": money(10), "final_sale": False},
                 {"line_id": "l2", "sku": "s", "name": "Teapot", "category": "home", "quantity": 1,
                  "unit_price": money(40), "final_sale": False}],
          instruments=[{"instrument_id": "card-1", "channel": "CARD", "amount": money(60), "provider": "visa"}],
          shipping_address=address(), total=money(60), promised_delivery_by=None)
    f.transition(ORDERS_STATE_CHANGES, "order", "o-1", "new", "pending_payment")
    f.after(minutes=2).add(PAYMENTS_EVENTS, "PaymentAuthorized", instrument_id="card-1", amount=money(60),
                           authorization_id="a", expires_at=T0 + timedelta(days=7))
    f.add(ORDERS_STATE_CHANGES, "PaymentTransition", transition={
        "machine": "payment", "entity_id": "card-1", "from_state": "pending", "to_state": "authorized",
        "cause_event_id": "c", "cause_type": "orderops.payments.PaymentAuthorized", "reason": ""},
        balance={"instrument_id": "card-1", "channel": "CARD", "authorized": money(60), "captured": money(0),
                 "refunded": money(0)})
    f.transition(ORDERS_STATE_CHANGES, "order", "o-1", "pending_payment", "confirmed")
    f.after(hours=3).add(WAREHOUSE_FULFILLMENT, "LineBackordered", line_id="l2", quantity=1, eta=ETA)
    f.add(FULFILLMENT_STATUS, "FulfillmentStatusChanged", status="unfulfilled", backordered=True,
          lines=[line_snapshot("l1", 2), line_snapshot("l2", 1, backordered=1, eta=ETA)])
    f.after(hours=2).add(WAREHOUSE_FULFILLMENT, "ShipmentDispatched", shipment_id="P1", carrier="DHL",
                         tracking_number="JD1", tracking_url="https://track.example/JD1", estimated_delivery=None)
    f.transition(FULFILLMENT_STATE_CHANGES, "shipment", "P1", "created", "dispatched")
    f.add(FULFILLMENT_STATUS, "FulfillmentStatusChanged", status="partially_shipped", backordered=True,
          lines=[line_snapshot("l1", 2, shipped=2), line_snapshot("l2", 1, backordered=1, eta=ETA)])
    claims = [{"line_id": "l1", "name": "Blue mug", "quantity_in_this_shipment": 2, "quantity_shipped": 2,
               "quantity_delivered": 0, "quantity_backordered": 0, "quantity_cancelled": 0, "eta": None,
               "shipment_id": "P1"},
              {"line_id": "l2", "name": "Teapot", "quantity_in_this_shipment": 0, "quantity_shipped": 0,
               "quantity_delivered": 0, "quantity_backordered": 1, "quantity_cancelled": 0, "eta": ETA,
               "shipment_id": None}]
    # The request carries the cause's event time: the moment the message's claims are judged at.
    f.add(NOTIFICATIONS_REQUESTS, "NotificationRequested", notification_id="n1", type="shipment_dispatched",
          customer={"customer_id": "c-1", "email": "ada@example.com", "name": "Ada", "locale": "en", "phone": None},
          cause_event_id="o-1:dispatched", lines=claims, amounts=[], shipment_id="P1",
          tracking_url="https://track.example/JD1", facts={})
    # Sent an hour later, on the notifier's clock.
    f.after(hours=1).add(NOTIFICATIONS_DELIVERIES, "NotificationDelivered", delivery_id="n1/email",
                         notification_ids=["n1"], type="shipment_dispatched", channel="email", outcome="SENT",
                         attempts=1, subject="A parcel is on the way", body="2 of 3 items shipped",
                         lines=[dict(c) for c in claims], amounts=[], reason="")
    f.after(days=1).add(SUPPORT_CONTACTS, "ContactOpened", contact_id="k1", customer_id="c-1", channel="EMAIL",
                        reason="where is my teapot?")
    f.after(days=1).add(SUPPORT_CONTACTS, "ContactOpened", contact_id="k2", customer_id="c-1", channel="PHONE",
                        reason="still no teapot")
    return f


def eta_slipped(days: int, at_days: int = 3, n: int = 200, cancelled: int = 0, order_id: str = "o-1") -> Feed:
    """The fulfillment snapshot, ``at_days`` after T0, in which the teapot the split order's message
    promised by ETA is now due ``days`` later (or, with ``cancelled``, cancelled)."""
    f = Feed(order_id)
    f.at, f.n = T0 + timedelta(days=at_days), n
    teapot = {**line_snapshot("l2", 1, backordered=1 - cancelled, eta=None if cancelled else ETA + timedelta(days=days)),
              "cancelled": cancelled}
    if cancelled:
        teapot["unfulfilled"] = 0
    f.add(FULFILLMENT_STATUS, "FulfillmentStatusChanged", status="partially_shipped", backordered=not cancelled,
          lines=[line_snapshot("l1", 2, shipped=2), teapot])
    return f
