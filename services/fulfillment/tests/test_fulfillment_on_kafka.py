"""fulfillment as a real process on a real broker: a split order with a backorder whose ETA slips
(and a SIGKILL with local state wiped in the middle), a warehouse cancellation, a parcel that
fails delivery and returns to sender, and poison. The notification requests must read like what
the customer should be told."""

from __future__ import annotations

import shutil
import signal
from datetime import UTC, datetime

import pytest
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import ServiceProcess, decode_all, free_port, poll_json, producer, read_topic

from orderops.model.catalog import (
    DEAD_LETTER_TOPICS,
    FULFILLMENT,
    FULFILLMENT_STATUS,
    NOTIFICATIONS_REQUESTS,
    STOREFRONT_ORDERS,
    WAREHOUSE_FULFILLMENT,
)
from orderops.runtime import deadletter

pytestmark = pytest.mark.broker
ETA = datetime(2026, 12, 3, tzinfo=UTC)
SLIPPED = datetime(2026, 12, 8, tzinfo=UTC)


def placed(story: Story, *lines) -> None:
    total = str(sum(x["unit_price"]["amount"] * x["quantity"] for x in lines))  # what the order's lines add up to
    story.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(), lines=list(lines), instruments=[card("card-1", total)], shipping_address=address(),
        total=money(total))


def send(kafka, story: Story, start: int = 0) -> int:
    encoded = story.encoded()
    for topic, key, value in encoded[start:]:
        kafka.produce(topic.name, key=key, value=value)
    assert kafka.flush(30) == 0
    return len(encoded)


