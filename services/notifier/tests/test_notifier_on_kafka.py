"""The notifier as a real process, with a real SMTP server and a real HTTP receiver that verifies
signatures: a split-shipment message arrives once and reads right; a receiver that fails twice
gets three attempts and one delivery; a dead receiver ends in FAILED + DLQ while email flows; a
mail server down for longer than the retry budget ends in FAILED + DLQ and sends nothing late; a
SIGKILL after sending and before the ledger recorded it (a webhook, an email) is re-sent with the
same key or Message-ID and recorded in doubt; replaying the whole requests topic sends nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter, defaultdict
from email import message_from_bytes
from email import policy as email_policy

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from orderops_tools.scenario import Story, customer
from orderops_tools.testing import ServiceProcess, decode_all, free_port, poll_json, producer, read_topic, text_of

from notifier.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from orderops.model.catalog import DEAD_LETTER_TOPICS, NOTIFICATIONS_DELIVERIES, NOTIFICATIONS_REQUESTS, NOTIFIER
from orderops.ops.security import client_config
from orderops.runtime import deadletter

pytestmark = pytest.mark.broker
SECRET = "test-webhook-secret"


class RecordingMailbox:
    """An SMTP server keeping every message; the first for ``kill_for``'s order it keeps, then kills
    the notifier (``on_kill``) before answering: the mail has arrived, the notifier never hears it."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.kill_for: str | None = None
        self.on_kill = None

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        if self.kill_for and self.kill_for.encode() in envelope.content:
            self.kill_for = None
            self.on_kill()
            await asyncio.sleep(5)
        return "250 OK"

    def for_order(self, order_id: str) -> list[bytes]:
        return [m for m in self.messages if order_id.encode() in m]


class Receiver:
    """A webhook receiver with scripted behaviour per order id, counting every raw receipt."""

    def __init__(self) -> None:
        self.receipts: dict[str, list[dict]] = defaultdict(list)  # idempotency key -> bodies
        self.rejected = 0
        self.behaviour: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.on_kill = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(SECRET.encode(), request.headers.get(SIGNATURE_HEADER), body, time.time())
        except Exception as exc:
            self.rejected += 1
            return web.json_response({"error": str(exc)}, status=401)
        document = json.loads(body)
        order_id = document["order_id"]
        self.calls[order_id] += 1
        behaviour = self.behaviour.get(order_id, "ok")
        if behaviour == "fail-twice" and self.calls[order_id] <= 2:
            return web.json_response({"error": "try later"}, status=503)
        if behaviour == "always-fail":
            return web.json_response({"error": "down"}, status=500)
        if behaviour == "kill-once" and self.calls[order_id] == 1:
            self.receipts[request.headers[IDEMPOTENCY_HEADER]].append(document)
            self.on_kill()  # the far end has it; the notifier dies before it can record that
            await asyncio.sleep(5)
            return web.json_response({"status": "too late"})
        self.receipts[request.headers[IDEMPOTENCY_HEADER]].append(document)
        return web.json_response({"status": "ok"})

    def for_order(self, order_id: str) -> dict[str, list[dict]]:
        return {k: v for k, v in self.receipts.items() if v[0]["order_id"] == order_id}


def requests_for(order_id: str, *types: str) -> Story:
    story = Story(order_id)
    for n, notice_type in enumerate(types):
        story.after(minutes=1).on(NOTIFICATIONS_REQUESTS).NotificationRequested(
            notification_id=f"{order_id}:cause-{n}:notify:{notice_type}", type=notice_type,
            customer=customer(email=f"{order_id}@example.com"), cause_event_id=f"{order_id}:cause-{n}",
            lines=[{"line_id": "l1", "name": "Blue mug", "quantity_in_this_shipment": 2, "quantity_shipped": 2,
                    "quantity_delivered": 0, "quantity_backordered": 0, "quantity_cancelled": 0, "eta": None,
                    "shipment_id": "P1"},
                   {"line_id": "l2", "name": "Teapot", "quantity_in_this_shipment": 0, "quantity_shipped": 0,
                    "quantity_delivered": 0, "quantity_backordered": 1, "quantity_cancelled": 0, "eta": None,
                    "shipment_id": None}],
            amounts=[], shipment_id="P1", tracking_url="https://track.example/JD0001",
            facts={"order_id": order_id, "summary": "Parcel P1 (DHL JD0001) is on its way with 2 of your 3 items: 2 × Blue mug. "
                                                    "Still to come — Teapot: 1 backordered until Thu 03 Dec."})
    return story


