"""A customer cancels while a parcel is on its way, with order-state, fulfillment and returns as real
processes on a real broker. One rule in every machine: what had not left is cancelled, what had
still arrives; the order goes on to completion (nothing the warehouse reports next is rejected);
the cancelled, paid line is refunded; the customer is told what still arrives and that the refund
is on its way, and is never told the whole order was cancelled."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import decode_all, orderops_cli, poll_json, producer, read_topic, start_processors

from orderops.model.catalog import (
    FULFILLMENT,
    NOTIFICATIONS_REQUESTS,
    ORDER_STATE,
    ORDERS_STATE_CHANGES,
    PAYMENTS_EVENTS,
    RETURNS,
    STOREFRONT_ORDERS,
    WAREHOUSE_FULFILLMENT,
)

pytestmark = pytest.mark.broker
PLACED = datetime(2026, 11, 2, 9, tzinfo=UTC)


async def test_a_cancellation_after_dispatch_cancels_the_rest_in_every_machine(catalog_topics, run_id, tmp_path):
    bootstrap = catalog_topics
    assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
    processes = start_processors(bootstrap, tmp_path, {"ORDEROPS_INSTANCE": f"x{run_id}", "ORDEROPS_CLOCK": "event"},
                                 names=(ORDER_STATE, FULFILLMENT, RETURNS))
    order = f"cad-{run_id}"
    kafka = producer(bootstrap)
    try:
        await asyncio.gather(*(p.wait_ready() for p in processes.values()))
        story = Story(order, start=PLACED)
        story.on(STOREFRONT_ORDERS).OrderPlaced(
            customer=customer(), lines=[line("l1", "Lamp", 1, "60.00"), line("l2", "Vase", 1, "40.00")],
            instruments=[card("card-1", "100.00")], shipping_address=address(), total=money("100.00"))
        story.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("100.00"),
                                                                     authorization_id="a-1")
        story.after(minutes=5).on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money("100.00"),
                                                                   capture_id="c-1")
        story.after(hours=2).on(WAREHOUSE_FULFILLMENT).ShipmentCreated(
            shipment_id="P1", warehouse="ams-1", lines=[{"line_id": "l1", "quantity": 1}])
        story.after(hours=1).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(
            shipment_id="P1", carrier="DHL", tracking_number="JD1", tracking_url="https://track.example/JD1")
        story.publish(kafka)
        # Written after the dispatch (broker time orders the topics), as a customer would send it.
        await poll_json(processes[FULFILLMENT], f"/orders/{order}/fulfillment", lambda v: v["status"] == "partially_shipped",
                        timeout=90)
        later = Story(order, start=story.clock)
        later.add(STOREFRONT_ORDERS, "OrderCancelled", {"reason": "changed my mind", "requested_by": "customer"})
        later.publish(kafka)
        await poll_json(processes[FULFILLMENT], f"/orders/{order}/fulfillment",
                        lambda v: [x["cancelled"] for x in v["lines"]] == [0, 1], timeout=60)
        last = Story(order, start=story.clock)
        last.after(days=1).add(WAREHOUSE_FULFILLMENT, "ShipmentDelivered", {"shipment_id": "P1"})
        last.publish(kafka)

        lines = await poll_json(processes[FULFILLMENT], f"/orders/{order}/fulfillment",
                                lambda v: v["status"] == "delivered", timeout=90)
        assert {x["line_id"]: (x["delivered"], x["cancelled"]) for x in lines["lines"]} == {"l1": (1, 0), "l2": (0, 1)}
        kept = await poll_json(processes[ORDER_STATE], f"/orders/{order}",
                               lambda v: v["order"]["state"] == "completed", timeout=60)
        assert kept["payments"][0]["captured"] == "100.0000"
        refunds = await poll_json(processes[RETURNS], f"/orders/{order}/returns", lambda v: bool(v["refunds"]))
        assert [(Decimal(r["amount"]), r["cause"]) for r in refunds["refunds"]] == [(Decimal("40.00"), "cancelled 1 × Vase")]

        audit = decode_all(read_topic(bootstrap, ORDERS_STATE_CHANGES.name, keep=lambda m: m.key() == order.encode(),
                                      until=lambda got: len(got) >= 5), ORDERS_STATE_CHANGES)
        assert not [a for a in audit if a.short_type == "EventRejected"], "order-state refused nothing the warehouse said"

        def told(got) -> list[str]:
            return [n.payload["type"] for n in decode_all(got, NOTIFICATIONS_REQUESTS)]

        notices = told(read_topic(bootstrap, NOTIFICATIONS_REQUESTS.name, keep=lambda m: m.key() == order.encode(),
                                  until=lambda got: {"order_partly_cancelled", "refund_issued"} <= set(told(got))))
        assert "order_cancelled" not in notices

        # A line cancelled after it left: fulfillment refuses it, and order-state's lines follow fulfillment.
        shipped = Story(f"{order}-line", start=PLACED)
        shipped.on(STOREFRONT_ORDERS).OrderPlaced(
            customer=customer(), lines=[line("l1", "Lamp", 1, "60.00")], instruments=[card("card-1", "60.00")],
            shipping_address=address(), total=money("60.00"))
        shipped.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("60.00"),
                                                                       authorization_id="a-1")
        shipped.after(hours=1).on(WAREHOUSE_FULFILLMENT).ShipmentCreated(
            shipment_id="P1", warehouse="ams-1", lines=[{"line_id": "l1", "quantity": 1}])
        shipped.after(hours=1).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(
            shipment_id="P1", carrier="DHL", tracking_number="JD2", tracking_url="https://track.example/JD2")
        shipped.publish(kafka)
        await poll_json(processes[FULFILLMENT], f"/orders/{order}-line/fulfillment", lambda v: v["status"] == "shipped")
        request = Story(f"{order}-line", start=shipped.clock)
        request.after(minutes=5).add(STOREFRONT_ORDERS, "LineCancelled",
                                     {"line_id": "l1", "quantity": 1, "reason": "too late"})
        request.publish(kafka)
        view = await poll_json(processes[ORDER_STATE], f"/orders/{order}-line", lambda v: any(
            "cancellation of 1 × Lamp requested" in h["reason"] for h in v["history"]))
        assert view["order"]["state"] == "in_fulfillment" and view["lines"][0]["cancelled"] == 0
    finally:
        for process in processes.values():
            process.stop(signal.SIGKILL)
