"""The channels against real servers on this machine: which failures leave a message's fate unknown.

A failure before the message left (nothing listening) is a plain retry; one after it left (the
receiver took the request and did not answer in time) may have been delivered, so the next
attempt is announced IN_DOUBT (found: webhooks received twice in the 20,000-event fault run, when
the receiver answered after the notifier's time limit)."""

from __future__ import annotations

import asyncio
import email
from email import policy as email_policy

import pytest
from aiosmtpd.controller import Controller
from orderops_tools.testing import Mailbox, WebhookSink, free_port, text_of

from notifier.channels import (
    WEBHOOK_KEEPALIVE_SECONDS,
    EmailChannel,
    SendError,
    WebhookChannel,
    compose_email,
    message_id,
)
from notifier.rendering import Rendered

MESSAGE = Rendered("Subject", "Body\n", "en")
CUSTOMER = {"email": "ann@example.com"}


async def test_a_webhook_nobody_listens_for_fails_plainly():
    channel = WebhookChannel(f"http://127.0.0.1:{free_port()}/hooks", lambda: [b"k"], timeout=2)
    try:
        with pytest.raises(SendError) as failed:
            await channel.send("d-1", CUSTOMER, MESSAGE, {})
    finally:
        await channel.close()
    assert not failed.value.in_doubt and not failed.value.permanent and "unreachable" in str(failed.value)


async def test_a_webhook_answered_too_late_is_in_doubt_and_one_answered_in_time_is_sent():
    receiver = await WebhookSink(answer_after=2).start()
    received = receiver.delivery_ids
    impatient, patient = (WebhookChannel(receiver.url, lambda: [b"k"], timeout=t) for t in (0.5, 5))
    try:
        with pytest.raises(SendError) as failed:
            await impatient.send("d-1", CUSTOMER, MESSAGE, {})
        assert failed.value.in_doubt and received == {"d-1": 1}, (str(failed.value), received)
        await patient.send("d-1", CUSTOMER, MESSAGE, {})
        assert received == {"d-1": 2}  # the same idempotency key: the receiver drops the second
    finally:
        await impatient.close()
        await patient.close()
        await receiver.stop()


async def test_webhooks_in_a_row_share_a_connection_and_one_idle_past_the_keepalive_gets_a_new_one():
    receiver = await WebhookSink().start()
    channel = WebhookChannel(receiver.url, lambda: [b"k"], timeout=5)
    try:
        for n in range(3):
            await channel.send(f"d-{n}", CUSTOMER, MESSAGE, {})
        assert list(receiver.connections.values()) == [3]
        await asyncio.sleep(WEBHOOK_KEEPALIVE_SECONDS + 0.5)  # closed by the channel, before the receiver would
        await channel.send("d-3", CUSTOMER, MESSAGE, {})
        assert sorted(receiver.connections.values()) == [1, 3]
        assert receiver.delivery_ids == {"d-0": 1, "d-1": 1, "d-2": 1, "d-3": 1}
    finally:
        await channel.close()
        await receiver.stop()


async def test_an_smtp_server_nobody_runs_fails_plainly_and_one_that_stalls_after_data_is_in_doubt():
    port = free_port()
    with pytest.raises(SendError) as failed:
        await EmailChannel("127.0.0.1", port, "orders@shop.example", timeout=2).send("d-1", CUSTOMER, MESSAGE, {})
    assert not failed.value.in_doubt

    class Stalls:
        async def handle_DATA(self, server, session, envelope):
            await asyncio.sleep(3)  # took the message, answers too late
            return "250 OK"

    server = Controller(Stalls(), hostname="127.0.0.1", port=port)
    server.start()
    try:
        with pytest.raises(SendError) as failed:
            await EmailChannel("127.0.0.1", port, "orders@shop.example", timeout=1).send("d-1", CUSTOMER, MESSAGE, {})
        assert failed.value.in_doubt, str(failed.value)
    finally:
        server.stop()


def test_an_email_says_what_the_template_rendered_and_refuses_a_header_a_request_could_inject():
    rendered = Rendered("Deine Bestellung — 2 Artikel unterwegs", "Hallo Ann,\n\nPaket P1 = unterwegs, café.\n", "de")
    raw = compose_email("orders@shop.example", "ann@example.com", rendered, "n-1/email")
    message = email.message_from_bytes(raw, policy=email_policy.default)
    assert message["Subject"] == rendered.subject and message["To"] == "ann@example.com"
    assert message["Content-Language"] == "de"  # EmailMessage.set_content used to drop it
    assert message["Message-ID"] == message_id("n-1/email", "shop.example") and message["X-Orderops-Delivery-Id"] == "n-1/email"
    assert text_of(message).replace("\r\n", "\n") == rendered.body
    assert raw.isascii() and b"\r\n\r\n" in raw  # 7-bit and CRLF: what any SMTP server takes
    with pytest.raises(SendError) as refused:
        compose_email("orders@shop.example", "ann@example.com\r\nBcc: eve@example.com", rendered, "n-1/email")
    assert refused.value.permanent and "To" in str(refused.value)