async def test_delivered_once_through_failures_crashes_and_replays(catalog_topics, run_id, tmp_path):
    bootstrap = catalog_topics
    mailbox, receiver = RecordingMailbox(), Receiver()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    http = web.Application()
    http.add_routes([web.post("/hook", receiver.handle)])
    runner = web.AppRunner(http)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    instance = f"t{run_id}"
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": instance, "ORDEROPS_DATA_DIR": str(tmp_path / "state"),
           "WEB_PORT": str(free_port()), "ORDEROPS_SESSION_TIMEOUT_SECONDS": "6", "ORDEROPS_TIMER_INTERVAL_SECONDS": "0.5",
           "ORDEROPS_SMTP_PORT": str(smtp.port), "ORDEROPS_WEBHOOK_URL": f"http://127.0.0.1:{hook_port}/hook",
           "ORDEROPS_WEBHOOK_SECRET": SECRET, "ORDEROPS_NOTIFIER_MAX_ATTEMPTS": "3",
           "ORDEROPS_NOTIFIER_BACKOFF_SECONDS": "0.2", "ORDEROPS_NOTIFIER_BREAKER_FAILURES": "50"}
    notifier = ServiceProcess(["-m", "notifier"], env, tmp_path / "notifier.log", int(env["WEB_PORT"]))
    receiver.on_kill = mailbox.on_kill = lambda: os.kill(notifier.process.pid, signal.SIGKILL)
    happy, flaky, dead, crash, crash_mail = (f"{name}-{run_id}" for name in ("happy", "flaky", "dead", "crash", "mailcrash"))
    receiver.behaviour.update({flaky: "fail-twice", dead: "always-fail", crash: "kill-once"})
    kafka = producer(bootstrap)
    try:
        notifier.start()
        await notifier.wait_ready()
        for order_id in (happy, flaky, dead):
            requests_for(order_id, "shipment_dispatched").publish(kafka)

        # The split-shipment message arrives once, by email and by signed webhook, and reads right.
        await poll_json(notifier, f"/orders/{happy}/notifications",
                        lambda v: {d["state"] for d in v["deliveries"]} == {"sent"})
        [raw] = mailbox.for_order(happy)
        message = message_from_bytes(raw, policy=email_policy.default)
        assert message["Subject"].startswith("A parcel of your order") and "2 × Blue mug" in text_of(message)
        assert "Teapot: 1 backordered until Thu 03 Dec" in text_of(message)
        [(key, [document])] = receiver.for_order(happy).items()
        assert key.endswith("/webhook") and document["lines"][1]["quantity_backordered"] == 1
        assert document["tracking_urls"] == ["https://track.example/JD0001"] and receiver.rejected == 0

        # Fails twice, then succeeds: three attempts, one delivery.
        view = await poll_json(notifier, f"/orders/{flaky}/notifications",
                               lambda v: any(d["channel"] == "webhook" and d["state"] == "sent" for d in v["deliveries"]))
        webhook = next(d for d in view["deliveries"] if d["channel"] == "webhook")
        assert webhook["attempts"] == 3 and receiver.calls[flaky] == 3 and len(receiver.for_order(flaky)) == 1

        # A receiver that never recovers: FAILED and a dead letter, while email went through.
        view = await poll_json(notifier, f"/orders/{dead}/notifications",
                               lambda v: any(d["state"] == "failed" for d in v["deliveries"]))
        states = {d["channel"]: d["state"] for d in view["deliveries"]}
        assert states == {"email": "sent", "webhook": "failed"} and len(mailbox.for_order(dead)) == 1
        [dlq] = read_topic(bootstrap, DEAD_LETTER_TOPICS[NOTIFIER].name, keep=lambda m: m.key() == dead.encode(),
                           until=lambda got: len(got) >= 1)
        headers = dict(dlq.headers())
        assert headers[deadletter.ERROR_CLASS] == b"delivery-failed"
        assert headers[deadletter.ORIGIN_TOPIC] == NOTIFICATIONS_REQUESTS.name.encode() and b"500" in headers[deadletter.ERROR]
        [original] = decode_all([dlq], NOTIFICATIONS_REQUESTS)
        assert original.payload["notification_id"].startswith(dead), "the full request is in the dead letter"

        async def killed_mid_send(order_id: str, by: str) -> dict:
            """The order's request sent while the far end (``by``) kills the notifier once it has the
            message; the notifier started again; its deliveries once all are sent."""
            requests_for(order_id, "shipment_dispatched").publish(kafka)
            deadline = time.monotonic() + 60
            while notifier.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert notifier.process.poll() is not None, f"the {by} should have killed the notifier"
            notifier.start()
            await notifier.wait_ready()
            return await poll_json(notifier, f"/orders/{order_id}/notifications", lambda v: len(v["deliveries"]) == 2
                                   and all(d["state"] == "sent" for d in v["deliveries"]))

        # SIGKILL after the far end accepted and before the ledger recorded it.
        view = await killed_mid_send(crash, "webhook receiver")
        webhook = next(d for d in view["deliveries"] if d["channel"] == "webhook")
        assert webhook["in_doubt_attempts"] == 1
        [(key, bodies)] = receiver.for_order(crash).items()
        assert len(bodies) == 2 and receiver.calls[crash] == 2, "re-sent once, with the same idempotency key"
        outcomes = [d.payload["outcome"] for d in decode_all(read_topic(
            bootstrap, NOTIFICATIONS_DELIVERIES.name, keep=lambda m: m.key() == crash.encode(),
            until=lambda got: len(got) >= 3), NOTIFICATIONS_DELIVERIES) if d.payload["channel"] == "webhook"]
        assert "IN_DOUBT" in outcomes and outcomes[-1] == "SENT"

        # The same for an email: the mail server has it when the notifier is SIGKILLed.
        mailbox.kill_for = crash_mail
        view = await killed_mid_send(crash_mail, "mail server")
        email = next(d for d in view["deliveries"] if d["channel"] == "email")
        assert email["in_doubt_attempts"] == 1
        copies = mailbox.for_order(crash_mail)
        ids = {line for m in copies for line in m.decode().splitlines() if line.lower().startswith("message-id:")}
        assert len(copies) == 2 and len(ids) == 1, ("re-sent once, with the same Message-ID", ids)
        # The webhook was marked attempting with the email, in the same batch: sent or not before the
        # kill, it is re-sent in doubt, and arrives once or twice, never more.
        webhook = next(d for d in view["deliveries"] if d["channel"] == "webhook")
        assert 1 <= sum(map(len, receiver.for_order(crash_mail).values())) <= 1 + webhook["in_doubt_attempts"] <= 2

        # The mail server down for longer than the retry budget (3 attempts): the email fails for good
        # with a dead letter, the webhook goes; once the server is back, the customer gets nothing late.
        mail_down = f"maildown-{run_id}"
        smtp.stop()
        requests_for(mail_down, "shipment_dispatched").publish(kafka)
        view = await poll_json(notifier, f"/orders/{mail_down}/notifications",
                               lambda v: {d["channel"]: d["state"] for d in v["deliveries"]} == {"email": "failed",
                                                                                                "webhook": "sent"})
        email = next(d for d in view["deliveries"] if d["channel"] == "email")
        assert email["attempts"] == 3 and email["in_doubt_attempts"] == 0, email
        [dlq] = read_topic(bootstrap, DEAD_LETTER_TOPICS[NOTIFIER].name, keep=lambda m: m.key() == mail_down.encode(),
                           until=lambda got: len(got) >= 1)
        assert dict(dlq.headers())[deadletter.ERROR_CLASS] == b"delivery-failed"
        smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp.port)  # back (a stopped one cannot start again)
        smtp.start()
        await asyncio.sleep(3)  # timer ticks every 0.5 s: a delivery still due would go now
        assert mailbox.for_order(mail_down) == [] and len(receiver.for_order(mail_down)) == 1

        # Replay: rewind the notifier's consumer group to the start of the requests topic.
        sent_before = (len(mailbox.messages), sum(receiver.calls.values()))
        notifier.stop(signal.SIGTERM)
        admin = AdminClient(client_config(bootstrap))
        partitions = [TopicPartition(NOTIFICATIONS_REQUESTS.name, p, 0) for p in range(NOTIFICATIONS_REQUESTS.partitions)]
        admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(f"{NOTIFIER}-{instance}", partitions)])[
            f"{NOTIFIER}-{instance}"].result()
        notifier.start()
        await notifier.wait_ready()
        marker = f"marker-{run_id}"
        requests_for(marker, "shipment_dispatched").publish(kafka)  # processed after the whole replay
        await poll_json(notifier, f"/orders/{marker}/notifications",
                        lambda v: {d["state"] for d in v["deliveries"]} == {"sent"})
        assert (len(mailbox.messages), sum(receiver.calls.values())) == (sent_before[0] + 1, sent_before[1] + 1), \
            "a replay of the requests topic sends nothing new"
    finally:
        notifier.stop(signal.SIGKILL)
        smtp.stop()
        await runner.cleanup()


