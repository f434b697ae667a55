"""Customer data spreads no further than needed.

Payment instruments travel as the provider's token (``instrument_id``), their type (channel) and,
when the storefront gives them, their last four digits — never a card number. Upstream systems are
outside this project's control, and people type card numbers into free text ("my card 4111 1111
1111 1111 was charged twice"), so every event read from an upstream topic passes through
``mask_card_numbers`` before a processor sees it: a card number anywhere in it becomes
``····1111``. Nothing downstream (outputs, state, changelogs, logs) can then hold one. The
original bytes stay only on the upstream topic itself (and, for messages that cannot be decoded at
all, in the reading processor's dead-letter topic, which only on-call reads).

Which consumers see e-mail, phone and address is decided by the schemas of what each processor
writes: docs/security.md lists them, and tests/integration/test_customer_data.py checks every
topic downstream of the upstream ones, and every log, against that list.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from orderops.codec.avro import KeyNotOrderId
from orderops.model.catalog import UPSTREAM_SYSTEMS, Topic
from orderops.model.envelope import Envelope
from orderops.model.workflow import CAUSE_HEADER, evolve

# 13-19 digits, optionally in groups separated by single spaces or dashes.
_CANDIDATE = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
# What a message's bytes must show for a string in it to hold a candidate: 13 digits in a row once
# single spaces and dashes are dropped. Avro writes a string's UTF-8 as it is; an ASCII digit is
# one byte, a digit of another script (\d matches every script's) is 2-4 bytes, all >= 0x80. So
# with every digit and high byte read as "0", spaces and dashes deleted, any candidate is a run of
# at least 13 "0"s; binary bytes can only add runs (a needless walk, never a missed number). A
# regular expression over the decoded text said the same at ten times the cost.
_DIGITS_AND_HIGH_BYTES_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 or b >= 0x80 else 0x78 for b in range(256))
_THIRTEEN_DIGITS = b"0" * 13


def may_hold_card_number(value: bytes) -> bool:
    """Whether any string in this Avro message could hold a card number (never false for one that does)."""
    return _THIRTEEN_DIGITS in value.translate(_DIGITS_AND_HIGH_BYTES_AS_ZERO, b" -")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def mask_card_numbers(text: str) -> tuple[str, int]:
    """``text`` with every card number (13-19 digits passing the Luhn check, spaces or dashes
    allowed between them) replaced by ``····`` and its last four digits; and how many there were."""
    count = 0

    def mask(match: re.Match[str]) -> str:
        nonlocal count
        digits = re.sub(r"[ -]", "", match.group())
        if not luhn_valid(digits):
            return match.group()
        count += 1
        return f"····{digits[-4:]}"

    return _CANDIDATE.sub(mask, text), count


def scrub(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` with card numbers masked in every string in it; the paths where one was found."""
    if isinstance(value, str):
        masked, count = mask_card_numbers(value)
        return masked, [path or "."] * bool(count)
    if isinstance(value, dict):
        out, found = {}, []
        for k, v in value.items():
            out[k], where = scrub(v, f"{path}.{k}" if path else k)
            found += where
        return out, found
    if isinstance(value, list | tuple):
        items = [scrub(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return type(value)(v for v, _ in items), [p for _, where in items for p in where]
    return value, []


@functools.cache
def written_upstream(topic: Topic) -> bool:
    return bool(set(topic.writers) & set(UPSTREAM_SYSTEMS))


def read_event(codec: Any, key: bytes | None, value: bytes | None, topic: Topic, headers: Any = None,
               inputs: frozenset[str] = frozenset()) -> tuple[Envelope, list[str]]:
    """Decode a message of a catalog topic into its Envelope, card numbers masked if an upstream
    system wrote it; and the paths where one was. A derived record whose cause is on one of the
    reader's ``inputs`` carries that topic (``Envelope.cause_topic``: the reader waits for the
    cause). An order-scoped topic's message must be keyed by its order id (``KeyNotOrderId``).
    Live processors and offline rebuilds both read through here, so both see the same event."""
    envelope = Envelope.from_record(codec.decode(value, topic.value_schema).record)
    if topic.order_scoped and key != envelope.order_id.encode():
        raise KeyNotOrderId(f"{topic.name}: the message's key {key!r} is not its order id {envelope.order_id!r} "
                            f"(event {envelope.event_id}, type {envelope.type}); every message of an order must be "
                            "keyed by its order id, or its events land on other partitions than the order's state. "
                            "The producer must send it again keyed by its order id (a redrive would send the same key).")
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    cause_topic = next((v.decode() for k, v in pairs if k == CAUSE_HEADER and v), None)
    if cause_topic in inputs:
        envelope = evolve(envelope, cause_topic=cause_topic)
    if not written_upstream(topic) or value is None or not may_hold_card_number(value):
        return envelope, []  # the walk (a tenth of a replay's time) can find nothing
    payload, found = scrub(envelope.payload)
    return (evolve(envelope, payload=payload) if found else envelope), found
