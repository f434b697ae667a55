from datetime import UTC, datetime

import pytest

from orderops.codec.avro import NotSingleObjectEncoded
from orderops.model.catalog import DEAD_LETTER_TOPICS, ORDER_STATE, STOREFRONT_ORDERS
from orderops.runtime import deadletter


def test_headers_keep_the_original_and_say_where_and_why():
    moment = datetime(2026, 11, 2, 9, tzinfo=UTC)
    headers = deadletter.dead_letter_headers(
        [("trace-id", b"t-1"), ("error", b"spoofed by the producer")], topic=STOREFRONT_ORDERS.name, partition=3,
        offset=42, error=NotSingleObjectEncoded("no marker"), service="order-state", failed_at=moment)
    as_dict = dict(headers)
    assert as_dict["trace-id"] == b"t-1"
    assert [k for k, _ in headers].count("error") == 1, "a producer's header must not pass for ours"
    assert as_dict["origin-topic"] == STOREFRONT_ORDERS.name.encode()
    assert as_dict["origin-partition"] == b"3" and as_dict["origin-offset"] == b"42"
    assert as_dict["error"] == b"NotSingleObjectEncoded: no marker"
    assert as_dict["error-class"] == b"not-single-object-encoded"
    assert as_dict["service"] == b"order-state"
    assert as_dict["failed-at"] == b"2026-11-02T09:00:00.000+00:00"


def test_processing_errors_are_classed_and_long_messages_cut():
    headers = dict(deadletter.dead_letter_headers(None, topic="t", partition=0, offset=0,
                                                  error=ValueError("x" * 10_000), service="s"))
    assert headers["error-class"] == b"processing-error"
    assert len(headers["error"]) == deadletter.MAX_ERROR_BYTES


def test_a_redrive_ledger_entry_reads_back_and_nothing_else_passes_for_one():
    dlq, origin = DEAD_LETTER_TOPICS[ORDER_STATE].name, STOREFRONT_ORDERS.name
    key, value = deadletter.redrive_entry(dlq, 2, 41, origin, datetime(2026, 12, 1, tzinfo=UTC))
    assert key == b"2:41" and deadletter.read_redrive_entry("2:41", value)["origin"] == origin
    for bad_key, bad_value in (("2:41", b"\xc3\x01"), ("2:41", b"[]"), ("2:41", b'{"dlq": "x"}'), ("9:9", value),
                               ("2:41", value.replace(dlq.encode(), origin.encode()))):
        with pytest.raises(ValueError):
            deadletter.read_redrive_entry(bad_key, bad_value)
