"""order-state as a real process on a real broker: a whole payment story, a duplicate, a capture
before its authorization, an over-refund, poison, and a SIGKILL with local state wiped mid-story."""

from __future__ import annotations

import shutil
import signal
from collections import defaultdict

import pytest
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import ServiceProcess, decode_all, free_port, poll_json, producer, read_topic

from orderops.codec.avro import Codec
from orderops.model.catalog import (
    DEAD_LETTER_TOPICS,
    FULFILLMENT_STATUS,
    NOTIFICATIONS_REQUESTS,
    ORDER_STATE,
    ORDERS_STATE_CHANGES,
    PAYMENTS_EVENTS,
    STOREFRONT_ORDERS,
)
from orderops.runtime import deadletter

pytestmark = pytest.mark.broker
CODEC = Codec()


def start(env: dict, tmp_path) -> ServiceProcess:
    return ServiceProcess(["-m", "order_state"], env, tmp_path / "order-state.log", int(env["WEB_PORT"])).start()


async def order_when(process: ServiceProcess, order_id: str, condition) -> dict:
    return await poll_json(process, f"/orders/{order_id}", condition)


def _snapshot(line_id: str, ordered: int, cancelled: int) -> dict:
    return {"line_id": line_id, "ordered": ordered, "unfulfilled": ordered - cancelled, "backordered": 0,
            "in_shipment": 0, "shipped": 0, "delivered": 0, "cancelled": cancelled, "returned": 0, "shipment_ids": [],
            "backorder_eta": None, "delivered_at": None, "waiting_for": ""}


def payment(view: dict) -> dict:
    return view["payments"][0]


def types(messages) -> set[str]:
    return {e.short_type for e in decoded(messages, ORDERS_STATE_CHANGES)}


decoded = decode_all


