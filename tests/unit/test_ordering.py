"""Inputs in write order across topics (orderops.ordering): the scheduler Faust asks for the next
records hands out the earliest written first, and holds one while a partition of the same orders
is behind."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from orderops.catalog import PAYMENTS_EVENTS, STOREFRONT_ORDERS
from orderops.ordering import EventTimeOrder, next_record

ORDERS, PAYMENTS = TP(STOREFRONT_ORDERS.name, 3), TP(PAYMENTS_EVENTS.name, 3)
OTHER_PAYMENTS = TP(PAYMENTS_EVENTS.name, 4)


def record(tp: TP, offset: int, timestamp: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, timestamp, 0, b"k", b"v", None, 1, 1, ())


def test_a_backlog_is_handed_out_as_it_was_written_not_round_robin():
    scheduler = EventTimeOrder()
    placed, authorized, cancelled = record(ORDERS, 0, 1000), record(PAYMENTS, 0, 2000), record(ORDERS, 1, 3000)
    handed = [(tp, r.offset) for tp, r in scheduler.iterate({ORDERS: [placed, cancelled], PAYMENTS: [authorized]})]
    assert handed == [(ORDERS, 0), (PAYMENTS, 0), (ORDERS, 1)]  # Faust's round-robin: ORDERS 0, 1, then PAYMENTS


def test_a_record_waits_while_the_same_orders_partition_of_another_topic_is_behind():
    heads = {ORDERS: 3000}
    assert next_record(heads, behind={PAYMENTS}) is None, "payments of these orders may hold an earlier event"
    assert next_record(heads, behind={OTHER_PAYMENTS}) == ORDERS, "other orders do not hold it"
    assert next_record(heads, behind=set()) == ORDERS
    assert next_record({}, behind=set()) is None


def test_what_is_held_comes_out_with_the_next_fetch_in_order():
    scheduler = EventTimeOrder()
    assert [r.offset for _, r in scheduler.iterate({ORDERS: [record(ORDERS, 0, 1000)]})] == [0]
    later = scheduler.iterate({PAYMENTS: [record(PAYMENTS, 0, 500), record(PAYMENTS, 1, 4000)],
                               ORDERS: [record(ORDERS, 1, 2000)]})
    assert [(tp.topic, r.offset) for tp, r in later] == [(PAYMENTS.topic, 0), (ORDERS.topic, 1), (PAYMENTS.topic, 1)]


def test_nothing_fetched_is_lost_when_faust_stops_early():
    """Faust stops iterating when a rebalance starts, dropping the record it was just given: that
    record (and every one after it) comes again with the next fetch."""
    scheduler = EventTimeOrder()
    batch = {ORDERS: [record(ORDERS, 0, 1000), record(ORDERS, 1, 2000), record(ORDERS, 2, 3000)]}
    handed = scheduler.iterate(batch)
    assert next(handed)[1].offset == 0
    assert next(handed)[1].offset == 1  # given to Faust, which stops here without handing it on
    again = [r.offset for _, r in scheduler.iterate({ORDERS: [record(ORDERS, 1, 2000), record(ORDERS, 2, 3000)]})]
    assert again == [1, 2], "offset 1 again (it was never handed on), and no record twice"
