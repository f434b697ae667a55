"""Start here. One order's whole life through every processor, on a real Kafka broker.

The storefront, the warehouse and the payment provider are played by this test; the customer's
mailbox is a real SMTP server. order-state, fulfillment, returns and the notifier run as real
processes, exactly as `make run` runs them. The story: an order of two lines is paid by card;
the teapot is backordered and its ETA slips, so the mugs ship first; both parcels arrive; the
customer returns one mug; the warehouse inspects it; the provider refunds it. Then we read what
each processor concluded, and what the customer was told, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from orderops_tools.books import compare as compare_books
from orderops_tools.provider import RefundDesk
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import Mailbox, ServiceProcess, free_port, poll_json, producer, text_of

from orderops.model.catalog import (
    PAYMENTS_EVENTS,
    STOREFRONT_ORDERS,
    STOREFRONT_RETURNS,
    WAREHOUSE_FULFILLMENT,
    WAREHOUSE_RETURNS,
)

pytestmark = pytest.mark.broker
PLACED = datetime(2026, 11, 2, 9, tzinfo=UTC)
ETA, SLIPPED = datetime(2026, 11, 12, tzinfo=UTC), datetime(2026, 11, 16, tzinfo=UTC)


async def test_an_order_from_checkout_to_refund(catalog_topics, run_id, tmp_path):
    bootstrap = catalog_topics
    published = subprocess.run([sys.executable, "-m", "orderops.ops.cli", "policies", "publish"], capture_output=True,
                               text=True, env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap})
    assert published.returncode == 0, published.stderr  # as `make run` does
    mailbox = Mailbox().start()
    common = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": f"e2e{run_id}", "ORDEROPS_SMTP_PORT": str(mailbox.port),
              "ORDEROPS_NOTIFIER_CHANNELS": "email", "ORDEROPS_SESSION_TIMEOUT_SECONDS": "6",
              "ORDEROPS_NOTIFIER_SETTLE_SECONDS": "5"}  # a loaded machine's processors may lag each other
    processes = {name: ServiceProcess(["-m", name], {**common, "WEB_PORT": str(free_port()),
                                                     "ORDEROPS_DATA_DIR": str(tmp_path / name)},
                                      tmp_path / f"{name}.log", 0)
                 for name in ("order_state", "fulfillment", "returns", "notifier")}
    for process in processes.values():
        process.web_port = int(process.env["WEB_PORT"])
        process.start()
    order_id = f"e2e-{run_id}"
    # The payment provider refunds what returns commands, a day after the command.
    provider = RefundDesk(bootstrap, order_ids={order_id}, delay=timedelta(days=1))
    provider.start()
    try:
        await asyncio.gather(*(p.wait_ready() for p in processes.values()))
        kafka = producer(bootstrap)

        # -- the story, as the upstream systems would write it -------------------------------------
        story = Story(order_id, start=PLACED)
        story.on(STOREFRONT_ORDERS).OrderPlaced(
            customer=customer(email="ada@example.com"), lines=[line("l1", "Blue mug", 2, "12.50"),
                                                               line("l2", "Teapot", 1, "40.00")],
            instruments=[card("card-1", "65.00")], shipping_address=address(), total=money("65.00"))
        story.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(
            instrument_id="card-1", amount=money("65.00"), authorization_id="auth-1")
        warehouse = story.after(hours=3).on(WAREHOUSE_FULFILLMENT)
        warehouse.LineBackordered(line_id="l2", quantity=1, eta=ETA)
        warehouse.ShipmentCreated(shipment_id="P1", lines=[{"line_id": "l1", "quantity": 2}])
        story.on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money("65.00"), capture_id="cap-1")
        story.after(hours=2).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(
            shipment_id="P1", carrier="DHL", tracking_number="JD0001", tracking_url="https://track.example/JD0001")
        story.after(days=2).on(WAREHOUSE_FULFILLMENT).ShipmentDelivered(shipment_id="P1")
        story.after(days=1).on(WAREHOUSE_FULFILLMENT).BackorderEtaChanged(line_id="l2", eta=SLIPPED,
                                                                        reason="supplier delay")
        story.after(days=9).on(WAREHOUSE_FULFILLMENT).ShipmentCreated(shipment_id="P2",
                                                                    lines=[{"line_id": "l2", "quantity": 1}])
        story.after(hours=1).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(
            shipment_id="P2", carrier="DHL", tracking_number="JD0002", tracking_url="https://track.example/JD0002")
        story.after(days=2).on(WAREHOUSE_FULFILLMENT).ShipmentDelivered(shipment_id="P2")
        story.after(days=3).on(STOREFRONT_RETURNS).ReturnRequested(
            return_id="r-1", customer_id="cust-1", lines=[{"line_id": "l1", "quantity": 1, "reason": "NO_LONGER_NEEDED"}])
        story.after(days=3).on(WAREHOUSE_RETURNS).ReturnReceived(return_id="r-1", lines=[{"line_id": "l1", "quantity": 1}])
        story.after(hours=4).on(WAREHOUSE_RETURNS).InspectionCompleted(return_id="r-1", results=[
            {"line_id": "l1", "quantity": 1, "outcome": "AS_EXPECTED", "disposition": "RESTOCK"}])
        story.publish(kafka)

        # -- what each processor concluded ---------------------------------------------------------
        returns_view = await poll_json(processes["returns"], f"/orders/{order_id}/returns",
                                       lambda v: v["returns"] and v["returns"][0]["state"] == "refunded", timeout=90)
        [refund] = returns_view["refunds"]
        assert (refund["amount"], refund["method"]) == ("11.25", "ORIGINAL_INSTRUMENT")  # 12.50 less 10 % restocking

        order_view = await poll_json(processes["order_state"], f"/orders/{order_id}",
                                     lambda v: v["payments"][0]["state"] == "partially_refunded"
                                     and v["order"]["state"] == "completed")
        assert [h["to"] for h in order_view["history"] if h["machine"] == "order"] == [
            "pending_payment", "confirmed", "in_fulfillment", "completed"]
        # The books agree: order-state's, returns' and the provider's captured and refunded amounts.
        books = compare_books(bootstrap, f"e2e{run_id}", {order_id})
        assert (books.orders, books.refunds, books.disagreements) == (1, 1, []), books

        fulfillment_view = await poll_json(processes["fulfillment"], f"/orders/{order_id}/fulfillment",
                                           lambda v: v["status"] == "delivered")
        assert [(s["shipment_id"], s["state"]) for s in fulfillment_view["shipments"]] == [
            ("P1", "delivered"), ("P2", "delivered")]

        # -- what the customer was told, in order --------------------------------------------------
        await poll_json(processes["notifier"], f"/orders/{order_id}/notifications",
                        lambda v: sum(d["state"] == "sent" for d in v["deliveries"]) >= 11, timeout=60)
        subjects = [m["Subject"] for m in mailbox.messages if order_id in text_of(m)
                    or order_id in m["Subject"]]
        told_by_fulfillment = [
            f"Part of your order {order_id} is backordered",
            f"A parcel of your order {order_id} is on the way",
            f"Delivered: a parcel of your order {order_id}",
            f"New date for backordered items of order {order_id}",
            f"A parcel of your order {order_id} is on the way",
            f"Delivered: a parcel of your order {order_id}",
        ]
        told_by_returns = ["Your return r-1 is approved", "We received your return r-1",
                           f"Your refund for order {order_id} is on its way", f"Refund completed for order {order_id}"]
        # In the order things happened, whichever processor asked and whenever its request came:
        # the story is published at once, and fulfillment's backorder request may reach the
        # notifier before order-state's confirmation (ORDEROPS_NOTIFIER_SETTLE_SECONDS holds each).
        assert subjects == [f"Your order {order_id} is confirmed", *told_by_fulfillment, *told_by_returns]
        mine = [m for m in mailbox.messages if order_id in m["Subject"]]
        first_parcel = text_of(next(m for m in mine if m["Subject"].startswith("A parcel")))
        assert "Parcel P1 (DHL JD0001) is on its way with 2 of your 3 items: 2 × Blue mug." in first_parcel
        assert "Still to come — Teapot: 1 backordered until Thu 12 Nov." in first_parcel
        refund_mail = text_of(next(m for m in mine if m["Subject"].startswith("Refund completed")))
        assert "11.25 EUR back to your original payment method" in refund_mail
    finally:
        provider.stop()
        for process in processes.values():
            process.stop(signal.SIGTERM)
        mailbox.stop()
