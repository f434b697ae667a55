"""The notifier's pure parts: rendering, the ledger machine, preferences, backoff, signing, breaker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from notifier.channels import CircuitBreaker, SendError, SignatureError, message_id, sign, verify
from notifier.delivering import Dispatcher
from notifier.ledger import DELIVERY, Delivery, Ledger, Preferences, RetryPolicy, move
from notifier.rendering import RenderError, Templates, context
from orderops.model.envelope import Envelope
from orderops.model.workflow import Machine

TEMPLATES = Templates(Path(__file__).resolve().parents[1] / "notifier" / "templates")
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
ETA = datetime(2026, 12, 3, tzinfo=UTC)


def claim(line_id, name, in_parcel=0, shipped=0, backordered=0, eta=None, shipment=None):
    return {"line_id": line_id, "name": name, "quantity_in_this_shipment": in_parcel, "quantity_shipped": shipped,
            "quantity_delivered": 0, "quantity_backordered": backordered, "quantity_cancelled": 0, "eta": eta,
            "shipment_id": shipment}


def request(notification_id="n-1", notice_type="shipment_dispatched", locale="en",
            summary="Parcel P1 is on its way with 2 of your 3 items: 2 × Blue mug.",
            shipment="P1", lines=None, customer_id="c-1", **facts) -> dict:
    return {"notification_id": notification_id, "type": notice_type, "cause_event_id": "e-1",
            "customer": {"customer_id": customer_id, "email": "ada@example.com", "name": "Ada", "locale": locale,
                         "phone": None},
            "lines": lines if lines is not None else [claim("l1", "Blue mug", 2, 2, shipment="P1"),
                                                      claim("l2", "Teapot", backordered=1, eta=ETA)],
            "amounts": [], "shipment_id": shipment, "tracking_url": f"https://track.example/{shipment}",
            "facts": {"order_id": "o-1", "summary": summary, **facts}}


def entries(*payloads):
    return tuple({"notification_id": p["notification_id"], "payload": p} for p in payloads)


# -- rendering ------------------------------------------------------------------------------------

def test_split_shipment_message_says_what_is_in_the_parcel_and_what_is_to_come():
    summary = ("Parcel P1 (DHL JD0001) is on its way with 2 of your 3 items: 2 × Blue mug. "
               "Still to come — Teapot: 1 backordered until Thu 03 Dec.")
    rendered = TEMPLATES.render("shipment_dispatched", "en", context(entries(request(summary=summary))))
    assert rendered.subject == "A parcel of your order o-1 is on the way"
    assert summary in rendered.body and "Track it: https://track.example/P1" in rendered.body


def test_merged_requests_render_every_parcel_and_their_claims_are_the_union():
    first = request("n-1", summary="Parcel P1: 2 × Blue mug.", shipment="P1")
    second = request("n-2", summary="Parcel P2: 1 × Teapot.", shipment="P2",
                     lines=[claim("l1", "Blue mug", 0, 2), claim("l2", "Teapot", 1, 1, shipment="P2")])
    ctx = context(entries(first, second))
    rendered = TEMPLATES.render("shipment_dispatched", "en", ctx)
    assert rendered.subject == "2 parcels of your order o-1 are on the way"
    assert "Parcel P1" in rendered.body and "Parcel P2" in rendered.body and "track.example/P2" in rendered.body
    assert {c["line_id"]: c["quantity_in_this_shipment"] for c in ctx["lines"]} == {"l1": 2, "l2": 1}


def test_locale_falls_back_by_language_then_default():
    german = TEMPLATES.render("shipment_dispatched", "de-AT", context(entries(request(locale="de-AT"))))
    assert german.locale == "de" and "2 × Blue mug" in german.body
    fallback = TEMPLATES.render("line_backordered", "de", context(entries(request(notice_type="line_backordered"))))
    assert fallback.locale == "en"


def test_missing_template_is_a_precise_error():
    with pytest.raises(RenderError, match="no template for notification type 'parcel_teleported'"):
        TEMPLATES.render("parcel_teleported", "en", context(entries(request())))


def test_missing_field_is_a_precise_error_not_half_a_message():
    broken = request(notice_type="payment_failed")  # no facts.reason / customer_action
    with pytest.raises(RenderError, match="payment_failed.txt needs a value"):
        TEMPLATES.render("payment_failed", "en", context(entries(broken)))


def test_every_template_renders_with_the_facts_its_producer_sends():
    producers = {
        "order_confirmed": {"lines": "2"},
        "payment_failed": {"reason": "insufficient funds", "customer_action": "use another card"},
        "order_cancelled": {"released_authorizations": "card-1"},
        "backorder_eta_changed": {"slipped": "true", "reason": "supplier delay", "previous_eta": ""},
        "delivery_failed": {"reason": "address not found"},
        **{t: {"return_id": "r-1", "reason": "every rule passed", "policy": "standard@1"}
           for t in ("return_authorized", "return_rejected", "return_needs_review", "return_received")},
        **{t: {"cause": "return r-1", "methods": "12.50 EUR back to your original payment method"}
           for t in ("refund_issued", "refund_completed")},
        "refund_not_possible": {"cause": "return r-1", "not_refunded": "60.00 EUR of 60.00 EUR, because only 0 EUR "
                                "was captured and not yet refunded: the rest of the authorization was voided"},
    }
    for path in sorted((TEMPLATES.directory / "en").glob("*.txt")):
        payload = request(notice_type=path.stem)
        payload["facts"].update(producers.get(path.stem, {}))
        payload["amounts"] = [{"instrument_id": "card-1", "channel": "CARD",
                               "amount": {"amount": Decimal("12.5"), "currency": "EUR"}}]
        rendered = TEMPLATES.render(path.stem, "en", context(entries(payload)))
        assert rendered.subject and rendered.body.strip(), path.stem


def test_a_refund_that_cannot_be_paid_in_full_says_what_is_not_refunded_and_why():
    payload = request(notice_type="refund_issued")
    payload["facts"].update({"cause": "return r-1", "methods": "50.00 EUR back to your original payment method",
                             "not_refunded": "10.00 EUR of 60.00 EUR, because only 50.00 EUR was captured and not yet "
                                             "refunded: the rest of the authorization was voided"})
    body = TEMPLATES.render("refund_issued", "en", context(entries(payload))).body
    assert "Not refunded: 10.00 EUR of 60.00 EUR" in body and "voided" in body
    payload["facts"].pop("not_refunded")
    assert "Not refunded" not in TEMPLATES.render("refund_issued", "en", context(entries(payload))).body


# -- the ledger -----------------------------------------------------------------------------------

def dispatcher(coalesce=timedelta(0), preferences=None) -> Dispatcher:
    return Dispatcher({"email": None, "webhook": None}, {}, TEMPLATES, preferences or Preferences(), RetryPolicy(),
                      coalesce)


def envelope(payload: dict, at: datetime = T0) -> Envelope:
    return Envelope(f"req-{payload['notification_id']}", "o-1", at, "fulfillment",
                    "orderops.notifications.NotificationRequested", payload)


def sent(ledger: Ledger, delivery_id: str) -> Ledger:
    return ledger.put(move(move(ledger.delivery(delivery_id), "attempt", attempts=1), "accepted"))


def test_each_request_becomes_one_delivery_per_channel_and_a_redelivery_none():
    ledger, due, suppressed = dispatcher().accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    assert [d.delivery_id for d in due] == ["n-1/email", "n-1/webhook"] and suppressed == []
    ledger = sent(sent(ledger, "n-1/email"), "n-1/webhook")
    again, due_again, _ = dispatcher().accept(ledger, envelope(request()), ("t", 0, 1), T0)
    assert again is ledger and due_again == []


def test_a_redelivered_request_whose_delivery_was_mid_attempt_is_attempted_again():
    ledger, due, _ = dispatcher().accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    crashed = sent(ledger, "n-1/webhook").put(move(ledger.delivery("n-1/email"), "attempt", attempts=1))
    _, due, _ = dispatcher().accept(crashed, envelope(request()), ("t", 0, 1), T0)
    assert [d.delivery_id for d in due] == ["n-1/email"]


def test_a_delivery_a_crash_left_unattempted_is_due_on_redelivery_and_on_a_timer_tick():
    """Killed after the email's attempt was written, before the webhook's: the webhook stayed
    ``received`` and was never sent (found: the 200-order fault run)."""
    ledger, _, _ = dispatcher().accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    crashed = ledger.put(move(ledger.delivery("n-1/email"), "attempt", attempts=1))
    assert crashed.delivery("n-1/webhook").status == "received"
    _, due, _ = dispatcher().accept(crashed, envelope(request()), ("t", 0, 1), T0)
    assert sorted(d.delivery_id for d in due) == ["n-1/email", "n-1/webhook"]
    assert sorted(d.delivery_id for d in crashed.due(T0)) == ["n-1/email", "n-1/webhook"]


class Recorded:
    """A channel that records what it was given (no I/O); the first ``failures`` sends fail as given."""

    name = "webhook"

    def __init__(self, *failures: SendError) -> None:
        self.sent: list[str] = []
        self.failures = list(failures)

    async def send(self, delivery_id, recipient, rendered, document) -> None:
        self.sent.append(delivery_id)
        if self.failures:
            raise self.failures.pop(0)


async def attempted(notifier: Dispatcher, ledger: Ledger, delivery_id: str, now: datetime,
                    published: list[tuple[str, str]], durable: list[Ledger]) -> Ledger:
    """An attempt as the notifier makes one: begin, the ledger made durable, send, finish."""
    ledger, attempt, out = notifier.begin(ledger, ledger.delivery(delivery_id), now)
    durable.append(ledger)
    if attempt is not None:
        ledger, more = notifier.finish(ledger, attempt, await notifier.send(attempt), now)
        out = [*out, *more]
    published.extend((p.delivery.delivery_id, p.outcome) for p in out)
    return ledger


async def test_an_attempt_is_on_record_before_the_far_end_hears_of_it():
    channel = Recorded()
    notifier = Dispatcher({"webhook": channel}, {"webhook": CircuitBreaker(threshold=5, cooldown=10)}, TEMPLATES,
                          Preferences(), RetryPolicy(), timedelta(0))
    ledger, (delivery,), _ = notifier.accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    begun, attempt, published = notifier.begin(ledger, delivery, T0)
    assert begun.delivery("n-1/webhook").status == "attempting" and begun.delivery("n-1/webhook").attempts == 1
    assert published == [] and channel.sent == []
    done, published = notifier.finish(begun, attempt, await notifier.send(attempt), T0)
    assert channel.sent == ["n-1/webhook"] and done.delivery("n-1/webhook").status == "sent"
    assert [(p.delivery.delivery_id, p.outcome) for p in published] == [("n-1/webhook", "SENT")]


async def test_a_send_that_got_no_answer_after_it_left_is_retried_as_in_doubt():
    channel = Recorded(SendError("no answer after the request was sent", permanent=False, in_doubt=True))
    notifier = Dispatcher({"webhook": channel}, {"webhook": CircuitBreaker(threshold=5, cooldown=10)}, TEMPLATES,
                          Preferences(), RetryPolicy(), timedelta(0))
    ledger, _, _ = notifier.accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    published, durable = [], []
    ledger = await attempted(notifier, ledger, "n-1/webhook", T0, published, durable)
    assert ledger.delivery("n-1/webhook").status == "retrying" and ledger.delivery("n-1/webhook").doubtful
    ledger = await attempted(notifier, ledger, "n-1/webhook", T0 + timedelta(minutes=1), published, durable)
    assert published == [("n-1/webhook", "IN_DOUBT"), ("n-1/webhook", "SENT")]
    assert channel.sent == ["n-1/webhook", "n-1/webhook"]
    assert [d.delivery("n-1/webhook").attempts for d in durable] == [1, 2]


async def test_a_delivery_found_mid_attempt_while_the_circuit_is_open_is_still_resent_as_in_doubt():
    """A worker was killed while a webhook was on its way; the restarted worker found the webhook
    receiver down (circuit open) and deferred it. The later attempt must still be announced IN_DOUBT
    (found: the 200-order fault run, a webhook received twice with no IN_DOUBT record)."""
    channel = Recorded()
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=lambda: now[0])
    now = [0.0]
    notifier = Dispatcher({"webhook": channel}, {"webhook": breaker}, TEMPLATES, Preferences(), RetryPolicy(),
                          timedelta(0))
    ledger, _, _ = notifier.accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    crashed = ledger.put(move(ledger.delivery("n-1/webhook"), "attempt", attempts=1))
    breaker.failed()  # other deliveries found the receiver down
    published, durable = [], []
    deferred = await attempted(notifier, crashed, "n-1/webhook", T0, published, durable)
    assert deferred.delivery("n-1/webhook").status == "retrying" and channel.sent == []
    now[0] = 11.0  # the circuit half-opens
    resent = await attempted(notifier, deferred, "n-1/webhook", T0, published, durable)
    assert published == [("n-1/webhook", "IN_DOUBT"), ("n-1/webhook", "SENT")]
    assert resent.delivery("n-1/webhook").in_doubt == 1 and not resent.delivery("n-1/webhook").doubtful


async def test_a_circuit_that_opens_between_begin_and_send_defers_without_counting_an_attempt():
    """Other orders' sends of the same batch opened the circuit after this attempt was on record:
    nothing is sent, the attempt is not counted, and it is not in doubt (nothing left)."""
    channel = Recorded()
    breaker = CircuitBreaker(threshold=1, cooldown=10)
    notifier = Dispatcher({"webhook": channel}, {"webhook": breaker}, TEMPLATES, Preferences(), RetryPolicy(),
                          timedelta(0))
    ledger, (delivery,), _ = notifier.accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    begun, attempt, _ = notifier.begin(ledger, delivery, T0)
    breaker.failed()
    deferred, published = notifier.finish(begun, attempt, await notifier.send(attempt), T0)
    found = deferred.delivery("n-1/webhook")
    assert channel.sent == [] and published == []
    assert (found.status, found.attempts, found.doubtful) == ("retrying", 0, False)


def test_a_message_that_cannot_be_rendered_gives_up_at_once_with_a_failure_to_publish():
    notifier = Dispatcher({"webhook": Recorded()}, {"webhook": CircuitBreaker(threshold=5, cooldown=10)}, TEMPLATES,
                          Preferences(), RetryPolicy(), timedelta(0))
    ledger, (delivery,), _ = notifier.accept(Ledger("o-1"), envelope(request(notice_type="no_such_type")),
                                             ("t", 0, 1), T0)
    given_up, attempt, published = notifier.begin(ledger, delivery, T0)
    assert attempt is None and given_up.delivery("n-1/webhook").status == "failed"
    assert [(p.outcome, p.rendered) for p in published] == [("FAILED", None)]


def test_opt_out_and_quiet_hours_suppress_with_the_reason():
    preferences = Preferences.from_document({"customers": {
        "c-1": {"opt_out": ["webhook"]},
        "c-2": {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}}}})
    _, due, suppressed = dispatcher(preferences=preferences).accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    assert [d.channel for d in due] == ["email"]
    assert [(d.channel, why) for d, why in suppressed] == [("webhook", "customer opted out of webhook")]
    night = datetime(2026, 11, 2, 22, 30, tzinfo=UTC)  # 23:30 in Berlin
    _, due, suppressed = dispatcher(preferences=preferences).accept(
        Ledger("o-1"), envelope(request(customer_id="c-2"), night), ("t", 0, 1), night)
    assert due == [] and all("quiet hours (22:00-07:00 Europe/Berlin)" in why for _, why in suppressed)
    assert all(d.status == "suppressed" for d, _ in suppressed)


def test_coalescing_holds_then_merges_same_type_requests_of_the_order():
    d = dispatcher(coalesce=timedelta(seconds=60))
    ledger, due, _ = d.accept(Ledger("o-1"), envelope(request("n-1")), ("t", 0, 1), T0)
    assert due == [] and ledger.next_deadline() == T0 + timedelta(seconds=60)
    ledger, due, _ = d.accept(ledger, envelope(request("n-2", shipment="P2")), ("t", 0, 2), T0 + timedelta(seconds=10))
    held = ledger.delivery("n-1/email")
    assert due == [] and held.notification_ids == ("n-1", "n-2") and held.status == "held"
    assert ledger.due(T0 + timedelta(seconds=59)) == []
    assert {x.delivery_id for x in ledger.due(T0 + timedelta(seconds=60))} == {"n-1/email", "n-1/webhook"}


def test_messages_asked_by_several_processors_go_out_in_the_order_their_causes_happened():
    """Fulfillment got to the backorder (cause 09:05) before order-state got to the payment that
    confirms the order (cause 09:00): the backorder's request was written first. Read at once, each
    waits until 2 s after it was written; the backorder's window closes first, but it waits while
    the confirmation, of an earlier cause, waits; then both go, the confirmation first."""
    d = dispatcher()
    d.settle = timedelta(seconds=2)
    wall = datetime(2026, 12, 7, 12, tzinfo=UTC)
    backordered = envelope(request("n-2", notice_type="line_backordered"), at=T0 + timedelta(minutes=5))
    confirmed = envelope(request("n-1", notice_type="order_confirmed"), at=T0)
    ledger, _, _ = d.accept(Ledger("o-1"), backordered, ("t", 0, 7), T0, wall, wall)
    assert ledger.due(T0, wall) == [] and ledger.settling_until() == wall + timedelta(seconds=2)
    later = wall + timedelta(seconds=1)
    ledger, _, _ = d.accept(ledger, confirmed, ("t", 0, 8), T0, later, later)
    assert ledger.due(T0, wall + timedelta(seconds=2)) == []  # the backorder waits for the confirmation
    assert [x.delivery_id for x in ledger.due(T0, wall + timedelta(seconds=3))] == \
           ["n-1/email", "n-1/webhook", "n-2/email", "n-2/webhook"]
    assert Ledger.from_json(ledger.to_json()) == ledger


def test_a_backlog_is_sent_at_once_in_the_order_its_causes_happened():
    """Requests read long after they were written wait for nothing (whatever an earlier cause made
    was written by then): the order's due deliveries, all read in one batch, go in cause order."""
    d = dispatcher()
    d.settle = timedelta(seconds=2)
    wall = datetime(2026, 12, 7, 12, tzinfo=UTC)
    written = wall - timedelta(minutes=10)
    ledger, _, _ = d.accept(Ledger("o-1"), envelope(request("n-2", notice_type="line_backordered"),
                                                    at=T0 + timedelta(minutes=5)), ("t", 0, 7), T0, written, wall)
    ledger, _, _ = d.accept(ledger, envelope(request("n-1", notice_type="order_confirmed"), at=T0), ("t", 0, 8), T0,
                            written, wall)
    assert ledger.settling_until() is None
    assert [x.delivery_id for x in ledger.due(T0, wall)] == ["n-1/email", "n-1/webhook", "n-2/email", "n-2/webhook"]


