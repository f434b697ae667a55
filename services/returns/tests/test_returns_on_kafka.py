"""returns as a real process on a real broker, with the test as payment provider: a return of
one line of a two-line order paid by gift card + card; a damaged item refunded at the policy's
share; a card refund that fails, is retried, then falls back to store credit; every provider
answer delivered again under a new event id, and one also under its own; and a SIGKILL with local
state wiped right after refunds were commanded. The books equal the provider's, there is one
refund command per idempotency key, and one refund-completed message per return."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from orderops_tools.provider import RefundDesk
from orderops_tools.scenario import Story, address, customer, instrument, line, money
from orderops_tools.testing import ServiceProcess, decode_all, free_port, orderops_cli, poll_json, producer, read_topic

from orderops.codec.avro import Codec
from orderops.model.catalog import (
    FULFILLMENT_STATUS,
    NOTIFICATIONS_REQUESTS,
    PAYMENTS_EVENTS,
    PAYMENTS_REFUND_REQUESTS,
    RETURNS_POLICIES,
    RETURNS_STATE_CHANGES,
    STOREFRONT_ORDERS,
    STOREFRONT_RETURNS,
    WAREHOUSE_RETURNS,
)
from orderops.model.envelope import Envelope
from orderops.replay.topicreader import read

pytestmark = pytest.mark.broker
CODEC = Codec()
PLACED = datetime(2026, 11, 2, 9, tzinfo=UTC)
FAR = datetime(2099, 1, 1, tzinfo=UTC)


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

    return RefundDesk(bootstrap, fails=fails, answer_twice=answer_twice, again_as_new_event=lambda command: True,
                      order_ids={order_id}, delay=timedelta(hours=3))


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

        # Every answer came twice (one under a new event id): each repeat rejected, none counted.
        def all_repeats_seen(got) -> bool:
            codes = [d.payload["reason_code"] for d in decode_all(got, RETURNS_STATE_CHANGES)
                     if d.short_type == "EventRejected" and d.payload["cause_event_id"].endswith(":again")]
            return len(codes) >= 7

        read_topic(bootstrap, RETURNS_STATE_CHANGES.name, keep=lambda m: m.key() == order.encode(),
                   until=all_repeats_seen, timeout=90)
        # A refund made in the provider's console, delivered twice under two event ids: counted once.
        console = Story(order, start=second.clock + timedelta(days=1))
        for _ in range(2):
            console.on(PAYMENTS_EVENTS).RefundSucceeded(refund_id="console-7", instrument_id="card-1",
                                                        amount=money("2.00"))
        console.publish(kafka)
        provider.refunded["console-7"] = ("card-1", Decimal("2.00"))
        view = await poll_json(process, f"/orders/{order}/returns", lambda v: [
            Decimal(i["refundable"]) for i in v["instruments"] if i["instrument_id"] == "card-1"] != [Decimal(10)],
            timeout=60)
        await asyncio.sleep(2)  # the second copy, if it were counted, comes right after the first
        _, view = await process.get_json(f"/orders/{order}/returns")
        # The books equal the provider's: per instrument, what it refunded is what returns holds as
        # succeeded, and what is left to refund is the capture less that.
        paid: dict[str, Decimal] = defaultdict(Decimal)
        for instrument_id, amount in provider.refunded.values():
            paid[instrument_id] += amount
        booked: dict[str, Decimal] = defaultdict(Decimal, {"card-1": Decimal("2.00")})  # the console's
        for refund in view["refunds"]:
            if refund["state"] == "succeeded":
                booked[refund["instrument_id"]] += Decimal(refund["amount"])
        assert len(provider.refunded) == 5 and booked == paid, (booked, paid)
        captured = {"gift-1": Decimal("20.00"), "card-1": Decimal("40.00")}
        assert {i["instrument_id"]: Decimal(i["refundable"]) for i in view["instruments"]} == {
            k: captured[k] - paid[k] for k in captured}
        # The customer is told once per return that the refund completed.
        notices = [Envelope.from_record(CODEC.decode(m.value(), NOTIFICATIONS_REQUESTS.value_schema).record)
                   for m in read(bootstrap, NOTIFICATIONS_REQUESTS) if m.key() == order.encode()]
        completed = {(n.event_id, n.payload["facts"]["cause"]) for n in notices if n.payload["type"] == "refund_completed"}
        assert sorted(cause for _, cause in completed) == ["return r-1", "return r-2"], completed
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
        # Nothing was applied before the policies were read: no decision waited for one after the restart.
        assert not [d for d in decisions if d.short_type == "EventParked" and "polic" in d.payload["waiting_for"]]
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
        # A tool writing another clock's time: far beyond any event time on the suite's shared topics,
        # which this new group reads from their start (its event clock is their latest event time).
        far = Story(acted_on, start=FAR)
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
        assert deadline < FAR, f"the deadline followed the action's clock: {deadline}"
    finally:
        process.stop(signal.SIGKILL)


def start_returns(bootstrap: str, tmp_path, name: str, **settings: str) -> ServiceProcess:
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": name, "ORDEROPS_DATA_DIR": str(tmp_path / name),
           "WEB_PORT": str(free_port()), "ORDEROPS_CLOCK": "event", **settings}
    return ServiceProcess(["-m", "returns"], env, tmp_path / f"{name}.log", int(env["WEB_PORT"])).start()


def returned_whole(story: Story, authorized: str, captured: str, lamps: int = 1) -> Story:
    """An order of ``lamps`` lamps at 60.00 on a card, ``captured`` of it captured, delivered, one lamp
    returned and inspected as expected."""
    total = f"{60 * lamps}.00"
    story.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(), lines=[line("l1", "Lamp", lamps, "60.00")],
        instruments=[instrument("card-1", "CARD", total)], shipping_address=address(), total=money(total))
    story.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money(authorized),
                                                                 authorization_id="a-1")
    story.after(hours=1).on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money(captured),
                                                            capture_id="c-1")
    delivered = story.after(days=2).clock
    story.on(FULFILLMENT_STATUS).FulfillmentStatusChanged(status="delivered", backordered=False, lines=[
        {"line_id": "l1", "ordered": lamps, "unfulfilled": 0, "backordered": 0, "in_shipment": 0, "shipped": 0,
         "delivered": lamps, "cancelled": 0, "returned": 0, "shipment_ids": ["P1"], "backorder_eta": None,
         "delivered_at": delivered, "waiting_for": ""}])
    story.after(days=2).on(STOREFRONT_RETURNS).ReturnRequested(
        return_id="r-1", customer_id="cust-1", lines=[{"line_id": "l1", "quantity": 1, "reason": "DAMAGED"}])
    story.after(days=2).on(WAREHOUSE_RETURNS).ReturnReceived(return_id="r-1", lines=[{"line_id": "l1", "quantity": 1}])
    story.after(hours=1).on(WAREHOUSE_RETURNS).InspectionCompleted(return_id="r-1", results=[
        {"line_id": "l1", "quantity": 1, "outcome": "AS_EXPECTED", "disposition": "RESTOCK"}])
    return story


async def test_a_partly_captured_order_is_refunded_what_was_captured_once_the_rest_is_voided(catalog_topics, run_id,
                                                                                            tmp_path):
    bootstrap = catalog_topics
    assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
    order = f"part-{run_id}"
    process = start_returns(bootstrap, tmp_path, f"p{run_id}")
    kafka = producer(bootstrap)
    try:
        await process.wait_ready()
        story = returned_whole(Story(order, start=PLACED), authorized="60.00", captured="50.00")
        story.publish(kafka)
        view = await poll_json(process, f"/orders/{order}/returns", lambda v: bool(v["parked"]), timeout=60)
        assert [p["waiting_for"] for p in view["parked"]] == ["captures covering the refund"]
        story.after(hours=2).on(PAYMENTS_EVENTS).PaymentVoided(instrument_id="card-1", amount=money("10.00"))
        story.publish(kafka)  # the void; the rest again, each a duplicate by its event id
        view = await poll_json(process, f"/orders/{order}/returns", lambda v: bool(v["refunds"]), timeout=60)
        assert [(Decimal(r["amount"]), r["state"]) for r in view["refunds"]] == [(Decimal("50.00"), "requested")]
        notices = [Envelope.from_record(CODEC.decode(m.value(), NOTIFICATIONS_REQUESTS.value_schema).record)
                   for m in read_topic(bootstrap, NOTIFICATIONS_REQUESTS.name, keep=lambda m: m.key() == order.encode(),
                                       until=lambda got: any(b"refund_issued" in m.value() for m in got))]
        [issued] = [n for n in notices if n.payload["type"] == "refund_issued"]
        assert issued.payload["facts"]["not_refunded"].startswith("10.00 EUR of 60.00 EUR") and \
            "voided" in issued.payload["facts"]["not_refunded"]
        assert [a["amount"]["amount"] for a in issued.payload["amounts"]] == [Decimal("50.00")]
    finally:
        process.stop(signal.SIGKILL)


async def test_an_order_is_judged_by_the_policy_version_in_force_when_it_was_placed(catalog_topics, run_id, tmp_path):
    """A version published later, backdated before the order, does not judge it; an order placed once
    the backdated version is read is judged by it, and the decision says it was backdated."""
    bootstrap = catalog_topics
    policy_id = f"pin-{run_id}"
    source = (Path(__file__).resolve().parents[3] / "policies" / "standard-v1.yaml").read_text()
    first, second = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    first.write_text(source.replace("policy_id: standard", f"policy_id: {policy_id}"))
    second.write_text(source.replace("policy_id: standard", f"policy_id: {policy_id}").replace(
        "version: 1", "version: 2").replace("effective_from: 2026-01-01T00:00:00Z", "effective_from: 2026-10-01T00:00:00Z"))
    assert orderops_cli(bootstrap, "policies", "publish", str(first)).returncode == 0
    process = start_returns(bootstrap, tmp_path, f"v{run_id}", ORDEROPS_RETURN_POLICY=policy_id)
    kafka = producer(bootstrap)
    early, late = f"early-{run_id}", f"late-{run_id}"
    try:
        await process.wait_ready()
        story = Story(early, start=PLACED)
        story.on(STOREFRONT_ORDERS).OrderPlaced(
            customer=customer(), lines=[line("l1", "Lamp", 1, "60.00")],
            instruments=[instrument("card-1", "CARD", "60.00")], shipping_address=address(), total=money("60.00"))
        story.publish(kafka)
        await poll_json(process, f"/orders/{early}/returns", lambda v: True, timeout=60)
        published = orderops_cli(bootstrap, "policies", "publish", "--backdate", str(second))
        assert published.returncode == 0 and "(backdated)" in published.stdout, published.stderr
        await poll_json(process, "/healthz", lambda h: h["global_views"][RETURNS_POLICIES.name]["entries"] >= 2)
        returned_whole(Story(late, start=PLACED), authorized="60.00", captured="60.00").publish(kafka)
        # The early order's story: its OrderPlaced again (a duplicate by its event id), then the rest.
        returned_whole(Story(early, start=PLACED), authorized="60.00", captured="60.00").publish(kafka)

        def decisions(got) -> dict[str, dict]:
            return {d.order_id: d.payload for d in decode_all(got, RETURNS_STATE_CHANGES)
                    if d.short_type == "ReturnAuthorizationDecided"}

        decided = decisions(read_topic(bootstrap, RETURNS_STATE_CHANGES.name, keep=lambda m: m.key().decode() in
                                       (early, late), until=lambda got: len(decisions(got)) == 2))
        assert decided[early]["policy"] == f"{policy_id}@1" and decided[late]["policy"] == f"{policy_id}@2"
        assert decided[early]["trace"][0]["rule"] == "policy_version"
        assert "published backdated" in decided[late]["trace"][0]["detail"]
    finally:
        process.stop(signal.SIGKILL)


async def test_a_refund_that_failed_and_then_succeeded_late_completes_once_and_a_second_success_escalates(
        catalog_topics, run_id, tmp_path):
    bootstrap = catalog_topics
    assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
    order = f"late-{run_id}"
    process = start_returns(bootstrap, tmp_path, f"l{run_id}")
    first_attempt = lambda command: command.payload["refund_id"].endswith("#1")  # noqa: E731
    provider = RefundDesk(bootstrap, fails=first_attempt, fails_then_succeeds=first_attempt, order_ids={order},
                          delay=timedelta(hours=1))
    kafka = producer(bootstrap)
    try:
        await process.wait_ready()
        provider.start()
        returned_whole(Story(order, start=PLACED), authorized="120.00", captured="120.00", lamps=2).publish(kafka)
        view = await poll_json(process, f"/orders/{order}/returns",
                               lambda v: [r["state"] for r in v["refunds"]] == ["overpaid"], timeout=90)
        [refund] = view["refunds"]
        assert [key[-2:] for key in refund["attempts"]] == ["#1", "#2"] and view["returns"][0]["state"] == "refunded"
        paid = sum((amount for _, amount in provider.refunded.values()), Decimal(0))
        assert len(provider.refunded) == 2 and paid == Decimal("120.00")
        assert [Decimal(i["refundable"]) for i in view["instruments"]] == [Decimal("120.00") - paid]
        notices = [Envelope.from_record(CODEC.decode(m.value(), NOTIFICATIONS_REQUESTS.value_schema).record)
                   for m in read(bootstrap, NOTIFICATIONS_REQUESTS) if m.key() == order.encode()]
        assert [n.payload["type"] for n in notices].count("refund_completed") == 1
    finally:
        provider.stop()
        process.stop(signal.SIGKILL)
