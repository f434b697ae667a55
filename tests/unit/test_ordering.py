"""A fetched batch in write order across topics (orderops.ordering): the scheduler Faust asks for
the next records hands out the earliest written first, each partition's records in offset order."""

from __future__ import annotations

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from orderops.catalog import FULFILLMENT, PAYMENTS_EVENTS, RETURNS_POLICIES, STOREFRONT_ORDERS, TIMER_TOPICS
from orderops.ordering import EventTimeOrder, first_not_handed_on, held_back, in_write_order, write_order

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


async def test_asked_during_a_rebalance_it_seeks_only_if_the_rebalance_had_already_assigned():
    """Records Faust handed on and then cleared from the agents' queues lie before the first record
    not handed on: seeking there after the rebalance's own seek to the commits would skip them. But a
    record lost after the rebalance assigned (and sought) is read again once the rebalance ends."""
    import asyncio

    class Consumer:
        def __init__(self) -> None:
            self.sought: list[tuple[TP, int]] = []

        async def seek(self, tp: TP, offset: int) -> None:
            self.sought.append((tp, offset))

    class App:
        rebalancing, consumer_generation_id = True, 3

        def __init__(self) -> None:
            self._consumer = Consumer()

    for generation_after, sought in ((4, []), (3, [(ORDERS, 8)])):
        app = App()
        scheduler = EventTimeOrder.for_app(app)()
        scheduler._read_again({ORDERS: 8})
        await asyncio.sleep(0.15)
        assert app._consumer.sought == []  # not while the rebalance is under way
        app.consumer_generation_id, app.rebalancing = generation_after, False
        await asyncio.sleep(0.25)
        assert app._consumer.sought == sought

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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_record_dropped_at_a_partitions_tail_is_found_once_the_partition_is_quiet():
    from orderops.ordering import Continuity

    clock = Clock()
    continuity = Continuity(lambda topic: topic == ORDERS.topic, clock)
    for offset in (5, 6):
        continuity.admit(ORDERS, offset, baseline=5)
    highwaters = {ORDERS: 8, PAYMENTS: 9}  # offset 7 of ORDERS is on the broker and never arrived
    commits = {ORDERS: 5, PAYMENTS: 2}
    taken = {ORDERS: 8, PAYMENTS: 9}  # the consumer took both partitions to their ends

    def overdue():
        return continuity.overdue([ORDERS, PAYMENTS], commits.get, highwaters.get, quiet_for=15, taken=taken.get)

    clock.now += 14
    assert overdue() == {}  # not quiet long enough: it may still be on its way
    clock.now += 1
    assert overdue() == {ORDERS: 7}  # PAYMENTS is not checked
    clock.now += 1
    assert overdue() == {}  # the re-read is under way: not asked again before another quiet period
    clock.now += 15
    assert overdue() == {ORDERS: 7}
    continuity.admit(ORDERS, 7)
    clock.now += 60
    assert overdue() == {}  # everything on the broker arrived


def test_a_partition_nothing_arrived_from_is_checked_against_its_commit():
    from orderops.ordering import Continuity

    clock = Clock()
    continuity = Continuity(lambda topic: True, clock)
    clock.now += 20
    taken = {ORDERS: 3, PAYMENTS: 6}.get
    assert continuity.overdue([ORDERS, PAYMENTS], {ORDERS: 3, PAYMENTS: 4}.get, {ORDERS: 3, PAYMENTS: 6}.get, 15,
                              taken) == {PAYMENTS: 4}
    assert continuity.overdue([ORDERS], {}.get, {ORDERS: 3}.get, 0, taken) == {}  # nothing known of where it starts
    continuity.reset()
    assert continuity.overdue([PAYMENTS], {PAYMENTS: 4}.get, {PAYMENTS: 6}.get, 15, taken) == {}  # positions set anew


def test_a_quiet_partition_whose_records_were_not_taken_yet_is_waited_for_not_read_again():
    """Draining a backlog merged by event time, a processor's outputs (newer) wait unfetched or held
    for their task while older records are applied. The bench found the tail check taking
    them for drops: read again from the start, every 15 s, the timeline applied records twice and
    spent half its CPU on it. A record never taken counts as lost only after STALLED_AFTER quiet
    periods (a fetch that never came)."""
    from orderops.ordering import Continuity

    clock = Clock()
    continuity = Continuity(lambda topic: True, clock)
    commits, highwaters = {ORDERS: 0, PAYMENTS: 0}, {ORDERS: 4000, PAYMENTS: 900}
    taken = {ORDERS: 0}  # ORDERS fetched up to where it starts (nothing let go); PAYMENTS not known yet

    def overdue():
        return continuity.overdue([ORDERS, PAYMENTS], commits.get, highwaters.get, 15, taken.get)

    clock.now += 16
    assert overdue() == {}
    clock.now += 15 * Continuity.STALLED_AFTER
    assert overdue() == {ORDERS: 0, PAYMENTS: 0}  # so long without a fetch: the seek back wakes the fetcher