def test_ledger_survives_its_json_form():
    ledger, _, _ = dispatcher().accept(Ledger("o-1"), envelope(request()), ("t", 0, 1), T0)
    assert Ledger.from_json(ledger.to_json()) == ledger


def test_delivery_machine_has_no_way_out_of_its_terminal_states():
    for state in DELIVERY.terminal:
        assert not [row for row in DELIVERY.rows if row[0] == state]
    assert isinstance(DELIVERY, Machine)


def test_the_service_doc_shows_the_delivery_machine():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "services" / "notifier.md").read_text()
    assert DELIVERY.as_markdown() in doc


# -- retries, signing, breaker --------------------------------------------------------------------

def test_backoff_grows_is_capped_jittered_and_reproducible():
    policy = RetryPolicy(max_attempts=8, base=timedelta(seconds=2), cap=timedelta(seconds=30))
    waits = [policy.next_attempt(Delivery("d", "email", "t", (), attempts=n), T0) - T0 for n in range(1, 8)]
    assert all(timedelta(0) < w <= timedelta(seconds=30) for w in waits)
    assert waits[0] <= timedelta(seconds=2) and waits[-1] >= timedelta(seconds=15)
    assert waits == [policy.next_attempt(Delivery("d", "email", "t", (), attempts=n), T0) - T0 for n in range(1, 8)]