async def test_payment_story_with_faults(catalog_topics, run_id, tmp_path):
    bootstrap = catalog_topics
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": f"t{run_id}", "ORDEROPS_DATA_DIR": str(tmp_path / "state"),
           "WEB_PORT": str(free_port()), "ORDEROPS_TIMER_INTERVAL_SECONDS": "1",
           # A SIGKILLed worker holds its partitions until its session times out.
           "ORDEROPS_SESSION_TIMEOUT_SECONDS": "6"}
    kafka = producer(bootstrap)
    a, b = f"a-{run_id}", f"b-{run_id}"

    story = Story(a)
    story.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(), lines=[line("l1", "Blue mug", 2, "30.00"), line("l2", "Teapot", 1, "40.00")],
        instruments=[card("card-1", "100.00")], shipping_address=address(), total=money("100.00"))
    authorization = story.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(
        instrument_id="card-1", amount=money("100.00"), authorization_id="auth-1")
    story.after(hours=2).on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money("40.00"),
                                                            capture_id="cap-1")
    story.after(hours=20).on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money("60.00"),
                                                             capture_id="cap-2")
    first_half = story.encoded()

    process = start(env, tmp_path)
    try:
        await process.wait_ready()
        for topic, key, value in first_half:
            kafka.produce(topic.name, key=key, value=value)
        # B: the capture arrives before its authorization.
        early = Story(b)
        early.on(STOREFRONT_ORDERS).OrderPlaced(
            customer=customer(), lines=[line("l1", "Kettle", 1, "50.00")], instruments=[card("card-1", "50.00")],
            shipping_address=address(), total=money("50.00"))
        early.on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money("50.00"), capture_id="cap-b")
        early.publish(kafka)
        view = await order_when(process, a, lambda v: payment(v)["state"] == "captured")
        assert view["order"]["state"] == "confirmed" and payment(view)["captured"] == "100.0000"
        # Whichever topic was read first, once the order is placed the capture waits for its authorization.
        await order_when(process, b, lambda v: v["parked"] and v["parked"][0]["waiting_for"] == "the authorization")
        # It really waits: its audit record is written at the order's timer tick a second later.
        read_topic(bootstrap, ORDERS_STATE_CHANGES.name, keep=lambda m: m.key() == b.encode(),
                   until=lambda got: "EventParked" in types(got))

        # Mid-story crash: SIGKILL, local RocksDB deleted; the restart recovers from the changelog.
        process.stop(signal.SIGKILL)
        shutil.rmtree(tmp_path / "state")
        process = start(env, tmp_path)
        await process.wait_ready()
        view = await order_when(process, a, lambda v: payment(v)["state"] == "captured")
        assert [h["to"] for h in view["history"] if h["machine"] == "order"] == ["pending_payment", "confirmed"]

        story.after(hours=1).on(STOREFRONT_ORDERS).LineCancelled(line_id="l2", quantity=1, reason="out of budget")
        for topic, key, value in story.encoded()[len(first_half):]:
            kafka.produce(topic.name, key=key, value=value)
        # The request is read before fulfillment's snapshot of it, as the snapshot's cause header makes
        # order-state wait for it live (a snapshot made here by hand carries none).
        await order_when(process, a, lambda v: any("cancellation of 1 × Teapot requested" in h["reason"]
                                                   for h in v["history"]))
        first_half = story.encoded()
        # What fulfillment (not running here) would make of it: the teapot had not left, so it is cancelled.
        story.after(minutes=1).on(FULFILLMENT_STATUS).FulfillmentStatusChanged(status="unfulfilled", backordered=False,
                                                                              lines=[_snapshot("l1", 2, 0),
                                                                                     _snapshot("l2", 1, 1)])
        story.after(hours=1).on(PAYMENTS_EVENTS).RefundSucceeded(refund_id="r-1", instrument_id="card-1",
                                                                amount=money("40.00"))
        story.after(hours=1).on(PAYMENTS_EVENTS).RefundSucceeded(refund_id="r-2", instrument_id="card-1",
                                                                amount=money("100.00"))
        for topic, key, value in story.encoded()[len(first_half):]:
            kafka.produce(topic.name, key=key, value=value)
        # A redelivered authorization (same event id, same bytes) and a message that is not an event.
        kafka.produce(PAYMENTS_EVENTS.name, key=a.encode(), value=CODEC.encode(
            PAYMENTS_EVENTS.value_schema, authorization.to_record()))
        kafka.produce(PAYMENTS_EVENTS.name, key=a.encode(), value=b"\xc3\x01garbage")
        # An event of A keyed by another order: it would meet that order's partition, not A's state.
        stray = story.after(hours=1).on(PAYMENTS_EVENTS).RefundSucceeded(refund_id="r-stray", instrument_id="card-1",
                                                                         amount=money("1.00"))
        stray_bytes = CODEC.encode(PAYMENTS_EVENTS.value_schema, stray.to_record())
        kafka.produce(PAYMENTS_EVENTS.name, key=b"not-" + a.encode(), value=stray_bytes)
        late = Story(b, start=early.clock)
        late.on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("50.00"), authorization_id="auth-b")
        late.publish(kafka)

        view = await order_when(process, a, lambda v: payment(v)["refunded"] == "40.0000" and
                                v["lines"][1]["cancelled"] == 1)
        assert payment(view)["state"] == "partially_refunded" and payment(view)["captured"] == "100.0000"
        assert view["lines"][1]["cancelled"] == 1
        view_b = await order_when(process, b, lambda v: payment(v)["state"] == "captured" and not v["parked"])
        assert view_b["order"]["state"] == "confirmed"

        # The audit trail on orders.state-changes.
        changes = decoded(read_topic(bootstrap, ORDERS_STATE_CHANGES.name, keep=lambda m: m.key() == a.encode(),
                                     until=lambda got: "EventRejected" in types(got)), ORDERS_STATE_CHANGES)
        by_id = defaultdict(list)
        for change in changes:
            by_id[change.event_id].append(change)
        assert all(len({repr(c) for c in same}) == 1 for same in by_id.values()), "a re-emitted record is identical"
        unique = [same[0] for same in by_id.values()]
        [rejected] = [c for c in unique if c.short_type == "EventRejected"]
        assert rejected.payload["reason_code"] == "refund_exceeds_captured"
        assert rejected.payload["cause_event_id"].endswith("RefundSucceeded") and "100" in rejected.payload["reason"]
        captures = [c for c in unique if c.short_type == "PaymentTransition"
                    and c.payload["transition"]["cause_type"].endswith("PaymentCaptured")]
        assert [c.payload["balance"]["captured"]["amount"] for c in captures] == [40, 100]
        authorizations = [c for c in unique if c.short_type == "PaymentTransition"
                          and c.payload["transition"]["to_state"] == "authorized"]
        assert len(authorizations) == 1, "the redelivered authorization changed nothing"

        parked_b = decoded(read_topic(bootstrap, ORDERS_STATE_CHANGES.name, keep=lambda m: m.key() == b.encode(),
                                      until=lambda got: len(got) >= 5), ORDERS_STATE_CHANGES)
        parked_capture = [c for c in parked_b if c.short_type == "EventParked"]
        assert parked_capture and parked_capture[0].payload["cause_type"].endswith("PaymentCaptured")
        to_states = [c.payload["transition"]["to_state"] for c in parked_b if c.short_type == "PaymentTransition"]
        assert to_states == ["authorized", "captured"]

        # One confirmation per order, whatever was redelivered.
        notices = decoded(read_topic(bootstrap, NOTIFICATIONS_REQUESTS.name, keep=lambda m: m.key() == a.encode(),
                                     until=lambda got: len(got) >= 1, timeout=30), NOTIFICATIONS_REQUESTS)
        assert {n.payload["notification_id"] for n in notices} == {f"{authorization.event_id}:notify:order_confirmed"}

        # The poison went to order-state.dlq with where it came from; processing went on.
        [dead] = read_topic(bootstrap, DEAD_LETTER_TOPICS[ORDER_STATE].name, keep=lambda m: m.key() == a.encode(),
                            until=lambda got: len(got) >= 1)
        headers = dict(dead.headers())
        assert dead.value() == b"\xc3\x01garbage"
        assert headers[deadletter.ORIGIN_TOPIC] == PAYMENTS_EVENTS.name.encode()
        assert headers[deadletter.ERROR_CLASS] == b"not-single-object-encoded"
        [misrouted] = read_topic(bootstrap, DEAD_LETTER_TOPICS[ORDER_STATE].name,
                                 keep=lambda m: m.key() == b"not-" + a.encode(), until=lambda got: len(got) >= 1)
        assert misrouted.value() == stray_bytes
        assert dict(misrouted.headers())[deadletter.ERROR_CLASS] == b"key-is-not-the-order-id"
        view = await order_when(process, a, lambda v: True)
        assert payment(view)["refunded"] == "40.0000", "the misrouted refund was not applied to A"

        status, body = await process.get_json("/orders/never-placed")
        assert status == 404 and "unknown" in body["error"]
        metrics = await _text(process, "/metrics")
        assert 'orderops_events_rejected_total{machine="payment",processor="order-state",' \
               'reason_code="refund_exceeds_captured"}' in metrics
    finally:
        process.stop(signal.SIGKILL)