def test_a_record_just_written_to_a_partition_quiet_since_the_start_is_not_taken_for_lost():
    """A partition that never had a record is quiet from the start; its first record, written long
    after, is on its way, not lost (found: `make run`, returns' first timer tick on a partition read
    again 2 ms after it was written, with a warning)."""
    from orderops.ordering import Continuity

    clock = Clock()
    continuity = Continuity(lambda topic: True, clock)
    commits, highwaters, taken = {ORDERS: 0}, {ORDERS: 0}, {}

    def overdue():
        return continuity.overdue([ORDERS], commits.get, highwaters.get, 15, taken.get)

    clock.now += 120
    assert overdue() == {}  # nothing on the broker
    highwaters[ORDERS] = 1  # its first record is written
    assert overdue() == {}
    clock.now += 15 * Continuity.STALLED_AFTER - 1
    assert overdue() == {}
    clock.now += 1
    assert overdue() == {ORDERS: 0}  # on the broker so long and never fetched: read again


def test_the_scheduler_says_how_far_it_let_records_go_and_keeps_what_it_holds_back():
    """What the tail check may call dropped: below the fetch position, and not held for its task."""

    class State:
        def __init__(self, position):
            self._position, self.paused, self.highwater = position, False, position

    scheduler = EventTimeOrder()
    scheduler._read_again = lambda resume: None
    scheduler._partition_states = lambda: {ORDERS: State(9), PAYMENTS: State(5)}
    scheduler._waiting = lambda records: {ORDERS: 8}
    handed = []
    batch = scheduler.iterate({ORDERS: [record(ORDERS, 7, 1000), record(ORDERS, 8, 3000)],
                               PAYMENTS: [record(PAYMENTS, 4, 2000)]})
    for tp, r in batch:
        assert scheduler.handing_out
        handed.append((tp, r.offset))
    assert handed == [(ORDERS, 7), (PAYMENTS, 4)] and not scheduler.handing_out
    assert scheduler.taken() == {ORDERS: 8, PAYMENTS: 5}  # ORDERS' 8 is held back, not let go


def test_records_wait_for_a_partition_of_their_task_that_still_has_older_ones_on_the_broker():
    """After a restart the storefront partition's backlog came in one fetch and the payments one's in
    the next: a cancellation was applied before the authorization written a second earlier."""
    batch = {ORDERS: [record(ORDERS, 7, 1000), record(ORDERS, 8, 3000)]}
    task = {3: [ORDERS, PAYMENTS]}.get
    assert held_back(batch, task, {ORDERS: 0, PAYMENTS: 5}.get) == {ORDERS: 7}  # all of it waits for PAYMENTS
    assert held_back(batch, task, {ORDERS: 0, PAYMENTS: 0}.get) == {}  # PAYMENTS has nothing more: go on
    assert held_back(batch, task, {ORDERS: 0, PAYMENTS: None}.get) == {}  # paused, or not ours: nothing to wait for

    both = {**batch, PAYMENTS: [record(PAYMENTS, 4, 2000)]}
    # PAYMENTS has more after 2000: ORDERS' record of 3000 waits, the rest goes on in write order
    assert held_back(both, task, {ORDERS: 0, PAYMENTS: 9}.get) == {ORDERS: 8}
    assert held_back(both, task, {ORDERS: 2, PAYMENTS: 9}.get) == {ORDERS: 8}
    assert held_back(both, task, {ORDERS: 4, PAYMENTS: 0}.get) == {}  # ORDERS' next records are newer than 3000

    other_task = TP(PAYMENTS_EVENTS.name, 5)
    assert held_back({other_task: [record(other_task, 0, 9000)]}, {5: [other_task]}.get, {ORDERS: 0, PAYMENTS: 5}.get) == {}


def test_only_order_scoped_logs_are_merged_by_time():
    assert in_write_order(ORDERS.topic) and in_write_order(PAYMENTS.topic) and in_write_order(TIMER_TOPICS[FULFILLMENT].name)
    assert not in_write_order(RETURNS_POLICIES.name)  # compacted
    assert not in_write_order("fulfillment-orders-changelog")


def test_a_record_that_overtakes_a_lost_one_of_its_task_is_read_again_with_the_whole_task():
    """The scheduler handed on a warehouse cancellation, then a capture; Faust dropped the first. The
    capture must not be applied before it: it, the lost record and the task's records still in
    flight are all read again."""
    from orderops.ordering import InFlight

    other = TP(PAYMENTS_EVENTS.name, 4)  # another task: unaffected
    in_flight = InFlight()
    for tp, offset in [(ORDERS, 67), (other, 10), (PAYMENTS, 33), (ORDERS, 68), (PAYMENTS, 34)]:
        in_flight.handed(tp, offset)
    assert in_flight.arrived(other, 10) == {}
    assert in_flight.arrived(PAYMENTS, 33) == {ORDERS: 67, PAYMENTS: 33}  # ORDERS 67 never came
    assert in_flight.arrived(ORDERS, 68) == {} and in_flight.arrived(PAYMENTS, 34) == {}  # now unknown: skipped by Continuity

    in_flight.handed(ORDERS, 67)  # the re-read, in write order
    in_flight.handed(PAYMENTS, 33)
    assert in_flight.arrived(ORDERS, 67) == {} and in_flight.arrived(PAYMENTS, 33) == {}