class AnswersWhenAllAreSending:
    """An SMTP server that answers no message until ``together`` are being sent at the same moment
    (then every one; after 30 s alone: 451, try later), noting each order's messages in flight."""

    def __init__(self, together: int) -> None:
        self.together, self.sending, self.all_there = together, Counter(), asyncio.Event()
        self.most_at_once_per_order: Counter[str] = Counter()
        self.answers: list[tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope):
        order_id = envelope.rcpt_tos[0].split("@")[0]
        self.sending[order_id] += 1
        self.most_at_once_per_order[order_id] = max(self.most_at_once_per_order[order_id], self.sending[order_id])
        if sum(self.sending.values()) >= self.together:
            self.all_there.set()
        try:
            await asyncio.wait_for(self.all_there.wait(), 30)
            answer = "250 OK"
        except TimeoutError:
            answer = "451 the other messages never came"
        finally:
            self.sending[order_id] -= 1
        self.answers.append((order_id, answer))
        return answer


async def test_orders_are_delivered_at_once_and_each_orders_messages_one_after_another(catalog_topics, run_id, tmp_path):
    """Four orders' e-mails are in the SMTP server at the same moment (it answers none before), and
    the two requests of one order never are: the notifier delivers up to ORDEROPS_NOTIFIER_CONCURRENCY
    orders at once, each order in sequence. One order at a time, the first message would be refused."""
    bootstrap = catalog_topics
    server = AnswersWhenAllAreSending(together=4)
    smtp = Controller(server, hostname="127.0.0.1", port=free_port())
    smtp.start()
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": f"c{run_id}", "ORDEROPS_DATA_DIR": str(tmp_path / "state"),
           "WEB_PORT": str(free_port()), "ORDEROPS_SMTP_PORT": str(smtp.port), "ORDEROPS_NOTIFIER_CHANNELS": "email",
           "ORDEROPS_NOTIFIER_CONCURRENCY": "8", "ORDEROPS_SEND_TIMEOUT_SECONDS": "60",
           "ORDEROPS_NOTIFIER_SEND_TIMEOUT_SECONDS": "60"}
    notifier = ServiceProcess(["-m", "notifier"], env, tmp_path / "notifier.log", int(env["WEB_PORT"]))
    twice, *once = (f"{name}-{run_id}" for name in ("twice", "one", "two", "three"))
    kafka = producer(bootstrap)
    try:
        notifier.start()
        await notifier.wait_ready()
        requests_for(twice, "shipment_dispatched", "shipment_delivered").publish(kafka)
        for order_id in once:
            requests_for(order_id, "shipment_dispatched").publish(kafka)
        for order_id in (twice, *once):
            view = await poll_json(notifier, f"/orders/{order_id}/notifications",
                                   lambda v: len(v["deliveries"]) == (2 if v["order_id"] == twice else 1)
                                   and {d["state"] for d in v["deliveries"]} == {"sent"}, timeout=90)
            assert [d["attempts"] for d in view["deliveries"]] == [1] * len(view["deliveries"]), server.answers
    finally:
        notifier.stop(signal.SIGKILL)
        smtp.stop()
    assert server.most_at_once_per_order[twice] == 1, "an order's messages one after another"
    ours = [(order_id, answer) for order_id, answer in server.answers if order_id in (twice, *once)]  # the topic
    assert sorted(ours) == sorted([(twice, "250 OK")] * 2 + [(o, "250 OK") for o in once])  # holds other tests' too