async def _text(process: ServiceProcess, path: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{process.url}{path}") as resp:
        return await resp.text()


async def test_an_order_written_with_its_authorization_in_one_flush_parks_nothing(catalog_topics, run_id, tmp_path):
    """OrderPlaced and PaymentAuthorized produced together are appended in the same millisecond on
    two topics: the order is met first, so nothing is recorded as waiting for it."""
    bootstrap = catalog_topics
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": f"f{run_id}", "ORDEROPS_DATA_DIR": str(tmp_path / "f"),
           "WEB_PORT": str(free_port())}
    orders = [f"flush-{run_id}-{n}" for n in range(60)]
    kafka = producer(bootstrap)
    for order_id in orders:
        story = Story(order_id)
        story.on(STOREFRONT_ORDERS).OrderPlaced(
            customer=customer(), lines=[line("l1", "Blue mug", 1, "30.00")], instruments=[card("card-1", "30.00")],
            shipping_address=address(), total=money("30.00"))
        story.on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("30.00"),
                                                    authorization_id="auth-1")
        for topic, key, value in story.encoded():
            kafka.produce(topic.name, key=key, value=value)
    assert kafka.flush(30) == 0
    process = start(env, tmp_path)
    try:
        await process.wait_ready()
        wanted = set(orders)

        def all_confirmed(got) -> bool:
            return {e.order_id for e in decoded(got, ORDERS_STATE_CHANGES) if e.short_type == "StateTransition"
                    and e.payload["to_state"] == "confirmed"} >= wanted

        written = decoded(read_topic(bootstrap, ORDERS_STATE_CHANGES.name, keep=lambda m: m.key().decode() in wanted,
                                     until=all_confirmed, timeout=120), ORDERS_STATE_CHANGES)
        assert {e.order_id for e in written} == wanted, "every order compared"
        parked = [e for e in written if e.short_type == "EventParked"]
        assert parked == [], f"{len(parked)} of {len(orders)} orders recorded a park for an order placed with them"
    finally:
        process.stop(signal.SIGKILL)
