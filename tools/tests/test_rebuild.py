"""`orderops replay rebuild` and `what-if` against real processors on the real broker: a clean run
rebuilds identical; a record the processor did not write is reported; a draft policy with a shorter
window turns an authorized return into a rejected one, and nothing is published."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime

import pytest
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import ServiceProcess, free_port, orderops_cli, poll_json, producer, read_topic

from orderops.codec.avro import Codec
from orderops.model.catalog import (
    ORDERS_STATE_CHANGES,
    PAYMENTS_EVENTS,
    RETURNS_POLICIES,
    STOREFRONT_ORDERS,
    STOREFRONT_RETURNS,
    WAREHOUSE_FULFILLMENT,
)
from orderops.ops.paths import source_root
from orderops.runtime.globalview import read_all

pytestmark = pytest.mark.broker
PLACED = datetime(2026, 11, 2, 9, tzinfo=UTC)



def story(order_id: str) -> Story:
    """Placed, paid, shipped, delivered; a mug returned ten days after delivery."""
    s = Story(order_id, start=PLACED)
    s.on(STOREFRONT_ORDERS).OrderPlaced(customer=customer(), lines=[line("l1", "Blue mug", 2, "12.50")],
                                        instruments=[card("card-1", "25.00")], shipping_address=address(),
                                        total=money("25.00"))
    s.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("25.00"),
                                                             authorization_id="a-1")
    s.after(hours=2).on(WAREHOUSE_FULFILLMENT).ShipmentCreated(shipment_id="P1", lines=[{"line_id": "l1", "quantity": 2}])
    s.on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money("25.00"), capture_id="c-1")
    s.after(hours=1).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(shipment_id="P1", carrier="DHL", tracking_number="J1",
                                                                  tracking_url="https://t/J1")
    s.after(days=2).on(WAREHOUSE_FULFILLMENT).ShipmentDelivered(shipment_id="P1")
    s.after(days=10).on(STOREFRONT_RETURNS).ReturnRequested(
        return_id="r-1", customer_id="cust-1", lines=[{"line_id": "l1", "quantity": 1, "reason": "NO_LONGER_NEEDED"}])
    return s


async def test_rebuild_is_identical_after_a_clean_run_and_reports_a_forged_record(catalog_topics, run_id, tmp_path):
    bootstrap, instance, order_id = catalog_topics, f"rb{run_id}", f"rebuild-{run_id}"
    assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
    processes = {}
    for name in ("order_state", "fulfillment", "returns"):
        port = free_port()
        processes[name] = ServiceProcess(["-m", name], {
            "KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": instance, "WEB_PORT": str(port),
            "ORDEROPS_DATA_DIR": str(tmp_path / "state"), "ORDEROPS_SESSION_TIMEOUT_SECONDS": "6"},
            tmp_path / f"{name}.log", port).start()
    try:
        await asyncio.gather(*(p.wait_ready() for p in processes.values()))
        kafka = producer(bootstrap)
        for event in story(order_id).events:  # one by one, as the upstream systems would write them
            event_story = Story(order_id)
            event_story.events.append(event)
            event_story.publish(kafka)
            await asyncio.sleep(0.2)
        await poll_json(processes["returns"], f"/orders/{order_id}/returns",
                        lambda v: v["returns"] and v["returns"][0]["decision"] == "AUTHORIZED", timeout=120)
        await poll_json(processes["order_state"], f"/orders/{order_id}",
                        lambda v: v["order"]["state"] == "completed", timeout=90)
    finally:
        for process in processes.values():
            process.stop(signal.SIGTERM)  # a clean stop: the changelogs hold the final state

    for processor in ("order-state", "fulfillment", "returns"):
        rebuilt = orderops_cli(bootstrap, "replay", "rebuild", processor, "--instance", instance, "--order", order_id)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert "rebuild: identical: the state of 1 orders" in rebuilt.stdout, rebuilt.stdout

    # A second copy of a record on orders.state-changes that says something else: the rebuild names it
    # (a reader that dedupes by id keeps whichever copy it met first).
    [written] = [m for m in read_topic(bootstrap, ORDERS_STATE_CHANGES.name, keep=lambda m: m.key() == order_id.encode(),
                                       until=lambda got: len(got) >= 1)][:1]
    codec = Codec()
    record = codec.decode(written.value(), ORDERS_STATE_CHANGES.value_schema).record
    kind, payload = record["payload"]
    forged = {**record, "payload": (kind, {**payload, "reason": "forged"})}
    kafka.produce(ORDERS_STATE_CHANGES.name, key=order_id.encode(), value=codec.encode(ORDERS_STATE_CHANGES.value_schema,
                                                                                         forged))
    kafka.flush(10)
    found = orderops_cli(bootstrap, "replay", "rebuild", "order-state", "--instance", instance, "--order", order_id)
    assert found.returncode == 1, found.stdout + found.stderr
    assert (f"order {order_id}: output written twice, differently: {record['event_id']} on {ORDERS_STATE_CHANGES.name} "
            '(payload[1].reason: later copy "forged"') in found.stdout, found.stdout

    # A draft with a one-day window: the return asked ten days after delivery would be rejected.
    draft = tmp_path / "standard-v99.yaml"
    draft.write_text((source_root() / "policies" / "standard-v2.yaml").read_text()
                     .replace("version: 2", "version: 99").replace("  default: 21", "  default: 1"))
    before = set(read_all(bootstrap, RETURNS_POLICIES))
    what_if = orderops_cli(bootstrap, "replay", "what-if", str(draft), "--order", order_id, "--quiet")
    assert what_if.returncode == 0, what_if.stdout + what_if.stderr
    assert f"order {order_id} return r-1" in what_if.stdout and "AUTHORIZED -> REJECTED" in what_if.stdout
    assert "1 requests judged, 1 changed" in what_if.stdout
    assert set(read_all(bootstrap, RETURNS_POLICIES)) == before  # nothing published
