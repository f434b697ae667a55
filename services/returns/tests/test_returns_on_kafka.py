"""returns as a real process on a real broker, with the test as payment provider: a return of
one line of a two-line order paid by gift card + card; a damaged item refunded at the policy's
share; a card refund that fails, is retried, then falls back to store credit; a duplicate
refund-succeeded event; and a SIGKILL with local state wiped right after refunds were commanded
(one refund command per idempotency key, not two)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from orderops_tools.provider import RefundDesk
from orderops_tools.scenario import Story, address, customer, instrument, line, money
from orderops_tools.testing import ServiceProcess, decode_all, free_port, poll_json, producer, read_topic

from orderops.model.catalog import (
    FULFILLMENT_STATUS,
    PAYMENTS_EVENTS,
    PAYMENTS_REFUND_REQUESTS,
    RETURNS_POLICIES,
    RETURNS_STATE_CHANGES,
    STOREFRONT_ORDERS,
    STOREFRONT_RETURNS,
    WAREHOUSE_RETURNS,
)
from orderops.model.envelope import Envelope

pytestmark = pytest.mark.broker
PLACED = datetime(2026, 11, 2, 9, tzinfo=UTC)


def refund_desk(bootstrap: str, order_id: str) -> RefundDesk:
    """Answers refund commands of one order: the card's original refund fails three times, the
    rest succeed; the first gift-card success is delivered twice (a redelivery)."""
    gift_card_answered = []

    def fails(command: Envelope) -> bool:
        key = command.payload["refund_id"]
        return command.payload["instrument_id"] == "card-1" and command.payload["method"] == "ORIGINAL_INSTRUMENT" \
            and "store-credit" not in key and key.split(":return:")[1].startswith("r-1")

    def answer_twice(command: Envelope) -> bool:
        if command.payload["instrument_id"] != "gift-1" or gift_card_answered:
            return False
        gift_card_answered.append(command)
        return True

    return RefundDesk(bootstrap, fails=fails, answer_twice=answer_twice, order_ids={order_id}, delay=timedelta(hours=3))


async def test_return_refund_story(catalog_topics, run_id, tmp_path):
    bootstrap = catalog_topics
    publish = subprocess.run([sys.executable, "-m", "orderops.ops.cli", "policies", "publish"], capture_output=True,
                             text=True, env={**__import__("os").environ, "KAFKA_BOOTSTRAP": bootstrap})
    assert publish.returncode == 0, publish.stderr
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": f"t{run_id}", "ORDEROPS_DATA_DIR": str(tmp_path / "state"),
           "WEB_PORT": str(free_port()), "ORDEROPS_SESSION_TIMEOUT_SECONDS": "6"}
    process = ServiceProcess(["-m", "returns"], env, tmp_path / "returns.log", int(env["WEB_PORT"])).start()
    order = f"ret-{run_id}"
    provider = refund_desk(bootstrap, order)
    kafka = producer(bootstrap)
    try:
        await process.wait_ready()
        provider.start()
        story = Story(order, start=PLACED)
        story.on(STOREFRONT_ORDERS).OrderPlaced(
            customer=customer(), lines=[line("l1", "Teapot", 1, "40.00"), line("l2", "Mug", 2, "10.00")],
            instruments=[instrument("gift-1", "GIFT_CARD", "20.00", "giftcard"),
                         instrument("card-1", "CARD", "40.00", "visa")],
            shipping_address=address(), total=money("60.00"))
        story.after(hours=1).on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="gift-1", amount=money("20.00"),
                                                                capture_id="c1")
        story.on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money("40.00"), capture_id="c2")
        delivered = story.after(days=3).clock
        story.on(FULFILLMENT_STATUS).FulfillmentStatusChanged(status="delivered", backordered=False, lines=[
            {"line_id": x, "ordered": q, "unfulfilled": 0, "backordered": 0, "in_shipment": 0, "shipped": 0,
             "delivered": q, "cancelled": 0, "returned": 0, "shipment_ids": ["P1"], "backorder_eta": None,
             "delivered_at": delivered, "waiting_for": ""} for x, q in (("l1", 1), ("l2", 2))])
        story.after(days=4).on(STOREFRONT_RETURNS).ReturnRequested(
            return_id="r-1", customer_id="cust-1", lines=[{"line_id": "l1", "quantity": 1, "reason": "DAMAGED"}])
        story.after(days=2).on(WAREHOUSE_RETURNS).ReturnReceived(return_id="r-1", lines=[{"line_id": "l1", "quantity": 1}])
        story.after(hours=5).on(WAREHOUSE_RETURNS).InspectionCompleted(return_id="r-1", results=[
            {"line_id": "l1", "quantity": 1, "outcome": "AS_EXPECTED", "disposition": "RESTOCK"}])
        story.publish(kafka)

        # Kill it as soon as the first refunds are commanded, before offsets are committed; wipe its state.
        read_topic(bootstrap, PAYMENTS_REFUND_REQUESTS.name, keep=lambda m: m.key() == order.encode(),
                   until=lambda got: len(got) >= 1)
        process.stop(signal.SIGKILL)
        shutil.rmtree(tmp_path / "state")
        process.start()
        await process.wait_ready()

        second = Story(order, start=story.clock)
        second.after(days=1).on(STOREFRONT_RETURNS).ReturnRequested(
            return_id="r-2", customer_id="cust-1", lines=[{"line_id": "l2", "quantity": 1, "reason": "NO_LONGER_NEEDED"}])
        second.after(days=2).on(WAREHOUSE_RETURNS).ReturnReceived(return_id="r-2", lines=[{"line_id": "l2", "quantity": 1}])
        second.after(hours=2).on(WAREHOUSE_RETURNS).InspectionCompleted(return_id="r-2", results=[
            {"line_id": "l2", "quantity": 1, "outcome": "DAMAGED", "disposition": "DISPOSE"}])
        for event in second.events:  # distinct ids from the first story's
            event.envelope = Envelope(f"{order}:second:{event.envelope.event_id}", *list(vars(event.envelope).values())[1:])
        second.publish(kafka)

        view = await poll_json(process, f"/orders/{order}/returns",
                               lambda v: [r["state"] for r in v["returns"]] == ["refunded", "refunded"], timeout=90)
        by_id = {r["refund_id"].split(":return:")[1]: r for r in view["refunds"]}
        assert {k: (r["instrument_id"], r["method"], r["amount"], r["state"]) for k, r in by_id.items()} == {
            "r-1:0:gift-1": ("gift-1", "STORE_CREDIT", "13.33", "succeeded"),
            "r-1:0:card-1": ("card-1", "ORIGINAL_INSTRUMENT", "26.67", "fell_back"),
            "r-1:0:card-1:store-credit": ("card-1", "STORE_CREDIT", "26.67", "succeeded"),
            "r-2:0:gift-1": ("gift-1", "STORE_CREDIT", "1.67", "succeeded"),   # Mug 10.00 damaged: 50 % = 5.00
            "r-2:0:card-1": ("card-1", "ORIGINAL_INSTRUMENT", "3.33", "succeeded"),
        }
        assert len(by_id["r-1:0:card-1"]["attempts"]) == 3, "three attempts, then the fallback"
        assert {i["instrument_id"]: Decimal(i["refundable"]) for i in view["instruments"]} == {
            "gift-1": Decimal("5.00"), "card-1": Decimal("10.00")}
        r1 = view["returns"][0]
        assert r1["policy"] == "standard@1" and r1["decision"] == "AUTHORIZED"
        assert {t["rule"] for t in r1["trace"]} >= {"return_window", "final_sale", "restocking_fee"}

        # One command per idempotency key, even though the processor died right after sending some.
        keys = [c.payload["refund_id"] for c in provider.commands]
        distinct = {c.payload["refund_id"]: c.payload for c in provider.commands}
        assert len(distinct) == 7, sorted(distinct)
        for key in set(keys):
            assert len({repr(c.payload) for c in provider.commands if c.payload["refund_id"] == key}) == 1, \
                "a re-sent command is byte-for-byte the same command"

        def both_decided(got) -> bool:
            return len({d.payload["return_id"] for d in decode_all(got, RETURNS_STATE_CHANGES)
                        if d.short_type == "ReturnAuthorizationDecided"}) == 2

        decisions = decode_all(read_topic(bootstrap, RETURNS_STATE_CHANGES.name, keep=lambda m: m.key() == order.encode(),
                                          until=both_decided), RETURNS_STATE_CHANGES)
        decided = {d.payload["return_id"]: d.payload for d in decisions if d.short_type == "ReturnAuthorizationDecided"}
        assert {k: (v["decision"], v["policy"]) for k, v in decided.items()} == {
            "r-1": ("AUTHORIZED", "standard@1"), "r-2": ("AUTHORIZED", "standard@1")}
        stale = [d for d in decisions if d.short_type == "EventRejected"]
        assert not stale or all(d.payload["reason_code"] in ("stale_refund_result", "duplicate_provider_outcome")
                                for d in stale)
        _, body = await process.get_json("/healthz")
        assert body["global_views"][RETURNS_POLICIES.name]["entries"] >= 2
    finally:
        provider.stop()
        process.stop(signal.SIGKILL)


async def test_an_agents_action_does_not_move_the_event_clock(catalog_topics, run_id, tmp_path):
    """In event-time mode an action on support.actions, however it is stamped, moves no processor's
    clock: the deadline of an event of another order parked after it is on the orders' own time."""
    from orderops.model.catalog import SUPPORT_ACTIONS

    bootstrap = catalog_topics
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": f"c{run_id}", "ORDEROPS_DATA_DIR": str(tmp_path / "c"),
           "WEB_PORT": str(free_port()), "ORDEROPS_CLOCK": "event", "ORDEROPS_PARK_DEADLINE_SECONDS": "86400"}
    process = ServiceProcess(["-m", "returns"], env, tmp_path / "clock.log", int(env["WEB_PORT"])).start()
    acted_on, waiting = f"act-{run_id}", f"wait-{run_id}"
    kafka = producer(bootstrap)
    try:
        await process.wait_ready()
        story = Story(acted_on, start=PLACED)
        story.on(STOREFRONT_ORDERS).OrderPlaced(
            customer=customer(), lines=[line("l1", "Teapot", 1, "40.00")],
            instruments=[instrument("card-1", "CARD", "40.00", "visa")], shipping_address=address(), total=money("40.00"))
        story.publish(kafka)
        far = Story(acted_on, start=datetime(2031, 1, 1, tzinfo=UTC))  # a tool writing the wall time of another day
        far.on(SUPPORT_ACTIONS).PolicyExceptionApproved(actor={"user_id": "lee", "role": "lead"}, return_id="r-9",
                                                        reason="goodwill")
        far.publish(kafka)
        await poll_json(process, f"/orders/{acted_on}/returns", lambda v: len(v["parked"]) == 1, timeout=60)

        early = Story(waiting, start=PLACED + timedelta(hours=1))
        early.on(STOREFRONT_RETURNS).ReturnRequested(
            return_id="r-1", customer_id="cust-1", lines=[{"line_id": "l1", "quantity": 1, "reason": "DAMAGED"}])
        early.publish(kafka)
        view = await poll_json(process, f"/orders/{waiting}/returns", lambda v: len(v["parked"]) == 1, timeout=60)
        deadline = datetime.fromisoformat(view["parked"][0]["deadline"])
        assert deadline <= PLACED + timedelta(hours=1, days=1), f"the deadline followed the action's clock: {deadline}"
    finally:
        process.stop(signal.SIGKILL)