async def test_a_kept_smtp_connection_the_server_closed_is_replaced_and_the_message_is_sent_once_not_in_doubt():
    mailbox = Mailbox().start()
    channel = EmailChannel("127.0.0.1", mailbox.port, "orders@shop.example", timeout=2)
    try:
        await channel.send("d-1", CUSTOMER, MESSAGE, {})
        [kept] = channel._idle
        mailbox.stop()  # the server goes away, and with it the connection the channel keeps
        mailbox.start()
        assert kept.is_connected  # as far as the channel can tell: only the next command finds out
        await channel.send("d-2", CUSTOMER, MESSAGE, {})
        [replacement] = channel._idle
        assert replacement is not kept and not kept.is_connected
        assert mailbox.delivery_ids == {"d-1": 1, "d-2": 1}
    finally:
        await channel.close()
        mailbox.stop()


async def test_messages_sent_at_once_go_on_connections_of_their_own_kept_for_the_next_ones():
    """The notifier delivers several orders at once (ORDEROPS_NOTIFIER_CONCURRENCY): each message in
    its own SMTP session. The server answers none until three are being sent at the same moment:
    sent one after another (or queued on one connection), the first is refused after 10 s."""
    together, sending, peers = 3, [0], []
    all_there = asyncio.Event()

    class AnswersWhenThreeAreSending:
        async def handle_DATA(self, server, session, envelope):
            peers.append(session.peer)
            sending[0] += 1
            if sending[0] >= together:
                all_there.set()
            try:
                await asyncio.wait_for(all_there.wait(), 10)
                return "250 OK"
            except TimeoutError:
                return "451 the other messages never came"
            finally:
                sending[0] -= 1

    server = Controller(AnswersWhenThreeAreSending(), hostname="127.0.0.1", port=free_port())
    server.start()
    channel = EmailChannel("127.0.0.1", server.port, "orders@shop.example", timeout=15)
    try:
        await asyncio.gather(*(channel.send(f"d-{n}", CUSTOMER, MESSAGE, {}) for n in range(together)))
        assert len(set(peers)) == together and len(channel._idle) == together
        for n in range(together, together + 2):  # one after another now: an idle kept connection each time
            await channel.send(f"d-{n}", CUSTOMER, MESSAGE, {})
        assert len(set(peers)) == together and len(peers) == together + 2
    finally:
        await channel.close()
        server.stop()
    assert channel._idle == []


async def test_an_address_that_is_not_ascii_goes_with_smtputf8_and_a_server_without_it_refuses_it_for_good():
    received = []

    class Keeps:
        async def handle_DATA(self, server, session, envelope):
            received.append(email.message_from_bytes(envelope.original_content, policy=email_policy.default))
            return "250 OK"

    port = free_port()
    server = Controller(Keeps(), hostname="127.0.0.1", port=port, enable_SMTPUTF8=True)
    server.start()
    channel = EmailChannel("127.0.0.1", port, "orders@shop.example", timeout=2)
    try:
        await channel.send("d-1", {"email": "jürgen@example.com"}, Rendered("Grüße", "Hallo Jürgen\n", "de"), {})
    finally:
        await channel.close()
        server.stop()
    assert received[0]["To"] == "jürgen@example.com" and received[0]["Subject"] == "Grüße"
    assert received[0]["Content-Language"] == "de" and text_of(received[0]).strip() == "Hallo Jürgen"

    server = Controller(Keeps(), hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    server.start()
    channel = EmailChannel("127.0.0.1", port, "orders@shop.example", timeout=2)
    try:
        with pytest.raises(SendError) as refused:
            await channel.send("d-2", {"email": "jürgen@example.com"}, MESSAGE, {})
    finally:
        await channel.close()
        server.stop()
    assert refused.value.permanent and not refused.value.in_doubt and "SMTPUTF8" in str(refused.value)
    assert len(received) == 1


async def test_the_sink_keys_a_delivery_by_its_signed_id_not_by_the_unsigned_header(tmp_path):
    """A signed webhook captured within the signature's tolerance and replayed under a new
    Idempotency-Key is the same delivery: the make-run sink stores it once (found: it stored it twice)."""
    import json
    import time

    import aiohttp
    from aiohttp import web

    from notifier.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign
    from notifier.sinks import webhook_app

    runner = web.AppRunner(webhook_app(lambda: [b"k"], tmp_path / "webhooks"))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    body = json.dumps({"delivery_id": "n-1/webhook", "subject": "s"}).encode()

    async def post(key: str | None, signed_at: float) -> tuple[int, dict]:
        headers = {SIGNATURE_HEADER: sign([b"k"], body, int(signed_at)), **({IDEMPOTENCY_HEADER: key} if key else {})}
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/hooks/notifications", data=body, headers=headers) as response:
            return response.status, await response.json()

    try:
        now = time.time()
        assert await post("n-1/webhook", now) == (200, {"status": "stored", "delivery_id": "n-1/webhook"})
        assert (await post(None, now))[1]["status"] == "duplicate ignored"
        status, answer = await post("replayed-under-a-new-key", now)
        assert status == 400 and "not the signed delivery id" in answer["error"]
        assert (await post("n-1/webhook", now - 301))[0] == 401, "a stale signature is refused"
        assert len(list((tmp_path / "webhooks").glob("*.json"))) == 1
    finally:
        await runner.cleanup()
