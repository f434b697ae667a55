"""Card numbers never get past an upstream topic (orderops.codec.privacy)."""

from __future__ import annotations

import pytest
from orderops_tools.scenario import Story, address, card, customer, line, money

from orderops.codec.avro import Codec, KeyNotOrderId
from orderops.codec.privacy import luhn_valid, mask_card_numbers, read_event, scrub
from orderops.model import catalog


@pytest.mark.parametrize("text, masked, count", [
    ("my card 4111 1111 1111 1111 was charged twice", "my card ····1111 was charged twice", 1),
    ("4111-1111-1111-1111", "····1111", 1),
    ("pan=5500005555555559;", "pan=····5559;", 1),
    ("amex 378282246310005 and visa 4012888888881881", "amex ····0005 and visa ····1881", 2),
    ("order 1234567890123 (not Luhn)", "order 1234567890123 (not Luhn)", 0),
    ("tracking JD000123456", "tracking JD000123456", 0),
    ("phone +49 170 5550123", "phone +49 170 5550123", 0),
    ("41111111111111111111111", "41111111111111111111111", 0),  # 23 digits: not a card number
])
def test_card_numbers_are_masked_and_nothing_else(text, masked, count):
    assert mask_card_numbers(text) == (masked, count)


def test_luhn():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_scrub_says_where():
    value = {"reason": "card 4111111111111111", "lines": [{"comment": "ok"}, {"comment": "4012888888881881"}], "n": 3}
    cleaned, where = scrub(value)
    assert cleaned == {"reason": "card ····1111", "lines": [{"comment": "ok"}, {"comment": "····1881"}], "n": 3}
    assert where == ["reason", "lines[1].comment"]


def read_order_placed(product: str, instrument_id: str, key: bytes | None = b"o-1"):
    """An OrderPlaced of o-1 with this product name and instrument id, written, then read as a
    processor reads it with this key."""
    story = Story("o-1")
    story.on(catalog.STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(), lines=[line("l1", product, 1, "10.00")],
        instruments=[card(instrument_id, "10.00")], shipping_address=address(), total=money("10.00"))
    codec, topic = Codec(), catalog.STOREFRONT_ORDERS
    return read_event(codec, key, codec.encode(topic.value_schema, story.events[0].envelope.to_record()), topic)


@pytest.mark.parametrize("key", [b"o-2", b"o-1 ", None])
def test_an_order_event_keyed_by_anything_but_its_order_id_is_not_read(key):
    """The key picks the partition, so the worker and the state an event meets: an event of o-1
    keyed otherwise would be applied to o-1's state somewhere o-1's other events are not."""
    with pytest.raises(KeyNotOrderId, match=f"key {key!r} is not its order id 'o-1'") as raised:
        read_order_placed("Mug", "tok-1", key)
    assert raised.value.reason == "key-is-not-the-order-id"


def test_upstream_events_are_read_masked_and_outputs_are_left_alone():
    envelope, where = read_order_placed("Mug 4111 1111 1111 1111", "4111111111111111")
    assert envelope.payload["instruments"][0]["instrument_id"] == "····1111"
    assert envelope.payload["lines"][0]["name"] == "Mug ····1111"
    assert where == ["lines[0].name", "instruments[0].instrument_id"]


def test_the_quick_look_at_the_bytes_misses_no_card_number():
    """read_event walks a payload only when its bytes show 13 digits in a row: a card
    number in any script's digits (two, three and four bytes each in UTF-8), between any binary
    bytes, is still seen."""
    import random

    from orderops.codec.privacy import _CANDIDATE, may_hold_card_number

    chance = random.Random(12)
    scripts = ("0123456789", "٠١٢٣٤٥٦٧٨٩", "０１２３４５６７８９", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗")
    assert all(len(script[0].encode()) == size for script, size in zip(scripts, (1, 2, 3, 4), strict=True))
    for _ in range(20_000):
        script = chance.choice(scripts)
        number = "".join(chance.choice(script) for _ in range(chance.randint(13, 19)))
        if chance.random() < 0.5:
            number = chance.choice(" -").join(number[i:i + 4] for i in range(0, len(number), 4))
        text = chance.choice(["", "my card ", "x"]) + number + chance.choice(["", " thanks", "9"])
        noise = [bytes(chance.randrange(256) for _ in range(chance.randint(0, 12))) for _ in range(2)]
        message = noise[0] + text.encode() + noise[1]
        if _CANDIDATE.search(text):
            assert may_hold_card_number(message), (text, message)


def test_the_quick_look_passes_over_what_cannot_hold_one():
    from orderops.codec.privacy import may_hold_card_number

    assert not may_hold_card_number(b"order sim-1-000002:0001, sku 1234567, phone +49 170 5550123")
    assert not may_hold_card_number(b"")
    assert may_hold_card_number(b"4111 1111 1111 1111")


def test_an_arabic_indic_card_number_is_masked_on_read():
    envelope, where = read_order_placed("Mug ٤١١١ ١١١١ ١١١١ ١١١١", "tok-1")
    assert envelope.payload["lines"][0]["name"] == "Mug ····١١١١" and where == ["lines[0].name"]
