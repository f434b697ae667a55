"""Customer data goes no further than it must. An order's story with planted data — a card number
as the storefront's instrument id, in a product name, in a contact's reason and in a return's
comment; an e-mail address, a phone number and a street address — flows through every processor
on a broker of its own. Then every message of every topic downstream of the upstream ones (outputs,
changelogs, timers, dead letters: key, value and headers) and every processor's log are searched:

- no card number anywhere (only its last four digits);
- the e-mail address and phone number only where a consumer needs them (ALLOWED below);
- the street address nowhere downstream (no processor needs it: the warehouse ships).
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import Mailbox, PrivateBroker, environment, orderops_cli, poll_json, producer, start_processors

from orderops.model import catalog
from orderops.model.catalog import (
    PAYMENTS_EVENTS,
    STOREFRONT_ORDERS,
    STOREFRONT_RETURNS,
    SUPPORT_CONTACTS,
    WAREHOUSE_FULFILLMENT,
)
from orderops.ops.security import client_config
from orderops.replay.topicreader import read

pytestmark = pytest.mark.broker
PAN = "4111111111111111"
PAN_FORMS = (PAN, "4111 1111 1111 1111", "4111-1111-1111-1111")
EMAIL, PHONE, STREET = "planted.customer@example.net", "+44 20 7946 0958", "17 Secret Garden Lane"
# Who needs what: order-state, fulfillment and returns address the notifications they request (the
# request names its recipient), so their state keeps the customer's contact; the notifier e-mails
# the customer (told with each request, kept in its ledger); the timeline shows support agents whom
# they speak to and searches orders by e-mail (its view and state), and reads the requests in the
# state machines' digests. No other topic.
CONTACT = {catalog.NOTIFICATIONS_REQUESTS.name, catalog.TIMELINE_DIGESTS.name, catalog.SUPPORT_ORDER_VIEWS.name,
           *(f"{p}-" for p in catalog.PROCESSORS)}  # a processor's changelogs: its state
ALLOWED = {EMAIL: CONTACT, PHONE: CONTACT}



def story(order_id: str) -> Story:
    s = Story(order_id, start=datetime(2026, 11, 2, 9, tzinfo=UTC))
    s.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(email=EMAIL, phone=PHONE),
        lines=[line("l1", f"Mug (card {PAN_FORMS[1]} on file)", 2, "12.50")],
        instruments=[card(PAN, "25.00")],
        shipping_address={**address(), "line1": STREET}, total=money("25.00"))
    s.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id=PAN, amount=money("25.00"),
                                                              authorization_id="auth-1")
    s.after(hours=2).on(WAREHOUSE_FULFILLMENT).ShipmentCreated(shipment_id="P1", lines=[{"line_id": "l1", "quantity": 2}])
    s.on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id=PAN, amount=money("25.00"), capture_id="cap-1")
    s.after(hours=2).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(
        shipment_id="P1", carrier="DHL", tracking_number="JD0001", tracking_url="https://track.example/JD0001")
    s.after(days=2).on(WAREHOUSE_FULFILLMENT).ShipmentDelivered(shipment_id="P1")
    s.after(hours=5).on(SUPPORT_CONTACTS).ContactOpened(contact_id="c-1", customer_id="cust-1", channel="EMAIL",
                                                        reason=f"I was charged twice on {PAN_FORMS[2]}")
    s.after(days=3).on(STOREFRONT_RETURNS).ReturnRequested(
        return_id="r-1", customer_id="cust-1", lines=[{"line_id": "l1", "quantity": 1, "reason": "DAMAGED",
                                                       "comment": f"refund to {PAN} please"}])
    return s


def downstream_topics(bootstrap: str) -> list[catalog.Topic]:
    """Every topic on the broker but the upstream systems' (and Kafka's own), as it is there."""
    upstream = {t.name for t in catalog.ALL_TOPICS if set(t.writers) & set(catalog.UPSTREAM_SYSTEMS)}
    found = AdminClient(client_config(bootstrap)).list_topics(timeout=30).topics
    return [catalog.Topic(name, None, "", (), (), "", partitions_override=len(meta.partitions))
            for name, meta in sorted(found.items()) if name not in upstream and not name.startswith("__")]


def where(haystacks: dict[str, bytes], needle: str) -> set[str]:
    return {name for name, data in haystacks.items() if needle.encode() in data}


async def test_planted_customer_data_spreads_only_where_needed(tmp_path, support_users):
    broker = PrivateBroker(tmp_path / "broker")
    bootstrap = broker.start()
    mailbox = Mailbox().start()
    processes = {}
    try:
        with environment(broker.client_env()):
            assert orderops_cli(bootstrap, "policies", "publish", env=broker.client_env()).returncode == 0
            processes = start_processors(bootstrap, tmp_path, {"ORDEROPS_SMTP_PORT": str(mailbox.port),
                                                               "ORDEROPS_NOTIFIER_CHANNELS": "email"}, broker=broker)
            await asyncio.gather(*(p.wait_ready(timeout=180) for p in processes.values()))
            order_id = "pii-1"
            story(order_id).publish(producer(bootstrap))

            view = await poll_json(processes["timeline"], f"/orders/{order_id}",
                                   lambda v: v["contacts"] and v["returns"] and v["shipments"], timeout=120)
            assert view["customer"]["email"] == EMAIL, "support agents see whom they speak to"
            assert "····1111" in str(view["payments"]) and PAN not in str(view)
            await poll_json(processes["returns"], f"/orders/{order_id}/returns", lambda v: v["returns"], timeout=60)
            await poll_json(processes["notifier"], f"/orders/{order_id}/notifications",
                            lambda v: sum(d["state"] == "sent" for d in v["deliveries"]) >= 3, timeout=60)
            await asyncio.sleep(3)  # changelogs and views written after the last reply

            topics: dict[str, bytes] = {}
            for topic in downstream_topics(bootstrap):
                chunks = []
                for m in read(bootstrap, topic):
                    chunks += [m.key() or b"", m.value() or b"", *(v or b"" for _, v in (m.headers() or []))]
                topics[topic.name] = b"\n".join(chunks)
        logs = {f"{name} log": p.log_path.read_bytes() for name, p in processes.items()}
        assert topics[catalog.SUPPORT_TIMELINE.name], "the downstream topics were read"

        for pan in PAN_FORMS:
            assert not where(topics, pan) and not where(logs, pan), f"a card number escaped: {pan}"
        for value, allowed in ALLOWED.items():
            leaked = {t for t in where(topics, value) if not any(t == a or t.startswith(a) for a in allowed if
                                                                    a.endswith("-")) and t not in allowed}
            assert not leaked, f"{value} appears where no consumer needs it: {sorted(leaked)}"
            assert not where(logs, value), f"{value} is in a log: {sorted(where(logs, value))}"
        assert not where(topics, STREET) and not where(logs, STREET), \
            f"the street address went downstream: {sorted(where(topics, STREET) | where(logs, STREET))}"
    finally:
        for process in processes.values():
            process.stop(signal.SIGKILL)
        mailbox.stop()
        broker.stop()