def test_a_record_that_overtakes_a_lost_one_of_its_own_partition_is_read_again_from_the_lost_one():
    """Faust dropped an order's OrderPlaced (offset 0) as a second worker joined; offset 1 arrived first.
    The partition is read again from 0, not from 1 (found: the re-read started at 1, and the order's
    support view never had its placement: the two-worker test)."""
    from orderops.ordering import InFlight

    in_flight = InFlight()
    for tp, offset in [(ORDERS, 0), (ORDERS, 1), (PAYMENTS, 5)]:
        in_flight.handed(tp, offset)
    assert in_flight.arrived(ORDERS, 1) == {ORDERS: 0, PAYMENTS: 5}


def test_continuity_skips_what_arrives_after_a_record_sent_back_until_the_re_read_comes():
    from orderops.ordering import Continuity

    continuity = Continuity(lambda topic: True)
    continuity.admit(ORDERS, 66)
    continuity.expect(ORDERS, 67)
    assert continuity.admit(ORDERS, 68) == (False, None)  # in flight behind it: skipped, no second seek
    assert continuity.admit(ORDERS, 67) == (True, None)


def test_a_record_handed_on_again_after_a_seek_back_is_expected_in_its_new_place():
    """Faust stopped with a record in hand; the scheduler sought back and handed it on again after
    another partition's record. Both arrive in the new order: no loss (found: a bad message
    dead-lettered twice, read again for a loss that was not one)."""
    from orderops.ordering import InFlight

    in_flight = InFlight()
    in_flight.handed(ORDERS, 3)  # in Faust's hand when it stopped: never delivered
    in_flight.handed(PAYMENTS, 9)
    in_flight.handed(ORDERS, 3)  # the re-read
    assert in_flight.arrived(PAYMENTS, 9) == {}
    assert in_flight.arrived(ORDERS, 3) == {}


def test_records_held_for_their_task_are_kept_and_come_first_in_the_next_batch():
    """Sought back and fetched again, held records once came 15 s late (the re-fetch was skipped at a
    rebalance): they are kept instead, and handed on before the partition's newer records."""
    scheduler = EventTimeOrder()
    sought = []
    scheduler._read_again = sought.append
    waits = iter([{ORDERS: 8}, {}])
    scheduler._waiting = lambda records: next(waits)
    first = [(tp, r.offset) for tp, r in scheduler.iterate(
        {ORDERS: [record(ORDERS, 7, 1000), record(ORDERS, 8, 3000)], PAYMENTS: [record(PAYMENTS, 4, 2000)]})]
    assert first == [(ORDERS, 7), (PAYMENTS, 4)] and sought == []
    second = [(tp, r.offset) for tp, r in scheduler.iterate({ORDERS: [record(ORDERS, 9, 4000)]})]
    assert second == [(ORDERS, 8), (ORDERS, 9)] and sought == []
    scheduler.forget_rewinds()  # a rebalance: partitions go back to their commits, nothing is kept
    assert scheduler._held == {}


def test_held_records_fetched_again_after_a_seek_back_are_handed_on_once():
    """A hole sent the partition back while some of its records were held for their task: the next
    fetch holds them again. Handed on twice, Faust dropped the second copy as already read, and the
    task's records after it looked like ones that overtook a lost one, read again without end."""
    scheduler = EventTimeOrder()
    scheduler._read_again = lambda resume: None
    waits = iter([{ORDERS: 8}, {}])
    scheduler._waiting = lambda records: next(waits)
    list(scheduler.iterate({ORDERS: [record(ORDERS, 7, 1000), record(ORDERS, 8, 3000)], PAYMENTS: [record(PAYMENTS, 4, 2000)]}))
    refetched = [record(ORDERS, 8, 3000), record(ORDERS, 9, 4000)]
    second = [(tp, r.offset) for tp, r in scheduler.iterate({ORDERS: refetched})]
    assert second == [(ORDERS, 8), (ORDERS, 9)]


def test_a_record_faust_would_drop_as_already_read_is_not_awaited():
    """Faust's drain loop drops a record below its read offset without a word; awaited by the task's
    in-flight check, it never came, and the task was read again from it every 55 ms."""
    from types import SimpleNamespace

    from orderops.ordering import InFlight

    in_flight = InFlight()
    consumer = SimpleNamespace(_read_offset={ORDERS: 9}, _active_partitions=None)
    scheduler = EventTimeOrder.for_app(SimpleNamespace(_consumer=consumer), in_flight)()
    scheduler._read_again = lambda resume: pytest.fail(f"nothing is lost, yet read again: {resume}")
    batch = {ORDERS: [record(ORDERS, 8, 1000), record(ORDERS, 9, 3000)], PAYMENTS: [record(PAYMENTS, 4, 2000)]}
    handed = [(tp, r.offset) for tp, r in scheduler.iterate(batch)]
    assert handed == [(PAYMENTS, 4), (ORDERS, 9)]
    assert in_flight.arrived(PAYMENTS, 4) == {} and in_flight.arrived(ORDERS, 9) == {}