class RefusesEveryRecipient:
    """A mail server that answers RCPT as real ones do: 550, naming the address it refuses."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"


async def test_a_refused_recipients_address_reaches_no_log_record_or_dead_letter_header(catalog_topics, run_id, tmp_path):
    """The server's refusal names the customer's address: it must not reach the notifier's log, the
    delivery record's reason on notifications.deliveries, a dead letter's headers, or /metrics."""
    bootstrap = catalog_topics
    smtp = Controller(RefusesEveryRecipient(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": f"r{run_id}", "ORDEROPS_DATA_DIR": str(tmp_path / "state"),
           "WEB_PORT": str(free_port()), "ORDEROPS_SMTP_PORT": str(smtp.port), "ORDEROPS_NOTIFIER_CHANNELS": "email"}
    notifier = ServiceProcess(["-m", "notifier"], env, tmp_path / "notifier.log", int(env["WEB_PORT"]))
    order_id = f"refused-{run_id}"
    address = f"{order_id}@example.com".encode()
    try:
        notifier.start()
        await notifier.wait_ready()
        requests_for(order_id, "shipment_dispatched").publish(producer(bootstrap))
        view = await poll_json(notifier, f"/orders/{order_id}/notifications",
                               lambda v: [d["state"] for d in v["deliveries"]] == ["failed"])
        assert "550" in view["deliveries"][0]["last_error"]
        [delivered] = read_topic(bootstrap, NOTIFICATIONS_DELIVERIES.name, keep=lambda m: m.key() == order_id.encode(),
                                 until=lambda got: len(got) >= 1)
        [record] = decode_all([delivered], NOTIFICATIONS_DELIVERIES)
        assert record.payload["outcome"] == "FAILED" and "550" in record.payload["reason"]
        assert address not in record.payload["reason"].encode() and b"@" not in record.payload["reason"].encode()
        [dlq] = read_topic(bootstrap, DEAD_LETTER_TOPICS[NOTIFIER].name, keep=lambda m: m.key() == order_id.encode(),
                           until=lambda got: len(got) >= 1)
        headers = dict(dlq.headers())
        assert b"550" in headers[deadletter.ERROR], headers
        assert not [name for name, value in headers.items() if address in value], "no header names the address"
        assert address in dlq.value(), "the dead letter's value is the request itself, which carries it"
        async with aiohttp.ClientSession() as session, session.get(f"{notifier.url}/metrics") as response:
            assert response.status == 200 and address not in await response.read()
    finally:
        notifier.stop(signal.SIGTERM)
        smtp.stop()
    log = (tmp_path / "notifier.log").read_bytes()
    assert b"550" in log and address not in log, "the refusal is logged, without the address"