def test_signature_verifies_and_refuses_tampering_and_replays():
    secret, body = b"s3cret", b'{"order_id": "o-1"}'
    header = sign(secret, body, 1_000_000)
    verify(secret, header, body, 1_000_100)
    with pytest.raises(SignatureError, match="does not match"):
        verify(secret, header, body + b" ", 1_000_100)
    with pytest.raises(SignatureError, match="replay"):
        verify(secret, header, body, 1_000_000 + 3600)
    with pytest.raises(SignatureError, match="missing"):
        verify(secret, None, body, 1_000_000)


def test_a_rotated_secret_keeps_every_receiver_working():
    old, new, body = b"old-secret", b"new-secret", b'{"order_id": "o-1"}'
    during = sign([new, old], body, 1_000_000)  # the notifier signs with both while rotating
    assert during.count("v1=") == 2
    verify(old, during, body, 1_000_000)  # a receiver not switched yet
    verify(new, during, body, 1_000_000)  # one that has switched
    verify([new, old], sign(old, body, 1_000_000), body, 1_000_000)  # a receiver accepting both
    with pytest.raises(SignatureError, match="does not match"):
        verify(old, sign(new, body, 1_000_000), body, 1_000_000)  # after the rotation, the old one is out
    with pytest.raises(SignatureError, match="no v1"):
        verify(old, "t=1000000", body, 1_000_000)


