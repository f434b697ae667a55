"""A fetched batch in write order across topics (orderops.ordering): the scheduler Faust asks for
the next records hands out the earliest written first, each partition's records in offset order."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from orderops.catalog import PAYMENTS_EVENTS, STOREFRONT_ORDERS
from orderops.ordering import EventTimeOrder, first_not_handed_on, write_order

ORDERS, PAYMENTS = TP(STOREFRONT_ORDERS.name, 3), TP(PAYMENTS_EVENTS.name, 3)


def record(tp: TP, offset: int, timestamp: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, timestamp, 0, b"k", b"v", None, 1, 1, ())


def test_a_backlog_is_handed_out_as_it_was_written_not_round_robin():
    placed, authorized, cancelled = record(ORDERS, 0, 1000), record(PAYMENTS, 0, 2000), record(ORDERS, 1, 3000)
    handed = [(tp, r.offset) for tp, r in EventTimeOrder().iterate({ORDERS: [placed, cancelled], PAYMENTS: [authorized]})]
    assert handed == [(ORDERS, 0), (PAYMENTS, 0), (ORDERS, 1)]  # Faust's round-robin: ORDERS 0, 1, then PAYMENTS


def test_a_partition_keeps_its_offset_order_whatever_its_timestamps():
    skewed = [record(ORDERS, 0, 5000), record(ORDERS, 1, 1000)]  # producer clocks: CreateTime may go back
    handed = [(tp, r.offset) for tp, r in EventTimeOrder().iterate({ORDERS: skewed, PAYMENTS: [record(PAYMENTS, 0, 3000)]})]
    assert [o for tp, o in handed if tp == ORDERS] == [0, 1]
    assert handed == [(PAYMENTS, 0), (ORDERS, 0), (ORDERS, 1)]


def test_what_faust_takes_but_never_hands_on_is_read_again_from_its_first_record():
    """Faust stops a batch when a rebalance starts, dropping the record in hand; aiokafka has moved
    past it. The scheduler sends each partition back to its first record not handed on."""
    batch = {ORDERS: [record(ORDERS, 7, 1000), record(ORDERS, 8, 3000)], PAYMENTS: [record(PAYMENTS, 4, 2000)]}
    merged = write_order(batch)
    assert [(tp, r.offset) for tp, r in merged] == [(ORDERS, 7), (PAYMENTS, 4), (ORDERS, 8)]
    handed_on = {0}  # ORDERS 7 handed on; PAYMENTS 4 taken when the rebalance began, never handed on
    assert first_not_handed_on(merged, handed_on) == {PAYMENTS: 4, ORDERS: 8}
    assert first_not_handed_on(merged, {0, 1, 2}) == {}


def test_the_scheduler_counts_a_record_handed_on_when_faust_asks_for_the_next():
    scheduler = EventTimeOrder()  # no app: nothing to seek, but the bookkeeping is the same
    seen = []
    scheduler._read_again = seen.append
    handed = scheduler.iterate({ORDERS: [record(ORDERS, 0, 1000), record(ORDERS, 1, 2000), record(ORDERS, 2, 3000)]})
    next(handed)
    next(handed)  # offset 1 is in Faust's hand when it stops
    handed.close()
    assert seen == [{ORDERS: 1}]


def test_during_a_rebalance_nothing_is_sought_the_rebalance_reads_again_from_the_commits(caplog):
    """Records Faust handed on and then cleared from the agents' queues lie before the first record
    not handed on: seeking there after the rebalance's own seek to the commits would skip them."""

    class Rebalancing:
        rebalancing, consumer_generation_id, _consumer = True, 3, object()

    scheduler = EventTimeOrder.for_app(Rebalancing())()
    with caplog.at_level("INFO", logger="orderops.ordering"):
        scheduler._read_again({ORDERS: 8})
    assert "the rebalance under way re-reads from the last commits" in caplog.text


def test_continuity_applies_a_partitions_records_in_order_and_sends_the_consumer_back_to_a_hole():
    from orderops.ordering import Continuity

    continuity = Continuity(lambda topic: topic == ORDERS.topic)
    assert continuity.admit(ORDERS, 5, baseline=5) == (True, None)
    assert continuity.admit(ORDERS, 6) == (True, None)
    assert continuity.admit(ORDERS, 8) == (False, 7)  # 7 never arrived: read again from 7
    assert continuity.admit(ORDERS, 9) == (False, None)  # fetched before the seek: it comes again
    assert continuity.admit(ORDERS, 7) == (True, None)  # the re-read
    assert continuity.admit(ORDERS, 8) == (True, None)
    assert continuity.admit(ORDERS, 3) == (True, None)  # sent back further (a rebalance): applied again
    assert continuity.admit(PAYMENTS, 40) == (True, None)  # not checked (e.g. a compacted topic)


def test_continuity_checks_the_first_record_against_the_commit():
    from orderops.ordering import Continuity

    continuity = Continuity(lambda topic: True)
    assert continuity.admit(ORDERS, 1, baseline=0) == (False, 0)  # offset 0 dropped right after a restart
    continuity.reset()
    assert continuity.admit(ORDERS, 1, baseline=None) == (True, None)  # nothing known: the first one sets it


def test_continuity_asks_again_when_the_re_read_does_not_come():
    from orderops.ordering import Continuity

    continuity = Continuity(lambda topic: True)
    continuity.admit(ORDERS, 0, baseline=0)
    asks = [continuity.admit(ORDERS, offset)[1] for offset in range(2, 2 + Continuity.RESEEK_AFTER + 1)]
    assert asks[0] == 1 and asks[-1] == 1 and asks.count(1) == 2


def test_after_a_rewind_the_records_fetched_before_it_are_not_handed_on_until_the_re_read_begins():
    scheduler = EventTimeOrder()
    scheduler._read_again = lambda resume: None
    scheduler.rewind(ORDERS, 7)
    stale = [(tp, r.offset) for tp, r in scheduler.iterate({ORDERS: [record(ORDERS, 9, 1), record(ORDERS, 10, 2)],
                                                           PAYMENTS: [record(PAYMENTS, 4, 3)]})]
    assert stale == [(PAYMENTS, 4)]
    again = [(tp, r.offset) for tp, r in scheduler.iterate({ORDERS: [record(ORDERS, 7, 1), record(ORDERS, 8, 2)]})]
    assert again == [(ORDERS, 7), (ORDERS, 8)]
