"""The hold-back rule: a fetched batch's records are applied in the order they were written.

An order's events arrive on several topics (storefront, payments, warehouse, other processors'
outputs), one partition each, all partitioned by order id. Kafka orders each partition, not the
partitions between them. Live, the topics are read as they are written and it does not show;
after a restart, a processor fetches a backlog of every partition at once, and taken topic by
topic a cancellation was applied before the authorization written seconds earlier: another
outcome than the written order gives (found by the fault test, which replays the inputs in write
order and compares). So a batch is merged by broker timestamp (``write_order``), each partition's
records in offset order, and records that may have older ones of their task still on the broker
wait for the next fetch (``held_within``). The batch runtime (``orderops.runtime.batch``) applies it.
"""

from __future__ import annotations

import functools
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orderops.model import catalog

log = logging.getLogger("orderops.runtime.ordering")


@functools.cache
def in_write_order(topic: str) -> bool:
    """Topics whose records are handed out in write order across a task: the order-scoped ones, each
    a log of one order's events (not compacted topics, nor Faust's changelogs)."""
    found = catalog.BY_NAME.get(topic)
    return found is not None and found.merged_by_time


def write_order(records: Mapping[Any, list[Any]]) -> list[tuple[Any, Any]]:
    """A fetched batch merged by broker timestamp, ties by the catalog's rank (``catalog.write_rank``:
    an order placed in the same millisecond as its authorization is met first, and nothing parks
    for it); a partition's records keep their offset order (``heapq.merge`` takes from each list's
    head only, whatever the producer-set timestamps)."""
    streams = [[(r.timestamp, catalog.write_rank(tp.topic), tp.topic, tp.partition, r.offset, tp, r) for r in batch]
               for tp, batch in records.items()]
    return [(tp, r) for *_, tp, r in heapq.merge(*streams, key=lambda item: item[:5])]


def held_back(records: Mapping[Any, list[Any]], task_partitions: Callable[[int], Iterable[Any]],
              lag: Callable[[Any], int | None], polled_at: Callable[[Any], int | None] = lambda tp: None
              ) -> dict[Any, int]:
    """Per partition, the offset from which this batch's records wait for the rest of their task.

    A task is one partition number: the order-scoped topics are co-partitioned, so an order's events
    on every topic meet in the same task. Merged by time, a batch is only as good as what it holds:
    when another partition of the task still has records on the broker that this batch does not
    hold (its lag is positive), any of them may be older than this batch's records, which then wait
    (Kafka Streams' rule, ``max.task.idle.ms``). A partition that the batch holds records of and
    has more bounds the task at its last record's time. A caught-up one (lag 0) is caught up as of
    the fetch that said so, ``polled_at`` (ms, this machine's clock): a record written after that
    fetch is stamped later (``LogAppendTime``), so that moment bounds the task. Without it, a
    partition left out of the later fetches (its records were still buffered) would let a newer
    record of another partition go ahead of one written to it since. ``records``: the batch, each
    partition's in offset order; ``task_partitions``: the ordered partitions of a task assigned
    here; ``lag``: records on the broker beyond what was fetched (None: paused, nothing to wait
    for); ``polled_at``: when each partition's high watermark was last read (None: not known, and
    then a caught-up partition bounds nothing)."""
    held: dict[Any, int] = {}
    tasks = {tp.partition for tp in records}
    for task in tasks:
        horizon = None  # the time up to which every partition of the task is known; None: unbounded
        for tp in task_partitions(task):
            behind = lag(tp)
            if behind is None:
                continue
            if behind == 0:
                bound = polled_at(tp)
                if bound is None:
                    continue
            else:
                batch = records.get(tp)
                bound = batch[-1].timestamp if batch else -1
            horizon = bound if horizon is None else min(horizon, bound)
        if horizon is None:
            continue
        for tp, batch in records.items():
            if tp.partition == task:
                first_late = next((r.offset for r in batch if r.timestamp > horizon), None)
                if first_late is not None:
                    held[tp] = first_late
    return held