def test_message_id_is_deterministic_per_delivery():
    assert message_id("n-1/email", "shop.example") == message_id("n-1/email", "shop.example")
    assert message_id("n-1/email", "shop.example") != message_id("n-2/email", "shop.example")


def test_circuit_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown():
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=lambda: now[0])
    for _ in range(2):
        breaker.failed()
    assert breaker.allows()
    breaker.failed()
    assert breaker.state == "open" and not breaker.allows() and breaker.retry_in() == 10
    now[0] = 10.5
    assert breaker.state == "half_open" and breaker.allows()
    breaker.failed()
    assert breaker.state == "open", "a failed trial opens it again"
    now[0] = 25
    breaker.succeeded()
    assert breaker.state == "closed"


def test_a_half_open_circuit_lets_one_trial_through_and_the_others_wait_for_its_outcome():
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=lambda: now[0])
    breaker.failed()
    now[0] = 10.5
    assert breaker.state == "half_open"
    assert [breaker.allows() for _ in range(4)] == [True, False, False, False], "one trial, not every caller"
    breaker.succeeded()
    assert breaker.state == "closed" and all(breaker.allows() for _ in range(3))
    breaker.failed()
    now[0] = 21
    assert breaker.allows() and not breaker.allows()
    breaker.failed()
    assert breaker.state == "open" and not breaker.allows()
    now[0] = 31.5
    assert breaker.allows(), "half open again after the cooldown"
    now[0] = 42
    assert breaker.allows(), "a trial that told nothing for the cooldown is taken as lost"


