"""The hold-back rule (orderops.runtime.ordering): a fetched batch in write order across topics, each
partition's records in offset order, and records that may have older ones of their task still on
the broker wait for the next fetch."""

from __future__ import annotations

import logging

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from orderops.model.catalog import FULFILLMENT, PAYMENTS_EVENTS, RETURNS_POLICIES, STOREFRONT_ORDERS, TIMER_TOPICS
from orderops.runtime.ordering import (
    UNKNOWN_LAG,
    held_back,
    held_within,
    holding,
    in_write_order,
    lag_of,
    with_held,
    write_order,
)

ORDERS, PAYMENTS = TP(STOREFRONT_ORDERS.name, 3), TP(PAYMENTS_EVENTS.name, 3)


def record(tp: TP, offset: int, timestamp: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, timestamp, 0, b"k", b"v", None, 1, 1, ())


def test_a_backlog_is_applied_as_it_was_written_not_topic_by_topic():
    placed, authorized, cancelled = record(ORDERS, 0, 1000), record(PAYMENTS, 0, 2000), record(ORDERS, 1, 3000)
    merged = [(tp, r.offset) for tp, r in write_order({ORDERS: [placed, cancelled], PAYMENTS: [authorized]})]
    assert merged == [(ORDERS, 0), (PAYMENTS, 0), (ORDERS, 1)]


def test_a_partition_keeps_its_offset_order_whatever_its_timestamps():
    skewed = [record(ORDERS, 0, 5000), record(ORDERS, 1, 1000)]  # producer clocks: CreateTime may go back
    merged = [(tp, r.offset) for tp, r in write_order({ORDERS: skewed, PAYMENTS: [record(PAYMENTS, 0, 3000)]})]
    assert merged == [(PAYMENTS, 0), (ORDERS, 0), (ORDERS, 1)]


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


def test_a_caught_up_partition_is_caught_up_as_of_the_fetch_that_said_so():
    """A partition left out of the later fetches (its records were still buffered) reads lag 0 from
    its last fetch; a record written to it since is stamped after that fetch, and may be older than
    a newer fetch's records of another partition: those wait until it is fetched again."""
    batch = {ORDERS: [record(ORDERS, 7, 1000), record(ORDERS, 8, 3000)]}
    task = {3: [ORDERS, PAYMENTS]}.get
    caught_up = {ORDERS: 0, PAYMENTS: 0}.get
    assert held_back(batch, task, caught_up, {ORDERS: 3500, PAYMENTS: 2000}.get) == {ORDERS: 8}
    assert held_back(batch, task, caught_up, {ORDERS: 3500, PAYMENTS: 3000}.get) == {}  # fetched since 3000
    assert held_back(batch, task, caught_up, {ORDERS: 3500, PAYMENTS: None}.get) == {}  # not known: no bound
    # The usual case: every partition of the broker in one fetch, the records fetched before it was read.
    assert held_back(batch, task, caught_up, {ORDERS: 3001, PAYMENTS: 3001}.get) == {}
    assert held_within(batch, {3: [ORDERS, PAYMENTS]}, caught_up, {}, limit=5.0, now=1.0,
                       polled_at={ORDERS: 3500, PAYMENTS: 2000}.get) == {ORDERS: 8}


def test_only_order_scoped_logs_are_merged_by_time():
    assert in_write_order(ORDERS.topic) and in_write_order(PAYMENTS.topic) and in_write_order(TIMER_TOPICS[FULFILLMENT].name)
    assert not in_write_order(RETURNS_POLICIES.name)  # compacted
    assert not in_write_order("fulfillment-orders-changelog")


def test_a_task_that_waited_too_long_for_a_lagging_partition_goes_on_without_it(caplog):
    batch = {ORDERS: [record(ORDERS, 7, 1000)]}
    assigned, lag, idle = {3: [ORDERS, PAYMENTS]}, {ORDERS: 0, PAYMENTS: 5}.get, {}
    assert held_within(batch, assigned, lag, idle, limit=30.0, now=100.0) == {ORDERS: 7}
    assert held_within(batch, assigned, lag, idle, limit=30.0, now=129.0) == {ORDERS: 7}
    with caplog.at_level(logging.WARNING, logger="orderops.runtime.ordering"):
        assert held_within(batch, assigned, lag, idle, limit=30.0, now=131.0) == {} and idle == {}
    said = caplog.records[-1]
    assert said.levelno == logging.WARNING and "waited 31 s" in said.getMessage()
    assert f"{PAYMENTS.topic}[3] (5 record(s) not fetched)" in said.getMessage() and "out of write order" in said.getMessage()


def test_a_task_that_applies_some_records_while_it_holds_the_newest_is_not_stuck():
    """While records flow, a task's partitions are caught up as of different fetches: each batch
    applies the records older than all of them and holds the newest. That is progress, however long
    it goes on; the limit counts only a wait in which nothing of the task was applied."""
    assigned, caught_up, idle = {3: [ORDERS, PAYMENTS]}, {ORDERS: 0, PAYMENTS: 0}.get, {}
    for second in range(100):
        at = 1000 * second
        batch = {ORDERS: [record(ORDERS, 2 * second, at), record(ORDERS, 2 * second + 1, at + 900)]}
        fetched = {ORDERS: at + 950, PAYMENTS: at + 500}.get  # PAYMENTS answered before the second record came
        assert held_within(batch, assigned, caught_up, idle, limit=30.0, now=float(second),
                           polled_at=fetched) == {ORDERS: 2 * second + 1}
    assert idle == {3: 99.0}


def test_the_partitions_named_as_holding_a_task_back():
    lag, fetched = {ORDERS: 0, PAYMENTS: 0}.get, {ORDERS: 99_500, PAYMENTS: 80_000}.get
    assert holding([ORDERS, PAYMENTS], lag, fetched, now_ms=100_000) == [f"{PAYMENTS.topic}[3] (last fetched 20 s ago)"]
    assert holding([ORDERS, PAYMENTS], {ORDERS: None, PAYMENTS: 2}.get, fetched, now_ms=100_000) == [
        f"{PAYMENTS.topic}[3] (2 record(s) not fetched)"]  # a paused partition holds nothing back


def test_a_partition_not_fetched_yet_counts_as_lagging_and_a_paused_one_is_not_waited_for():
    assert lag_of(None, None, paused=False) == UNKNOWN_LAG
    assert lag_of(10, None, paused=False) == UNKNOWN_LAG
    assert lag_of(10, 15, paused=False) == 5 and lag_of(15, 15, paused=False) == 0
    assert lag_of(10, 15, paused=True) is None


def test_held_records_fetched_again_are_applied_once_in_offset_order():
    held = [record(ORDERS, 8, 3000)]
    again = [record(ORDERS, 8, 3000), record(ORDERS, 9, 4000)]
    assert [r.offset for r in with_held(held, again)] == [8, 9]