def with_held(held: list[Any], fetched: Iterable[Any]) -> list[Any]:
    """A partition's held records and its newly fetched ones, once each, in offset order (after a
    seek back, the fetch may hold the held records again)."""
    return sorted({r.offset: r for r in (*held, *fetched)}.values(), key=lambda r: r.offset)


def lag_of(position: int | None, highwater: int | None, paused: bool) -> int | None:
    """What a partition may still hold on the broker for ``held_back``: ``None`` when paused (not
    fetched on purpose: nothing to wait for), ``UNKNOWN_LAG`` when not fetched yet (found: right
    after a restart, a storefront cancellation was applied before the payment failure written 3 s
    earlier, whose partition's first fetch came later), else its high watermark less its position."""
    if paused:
        return None
    if highwater is None or position is None:
        return UNKNOWN_LAG
    return max(0, highwater - position)


def tasks_of(partitions: Iterable[Any]) -> dict[int, list[Any]]:
    """The partitions merged in write order (``in_write_order``) grouped by task (partition number)."""
    tasks: dict[int, list[Any]] = {}
    for tp in partitions:
        if in_write_order(tp.topic):
            tasks.setdefault(tp.partition, []).append(tp)
    return tasks


def held_within(records: Mapping[Any, list[Any]], assigned: Mapping[int, list[Any]], lag: Callable[[Any], int | None],
                idle_since: dict[int, float], limit: float, now: float | None = None,
                polled_at: Callable[[Any], int | None] = lambda tp: None) -> dict[Any, int]:
    """``held_back`` with a limit: a task whose records have all waited ``limit`` seconds for a
    partition goes on without it, and says so at WARNING: the partition's fetches keep failing (its
    leader is away for longer than a failover takes), and waiting longer would stop the task's
    orders. What that partition holds and is older is then applied after newer records of the
    task: out of write order. A task that applies some of its records and holds the newest is not
    stuck (its partitions are fetched at different moments while records flow): its wait starts
    again. ``assigned``: each task's partitions here; ``idle_since``: since when each task's
    records all wait (kept by the caller between batches)."""
    held = held_back(records, lambda task: assigned.get(task, ()), lag, polled_at)
    now = time.monotonic() if now is None else now
    for task in {tp.partition for tp in records}:
        if not any(tp.partition == task for tp in held):
            idle_since.pop(task, None)
        elif any(batch and batch[0].offset < held.get(tp, batch[0].offset + 1)
                 for tp, batch in records.items() if tp.partition == task):
            idle_since[task] = now  # some of its records go on now: the task moves
        elif now - idle_since.setdefault(task, now) > limit:
            waited = now - idle_since.pop(task)
            log.warning("partition %d: its records waited %.0f s for %s, and are applied now; what those partitions "
                        "hold that is older comes after them, out of write order. Their fetches fail or stall: check "
                        "the broker that leads them (ORDEROPS_TASK_IDLE_LIMIT_SECONDS sets the wait).", task, waited,
                        ", ".join(holding(assigned.get(task, ()), lag, polled_at)) or "a partition not fetched yet")
            held = {tp: offset for tp, offset in held.items() if tp.partition != task}
    return held


def holding(partitions: Iterable[Any], lag: Callable[[Any], int | None], polled_at: Callable[[Any], int | None],
            now_ms: int | None = None) -> list[str]:
    """The partitions of a task that hold it back, for the operator: those with records on the
    broker not fetched yet, and those caught up as of a fetch more than a second ago."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    named = []
    for tp in partitions:
        behind, fetched = lag(tp), polled_at(tp)
        if behind:
            named.append(f"{tp.topic}[{tp.partition}] ({behind} record(s) not fetched)")
        elif behind == 0 and fetched is not None and now_ms - fetched > 1000:
            named.append(f"{tp.topic}[{tp.partition}] (last fetched {(now_ms - fetched) / 1000:.0f} s ago)")
    return named


UNKNOWN_LAG = 1  # a partition not fetched yet counts as lagging: it may hold older records