def test_backoff_keeps_half_the_delay_and_draws_the_other_half():
    policy = RetryPolicy(max_attempts=8, base=timedelta(seconds=4), cap=timedelta(seconds=30))
    for attempts in range(1, 8):
        ceiling = min(30.0, 4 * 2 ** (attempts - 1))
        wait = (policy.next_attempt(Delivery(f"d-{attempts}", "email", "t", (), attempts=attempts), T0) - T0).total_seconds()
        assert ceiling / 2 <= wait <= ceiling


async def test_refused_recipients_do_not_open_the_circuit_for_everyone_else():
    """A server that refuses one address answered: the channel works. Counted as failures, a few
    bad addresses (found: other orders' refused recipients) held every other message back."""
    refusals = [SendError("SMTP server refused the recipient: 550", permanent=True) for _ in range(6)]
    channel = Recorded(*refusals)
    breaker = CircuitBreaker(threshold=5, cooldown=30)
    notifier = Dispatcher({"webhook": channel}, {"webhook": breaker}, TEMPLATES, Preferences(), RetryPolicy(),
                          timedelta(0))
    for n in range(7):
        ledger, (delivery,), _ = notifier.accept(Ledger(f"o-{n}"), envelope(request(f"n-{n}")), ("t", 0, n), T0)
        begun, attempt, _ = notifier.begin(ledger, delivery, T0)
        done, _ = notifier.finish(begun, attempt, await notifier.send(attempt), T0)
    assert breaker.state == "closed" and done.delivery("n-6/webhook").status == "sent"
    assert len(channel.sent) == 7