async def test_split_shipments_backorders_and_failures(catalog_topics, run_id, tmp_path):
    bootstrap = catalog_topics
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": f"t{run_id}", "ORDEROPS_DATA_DIR": str(tmp_path / "state"),
           "WEB_PORT": str(free_port()), "ORDEROPS_SESSION_TIMEOUT_SECONDS": "6"}
    process = ServiceProcess(["-m", "fulfillment"], env, tmp_path / "fulfillment.log", int(env["WEB_PORT"])).start()
    kafka = producer(bootstrap)
    split, cut, failed = f"f-{run_id}", f"g-{run_id}", f"h-{run_id}"
    warehouse = WAREHOUSE_FULFILLMENT
    try:
        await process.wait_ready()
        story = Story(split)
        placed(story, line("l1", "Blue mug", 2, "10.00"), line("l2", "Teapot", 1, "40.00"),
               line("l3", "Tea towel", 3, "10.00"))
        story.after(hours=2).on(warehouse).LineBackordered(line_id="l2", quantity=1, eta=ETA)
        story.after(hours=1).on(warehouse).ShipmentCreated(
            shipment_id="P1", lines=[{"line_id": "l1", "quantity": 2}, {"line_id": "l3", "quantity": 3}])
        story.after(hours=3).on(warehouse).ShipmentDispatched(
            shipment_id="P1", carrier="DHL", tracking_number="JD0001", tracking_url="https://track.example/JD0001")
        sent = send(kafka, story)
        await poll_json(process, f"/orders/{split}/fulfillment", lambda v: v["status"] == "partially_shipped")

        process.stop(signal.SIGKILL)
        shutil.rmtree(tmp_path / "state")
        process.start()
        await process.wait_ready()

        story.after(days=2).on(warehouse).BackorderEtaChanged(line_id="l2", eta=SLIPPED, reason="supplier delay")
        story.after(days=1).on(warehouse).ShipmentDelivered(shipment_id="P1")
        story.after(days=4).on(warehouse).ShipmentCreated(shipment_id="P2", lines=[{"line_id": "l2", "quantity": 1}])
        story.after(hours=2).on(warehouse).ShipmentDispatched(shipment_id="P2", carrier="DHL", tracking_number="JD0002")
        story.after(days=1).on(warehouse).ShipmentDelivered(shipment_id="P2")
        send(kafka, story, sent)

        other = Story(cut)
        placed(other, line("l1", "Kettle", 1, "40.00"), line("l3", "Tea towel", 3, "10.00"))
        other.after(hours=5).on(warehouse).LineCancelledByWarehouse(line_id="l3", quantity=2, reason="discontinued")
        send(kafka, other)
        lost = Story(failed)
        placed(lost, line("l1", "Vase", 1, "60.00"))
        lost.on(warehouse).ShipmentCreated(shipment_id="P9", lines=[{"line_id": "l1", "quantity": 1}])
        lost.on(warehouse).ShipmentDispatched(shipment_id="P9", carrier="UPS", tracking_number="1Z9")
        lost.after(days=2).on(warehouse).DeliveryFailed(shipment_id="P9", reason="address not found")
        lost.after(days=5).on(warehouse).ReturnedToSender(shipment_id="P9")
        send(kafka, lost)
        kafka.produce(warehouse.name, key=failed.encode(), value=b"\x00not an event")
        assert kafka.flush(30) == 0

        view = await poll_json(process, f"/orders/{split}/fulfillment", lambda v: v["status"] == "delivered")
        assert {x["line_id"]: (x["delivered"], x["shipments"]) for x in view["lines"]} == {
            "l1": (2, ["P1"]), "l2": (1, ["P2"]), "l3": (3, ["P1"])}

        notices = decode_all(read_topic(bootstrap, NOTIFICATIONS_REQUESTS.name, keep=lambda m: m.key() == split.encode(),
                                        until=lambda got: len(got) >= 6), NOTIFICATIONS_REQUESTS)
        told = {}
        for notice in notices:  # a crash may re-emit a request: same id, same content
            told.setdefault(notice.payload["notification_id"], notice.payload)
        said = [(p["type"], p["facts"]["summary"]) for p in told.values()]
        assert said == [
            ("line_backordered", "Teapot: 1 backordered until Thu 03 Dec."),
            ("shipment_dispatched", "Parcel P1 (DHL JD0001) is on its way with 5 of your 6 items: 2 × Blue mug, 3 × Tea towel. "
                                    "Still to come — Teapot: 1 backordered until Thu 03 Dec."),
            ("backorder_eta_changed", "Teapot is now expected Tue 08 Dec."),
            ("shipment_delivered", "Parcel P1 was delivered: 2 × Blue mug, 3 × Tea towel. "
                                   "Still to come — Teapot: 1 backordered until Tue 08 Dec."),
            ("shipment_dispatched", "Parcel P2 (DHL JD0002) is on its way with 1 of your 6 items: 1 × Teapot."),
            ("shipment_delivered", "Parcel P2 was delivered: 1 × Teapot."),
        ]
        dispatch = next(p for p in told.values() if p["type"] == "shipment_dispatched")
        assert dispatch["tracking_url"] == "https://track.example/JD0001" and dispatch["customer"]["email"]
        teapot = next(c for c in dispatch["lines"] if c["line_id"] == "l2")
        assert (teapot["quantity_backordered"], teapot["eta"], teapot["quantity_in_this_shipment"]) == (1, ETA, 0)

        # What returns needs to refund a warehouse cancellation: the cancelled quantity, per line.
        def cancellation_published(got) -> bool:
            return any(c.short_type == "FulfillmentStatusChanged" and c.payload["lines"][1]["cancelled"]
                       for c in decode_all(got, FULFILLMENT_STATUS))

        changes = decode_all(read_topic(bootstrap, FULFILLMENT_STATUS.name, keep=lambda m: m.key() == cut.encode(),
                                        until=cancellation_published), FULFILLMENT_STATUS)
        latest = [c for c in changes if c.short_type == "FulfillmentStatusChanged"][-1].payload
        assert {x["line_id"]: x["cancelled"] for x in latest["lines"]} == {"l1": 0, "l3": 2}

        view = await poll_json(process, f"/orders/{failed}/fulfillment",
                               lambda v: v["shipments"] and v["shipments"][0]["state"] == "returned_to_sender")
        assert view["lines"][0]["unfulfilled"] == 1 and view["status"] == "unfulfilled"

        [dead] = read_topic(bootstrap, DEAD_LETTER_TOPICS[FULFILLMENT].name, keep=lambda m: m.key() == failed.encode(),
                            until=lambda got: len(got) >= 1)
        assert dict(dead.headers())[deadletter.ORIGIN_TOPIC] == warehouse.name.encode()
        status, _ = await process.get_json("/orders/nobody/fulfillment")
        assert status == 404
    finally:
        process.stop(signal.SIGKILL)
