"""Every message as the customer gets it: each notification type rendered and composed into the
e-mail the SMTP server receives, then parsed back part by part, as a mail reader would. The
plain and HTML parts say the same thing; the shop's name and sign-off are there; the message is
dated; no internal id shows; every sentence starts with a capital letter, and none is broken
across lines."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from decimal import Decimal
from email import policy as email_policy
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_pure import entries, request

from notifier.channels import compose_email
from notifier.rendering import Shop, Templates, context

DIRECTORY = Path(__file__).resolve().parents[1] / "notifier" / "templates"
SHOP = Shop("Hartmann & Söhne", "Jana from Hartmann & Söhne")
TEMPLATES = Templates(DIRECTORY, shop=SHOP)
SENT = datetime(2026, 11, 3, 10, 30, tzinfo=UTC)
# The facts each producer sends with a type (fulfillment's summaries are its own sentences).
FACTS = {
    "order_confirmed": {"lines": "2"},
    "payment_failed": {"reason": "the card was declined", "customer_action": "use another card"},
    "order_cancelled": {"released_authorizations": "card-1"},
    "backorder_eta_changed": {"slipped": "true", "reason": "supplier delay", "previous_eta": "",
                              "summary": "Teapot is now expected Tue 08 Dec."},
    "delivery_failed": {"reason": "address not found",
                        "summary": "We could not deliver parcel P1 (DHL JD0001): 2 × Blue mug."},
    "line_backordered": {"summary": "Teapot: 1 backordered until Thu 03 Dec."},
    "line_cancelled": {"summary": "Teapot: 1 of 1 cancelled by our warehouse."},
    "order_partly_cancelled": {"summary": "Cancelled as you asked: 1 × Teapot. Part of your order had already left "
                                          "our warehouse and still arrives: 2 × Blue mug."},
    "cancellation_refused": {"summary": "Part of your order had already left our warehouse, so it cannot be "
                                        "cancelled: 2 × Blue mug. Please return what you do not want once it arrives."},
    "shipment_delayed": {"summary": "Parcel P1 (DHL JD0001) is delayed: 2 × Blue mug."},
    "shipment_delivered": {"summary": "Parcel P1 was delivered: 2 × Blue mug."},
    **{t: {"return_id": "r-1", "reason": "every rule passed", "policy": "standard@1"}
       for t in ("return_authorized", "return_rejected", "return_needs_review", "return_received")},
    **{t: {"cause": "return r-1", "methods": "12.50 EUR back to your original payment method"}
       for t in ("refund_issued", "refund_completed")},
    "refund_not_possible": {"cause": "return r-1", "not_refunded": "12.50 EUR, because nothing was captured"},
}
TYPES = sorted(p.stem for p in (DIRECTORY / "en").glob("*.txt"))
INTERNAL_IDS = re.compile(r"\b(l1|l2|card-1|n-1|c-1|e-1)\b|line_id|instrument_id")


class Text(HTMLParser):
    """What an HTML part shows, and its links."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_data(self, data) -> None:
        self.shown.append(data)


def received(notice_type: str, locale: str = "en") -> email.message.EmailMessage:
    payload = request(notice_type=notice_type, locale=locale)
    payload["facts"].update(FACTS.get(notice_type, {}))
    payload["amounts"] = [{"instrument_id": "card-1", "channel": "CARD",
                           "amount": {"amount": Decimal("12.5"), "currency": "EUR"}}]
    rendered = TEMPLATES.render(notice_type, locale, context(entries(payload)))
    raw = compose_email("orders@hartmann.example", "ada@example.com", rendered, f"{notice_type}/email", SENT.timestamp())
    return email.message_from_bytes(raw, policy=email_policy.default)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


@pytest.mark.parametrize("locale", ["en", "de"])
@pytest.mark.parametrize("notice_type", TYPES)
def test_every_message_reads_as_a_shops_message_in_both_parts(notice_type, locale):
    message = received(notice_type, locale)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Date"].datetime == SENT and message["Subject"] and "\n" not in message["Subject"]
    plain = message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    html = message.get_body(preferencelist=("html",)).get_content()

    # The plain part: greeting, paragraphs, the shop's sign-off; one sentence or item per line.
    paragraphs = [p.splitlines() for p in plain.strip().split("\n\n")]
    assert paragraphs[0][0].startswith(("Hello Ada,", "Hallo Ada,")) and paragraphs[-1][-1] == SHOP.signature
    for paragraph in paragraphs[:-1]:  # the last: the sign-off ("Viele Grüße" takes no comma)
        for line in paragraph[:-1]:  # a line another follows ends a sentence or an item
            assert line.startswith("- ") or line.rstrip()[-1] in ".:!?,", f"{notice_type}: broken line {line!r}"
        for line in paragraph:
            if line.startswith(("- ", "Hello ", "Hallo ")) or line == SHOP.signature:
                continue
            for sentence in sentences(line):
                assert not sentence[0].islower(), f"{notice_type}: {sentence!r} starts in lower case"
    assert not INTERNAL_IDS.search(plain), f"{notice_type}: {INTERNAL_IDS.search(plain).group()} in {plain!r}"

    # The HTML part says what the plain part says, escaped, under the shop's name.
    shown = Text()
    shown.feed(html)
    text = " ".join(" ".join(shown.shown).split())
    assert html.startswith("<!DOCTYPE html>") and f'lang="{locale if notice_type in DE else "en"}"' in html
    assert "Hartmann &amp; Söhne" in html and "Hartmann & Söhne" in text
    for line in plain.splitlines():
        if line.strip():
            assert " ".join(line.removeprefix("- ").split()) in text, f"{notice_type}: {line!r} not in the HTML part"
    assert not INTERNAL_IDS.search(text)
    if "https://" in plain:
        assert shown.links == re.findall(r"https://\S+", plain)


DE = {p.stem for p in (DIRECTORY / "de").glob("*.txt")}


def test_a_request_cannot_put_markup_into_the_html_part():
    payload = request(notice_type="delivery_failed")
    payload["facts"].update(reason='<script>alert("x")</script>', summary="We could not deliver parcel P1.")
    rendered = TEMPLATES.render("delivery_failed", "en", context(entries(payload)))
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html


def test_without_a_signature_the_locales_sign_off_names_the_shop():
    plain = Templates(DIRECTORY, shop=Shop("Hartmann")).render("order_confirmed", "de", context(entries(
        {**request(notice_type="order_confirmed", locale="de"),
         "facts": {"order_id": "o-1", "lines": "2", "summary": ""}})))
    assert plain.body.endswith("Viele Grüße\nIhr Team von Hartmann\n") and "Ihr Team von Hartmann" in plain.html
