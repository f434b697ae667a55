"""Records fetched together are handed to a processor in the order they were written, and a
record Faust drops is read again.

An order's events arrive on several topics (storefront, payments, warehouse, other processors'
outputs), one partition each, all partitioned by order id. Kafka orders each partition, not the
partitions between them, and Faust hands a fetched batch out round-robin, topic by topic. Live,
the topics are read as they are written and it does not show; after a restart, a processor
fetches a backlog of every partition at once, and round-robin applied e.g. a cancellation
before the authorization written seconds earlier — another outcome than the written order gives
(found by the fault test, which replays the inputs in write order and compares).

``EventTimeOrder`` is Faust's consumer scheduler (``ConsumerScheduler``): it merges a fetched
batch by broker timestamp, each partition's own records staying in offset order.

Faust also drops records: it stops handing out a batch when a rebalance starts or the flow is
stopped, and silently skips records of a partition it has paused meanwhile. aiokafka has already
moved past them, and Faust seeks back only to committed offsets (and not at all for a partition
without a commit), so such a record was either never read again — the fault test lost two
``PaymentAuthorized`` this way — or read again only at the next rebalance, after the partition's
later records (an order's delivery applied before its parcel was created). The scheduler knows
which records Faust took and which it never handed on, so it sends the consumer back to the first
record of each partition that was not handed on.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from faust.transport.utils import DefaultSchedulingStrategy

from orderops import catalog

log = logging.getLogger("orderops.ordering")
_PENDING: set[asyncio.Future] = set()


@functools.cache
def in_write_order(topic: str) -> bool:
    """Topics whose records are handed out in write order across a task: the order-scoped ones, each
    a log of one order's events (not compacted topics, nor Faust's changelogs)."""
    found = catalog.BY_NAME.get(topic)
    return found is not None and found.merged_by_time


def write_order(records: Mapping[Any, list]) -> list[tuple[Any, Any]]:
    """A fetched batch merged by broker timestamp; a partition's records keep their offset order
    (``heapq.merge`` takes from each list's head only, whatever the producer-set timestamps)."""
    streams = [[(r.timestamp, tp.topic, tp.partition, r.offset, tp, r) for r in batch] for tp, batch in records.items()]
    return [(tp, r) for *_, tp, r in heapq.merge(*streams, key=lambda item: item[:4])]


def held_back(records: Mapping[Any, list], task_partitions: Callable[[int], Iterable[Any]],
              lag: Callable[[Any], int | None]) -> dict[Any, int]:
    """Per partition, the offset from which this batch's records wait for the rest of their task.

    A task is one partition number: the order-scoped topics are co-partitioned, so an order's events
    on every topic meet in the same task. Merged by time, a batch is only as good as what it holds:
    when another partition of the task still has records on the broker that this batch does not
    hold (its lag is positive), any of them may be older than this batch's records, which then wait
    (Kafka Streams' rule, ``max.task.idle.ms``). A partition that the batch holds records of and
    has more bounds the task at its last record's time; a caught-up one (lag 0) bounds nothing.
    ``records``: the batch, each partition's in offset order; ``task_partitions``: the ordered
    partitions of a task assigned here; ``lag``: records on the broker beyond what was fetched (0 or
    None: nothing to wait for)."""
    held: dict[Any, int] = {}
    tasks = {tp.partition for tp in records}
    for task in tasks:
        horizon = None  # the time up to which every partition of the task is known; None: unbounded
        for tp in task_partitions(task):
            behind = lag(tp)
            if not behind:
                continue
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


def with_held(held: list, fetched: Iterable[Any]) -> list:
    """A partition's held records and its newly fetched ones, once each, in offset order: after a seek
    back (a hole re-read, a tail found overdue) the fetch holds the held records again, and handed on
    twice, the second copy was dropped by Faust as already read."""
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


def tasks_of(partitions: Iterable[Any]) -> dict[int, list]:
    """The partitions merged in write order (``in_write_order``) grouped by task (partition number)."""
    tasks: dict[int, list] = {}
    for tp in partitions:
        if in_write_order(tp.topic):
            tasks.setdefault(tp.partition, []).append(tp)
    return tasks


def held_within(records: Mapping[Any, list], assigned: Mapping[int, list], lag: Callable[[Any], int | None],
                idle_since: dict[int, float], limit: float, now: float | None = None) -> dict[Any, int]:
    """``held_back`` with a limit: a task that waited ``limit`` seconds for a lagging partition goes
    on without it (the partition may be paused, or its fetches failing), and says so. ``assigned``:
    each task's partitions here; ``idle_since``: since when each task's records wait (kept by the
    caller between batches)."""
    held = held_back(records, lambda task: assigned.get(task, ()), lag)
    now = time.monotonic() if now is None else now
    for task in {tp.partition for tp in records}:
        if not any(tp.partition == task for tp in held):
            idle_since.pop(task, None)
        elif now - idle_since.setdefault(task, now) > limit:
            log.info("partition %d: went on without waiting for %s (lagging for %.0f s)", task,
                     ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned.get(task, ()) if lag(tp)),
                     now - idle_since.pop(task))
            held = {tp: offset for tp, offset in held.items() if tp.partition != task}
    return held


def first_not_handed_on(merged: list[tuple[Any, Any]], handed: set[int]) -> dict[Any, int]:
    """Per partition, the offset of its first record not handed on (where reading must resume)."""
    resume: dict[Any, int] = {}
    for i, (tp, record) in enumerate(merged):
        if i not in handed and tp not in resume:
            resume[tp] = record.offset
    return resume


async def seek_in_consumer_thread(consumer: Any, tp: Any, offset: int) -> None:
    """Faust's ``Consumer.seek`` calls aiokafka's seek from the app's thread, while aiokafka runs in
    the consumer's own thread and event loop: the fetcher was not woken, and a partition whose
    seek back came as traffic ended waited for records that were never fetched (the broker-kill
    test's last events). The seek runs in the consumer's thread instead (with the consumer in the
    app's loop, orderops.oneloop, that is a plain call), then Faust's read offset follows it (so the
    re-read records are not taken for already-read ones)."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        await consumer.seek(tp, offset)
        return
    await thread.call_thread(thread.seek, tp, offset)
    consumer._read_offset[tp] = offset if offset else None


UNKNOWN_LAG = 1  # a partition not fetched yet counts as lagging: it may hold older records


class EventTimeOrder(DefaultSchedulingStrategy):
    app: Any = None  # set by ``for_app``

    @classmethod
    def for_app(cls, app: Any, in_flight: InFlight | None = None) -> type[EventTimeOrder]:
        """The scheduler class to configure on ``app`` (Faust makes one per consumer, without arguments);
        ``in_flight``: where it notes what it hands on, for the agents to check what arrives."""
        return type(cls.__name__, (cls,), {"app": app, "in_flight": in_flight})

    TASK_IDLE_LIMIT = 5.0  # seconds a task waits for a lagging partition before it goes on without it
    in_flight: InFlight | None = None  # set by ``for_app``: shared with the agents' checks

    def __init__(self) -> None:
        self._rewinds: dict[Any, int] = {}  # tp -> the offset a rewind reads again from
        self._fresh: set[Any] = set()  # rewound while the batch in hand may still hold older records
        self._idle_since: dict[int, float] = {}  # task -> since when its records wait for a lagging partition
        # Records held back for their task, kept for the next batch: sought back and fetched again,
        # they came late once (a re-fetch skipped at a rebalance; the tail check found them 15 s later).
        self._held: dict[Any, list] = {}
        self._handing_out = 0

    @property
    def consumer(self) -> Any:
        return self.app._consumer if self.app is not None else None

    @property
    def handing_out(self) -> bool:
        """Whether a fetched batch is being handed on (its records not handed on yet are in hand)."""
        return self._handing_out > 0

    def taken(self) -> dict[Any, int]:
        """Per partition, the offset up to which the consumer has handed its records here and this
        scheduler has let them go (handed on, or left to be read again): the fetch position, or
        the first record it holds back for its task."""
        states = self._partition_states() or {}
        taken = {tp: state._position for tp, state in states.items() if state._position is not None}
        for tp, records in self._held.items():
            if records:
                taken[tp] = min(taken.get(tp, records[0].offset), records[0].offset)
        return taken

    def iterate(self, records: Mapping[Any, list]) -> Iterator[tuple[Any, Any]]:
        if self._held:  # records that waited for their task come first, before the partition's newer ones
            records = {**records, **{tp: with_held(held, records.get(tp, ())) for tp, held in self._held.items()}}
            self._held = {}
        ordered = {tp: batch for tp, batch in records.items() if in_write_order(tp.topic)}
        return self._hand_out(write_order(records), self._waiting(ordered) if ordered else {})

    def _waiting(self, records: Mapping[Any, list]) -> dict[Any, int]:
        """``held_back`` for this consumer, with a limit: a task that waited ``TASK_IDLE_LIMIT``
        seconds for a partition goes on without it (the partition may be paused, or its fetches
        failing), and says so."""
        states = self._partition_states()
        if states is None:
            return {}

        def lag(tp: Any) -> int | None:
            state = states.get(tp)
            return None if state is None else lag_of(state._position, state.highwater, state.paused)

        return held_within(records, tasks_of(states), lag, self._idle_since, self.TASK_IDLE_LIMIT)

    def _partition_states(self) -> dict[Any, Any] | None:
        """aiokafka's state of each assigned partition (position, highwater, paused), read as is."""
        try:
            subscription = self.consumer._thread._ensure_consumer()._subscription.subscription
            assignment = subscription.assignment if subscription is not None else None
            if assignment is None:
                return None
            return {tp: assignment.state_value(tp) for tp in assignment.tps}
        except Exception:  # not started, or another transport
            return None

    def rewind(self, tp: Any, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (``Continuity`` found a hole there). Until the record at
        ``offset`` comes again, ``tp``'s records fetched before the seek are not handed on: handed
        on, they would move Faust's read offset past the re-read records, which it would then drop."""
        self._rewinds[tp] = offset
        self._fresh.add(tp)
        self._read_again({tp: offset})

    def forget_rewinds(self) -> None:
        """At a rebalance: every partition is sent back to its commit, or has moved."""
        self._rewinds.clear()
        self._held = {}

    def _stale(self, tp: Any, offset: int) -> bool:
        """Whether a record was fetched before a rewind of its partition (so comes again after it)."""
        due = self._rewinds.get(tp)
        if due is None:
            return False
        if offset > due:
            return True
        del self._rewinds[tp]  # the re-read has begun (or a rebalance sent the partition further back)
        return False

    def _hand_out(self, merged: list[tuple[Any, Any]], waiting: Mapping[Any, int]) -> Iterator[tuple[Any, Any]]:
        handed: set[int] = set()  # handed on, or left for a rewind to read again
        stale: set[Any] = set()
        self._handing_out += 1
        try:
            for i, (tp, record) in enumerate(merged):
                if self._stale(tp, record.offset):
                    handed.add(i)
                    stale.add(tp)
                    continue
                if record.offset >= waiting.get(tp, record.offset + 1):
                    continue  # waits for older records of its task: read again below
                if not self.delivers(tp):
                    continue  # Faust would skip it without a word: it is read again below
                if self.dropped_by_faust(tp, record.offset):
                    handed.add(i)  # a later record of it went on: a hole there was sent back already
                    continue
                if self.in_flight is not None and in_write_order(tp.topic):
                    self.in_flight.handed(tp, record.offset)
                yield tp, record
                handed.add(i)  # Faust asked for the next one: this one it handed on
        finally:
            self._handing_out -= 1
            resume = first_not_handed_on(merged, handed)
            # Held back for their task (and nothing before them lost): kept for the next batch.
            for tp, offset in [(tp, offset) for tp, offset in resume.items() if waiting.get(tp) == offset]:
                del resume[tp]
                self._held[tp] = [r for t, r in merged if t == tp and r.offset >= offset]
            # Records fetched after a rewind's seek start at the rewind: later ones mean the seek did
            # not take (a rebalance's own seek raced it), so it is asked again.
            resume.update({tp: self._rewinds[tp] for tp in stale
                           if tp in self._rewinds and tp not in self._fresh and tp not in resume})
            self._fresh = set()
            # Until the seek back takes, a later batch may still hold the partition's next records
            # (fetched before it): handed on, they would overtake the ones left here (found: holes
            # in every partition as soon as records waited for their task).
            for tp, offset in resume.items():
                if offset <= self._rewinds.get(tp, offset):
                    self._rewinds[tp] = offset
                    self._fresh.add(tp)
            if resume:
                self._read_again(resume)

    def dropped_by_faust(self, tp: Any, offset: int) -> bool:
        """Whether Faust's drain loop would drop this record without a word: its read offset is already
        past it. Noted as handed on, such a record never arrives, and every record of its task after it
        looked like one that overtook a lost one: read again from there, again and again (seen once, the
        cause not shown: the returns processor re-reading warehouse.returns[1] from 0 every 55 ms)."""
        consumer = self.consumer
        if consumer is None:
            return False
        read = consumer._read_offset.get(tp)
        return read is not None and offset < read

    def delivers(self, tp: Any) -> bool:
        """Whether Faust hands a record of ``tp`` on now (its own test in ``Consumer.getmany``)."""
        consumer = self.consumer
        if consumer is None or consumer._active_partitions is None:
            return True
        return tp in consumer._active_partitions or tp in consumer._buffered_partitions

    def _read_again(self, resume: dict[Any, int]) -> None:
        """Send the consumer back to ``resume``'s offsets (records Faust did not hand on)."""
        consumer, app = self.consumer, self.app
        if consumer is None:
            return
        where = ", ".join(f"{tp.topic}[{tp.partition}] from {offset}" for tp, offset in sorted(resume.items()))
        generation = app.consumer_generation_id
        log.info("reading again what Faust did not hand on: %s", where)

        async def seek_back() -> None:
            # Asked while a rebalance is under way: if the rebalance assigned partitions after the
            # ask, its seek to the last commits re-reads these records, and seeking here would jump
            # forward over records Faust handed on and then cleared from the agents' queues (found:
            # an order's parcel applied after its dispatch, at the 200-order broker-kill test). If it
            # assigned them before, its seek came before the records that led here: seek once it ends
            # (found: records lost as a second worker took over, asked for while the rebalance was
            # still flagged and never read again).
            for _ in range(1200):
                if not app.rebalancing:
                    break
                await asyncio.sleep(0.1)
            if app.rebalancing or app.consumer_generation_id != generation:
                log.info("not read again from here: a rebalance re-read from the last commits (%s)", where)
                self.forget_rewinds()
                return
            for tp, offset in resume.items():
                try:
                    await seek_in_consumer_thread(consumer, tp, offset)
                except Exception as exc:  # revoked meanwhile: its new owner reads it from the last commit
                    log.info("%s[%d]: not read again here (%s)", tp.topic, tp.partition, exc)

        task = asyncio.ensure_future(seek_back())
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)


class InFlight:
    """The records the scheduler handed on and their agent has not received yet, per task, in the
    order handed on. An agent reads its topics from one queue, first in first out, so its records
    arrive in exactly that order: a record that arrives while records of its task handed on before
    it have not was preceded by a drop (Faust's drain loop cancelled, its queues cleared). Applying
    it would apply the task's events out of their write order — a partition's hole is re-read after
    other partitions' newer records were applied (found: a capture applied before the warehouse's
    cancellation written 11 s earlier, whose partition had lost 50 records as returns restarted)."""

    LIMIT = 200_000  # records remembered per task at most (an agent that stopped reading would grow it)

    def __init__(self) -> None:
        self._tasks: dict[int, deque] = {}  # task -> (tp, offset) handed on, oldest first
        self._waiting: set[tuple[Any, int]] = set()  # the same entries, to look one up

    def clear(self) -> None:
        self._tasks.clear()
        self._waiting.clear()

    def handed(self, tp: Any, offset: int) -> None:
        queue = self._tasks.setdefault(tp.partition, deque())
        if (tp, offset) in self._waiting:  # handed on again after a seek back: it comes in its new place
            queue.remove((tp, offset))
        queue.append((tp, offset))
        self._waiting.add((tp, offset))
        if len(queue) > self.LIMIT:
            self._waiting.discard(queue.popleft())

    def arrived(self, tp: Any, offset: int) -> dict[Any, int]:
        """Where to read the task again from, per partition, if records handed on before this one
        were lost (then this one and everything of the task still in flight are read again too);
        empty if all is in order, or if this record is not known here (read again after a seek)."""
        if (tp, offset) not in self._waiting:
            return {}
        queue = self._tasks[tp.partition]
        head = queue.popleft()
        self._waiting.discard(head)
        if head == (tp, offset):
            return {}
        again: dict[Any, int] = {}
        for other, at in (head, (tp, offset), *queue):  # the lost head may be of this same partition: keep the lowest
            again[other] = min(again.get(other, at), at)
        for entry in queue:
            self._waiting.discard(entry)
        queue.clear()
        return again


class Continuity:
    """The last check before an agent applies a record: each partition's records arrive without a
    hole. Faust can drop a record between its consumer and the agent without a trace — its drain
    loop moves its read offset past a record whose delivery the flow's suspension cancelled, its
    queues are cleared at a rebalance — and the partition's later records then arrive first
    (found: a parcel's tracking update applied before its creation after a restart, seen only as a
    paused commit). Whatever the path, the hole shows here, where records arrive: the record after
    it is not applied, the consumer is sent back to the hole, and the partition's records come
    again in order. Topics that may have holes of their own (compacted ones) are not checked.

    A dropped record at a partition's tail has no later record to expose it: ``overdue`` finds it
    from the partition's high watermark once the partition has been quiet for a while and its
    agent holds nothing more (found: a warehouse event never applied at the end of a 200-order
    broker-kill run, after a rebalance's seek to the commits did not bring it back).

    Quiet is not lost: draining a backlog merged by event time, a partition of newer records (a
    processor's outputs) waits, unfetched or held by the scheduler for its task, while older ones
    are applied. Taken for drops, they were read again from the start, again and again: the
    timeline in the bench spent half its CPU on records it had already applied. A record is
    overdue once the consumer has taken the partition past it (so it was fetched and let go); one
    never fetched only after ``STALLED_AFTER`` quiet periods (a fetch that never came: the seek
    back wakes the fetcher).
    """

    RESEEK_AFTER = 5000  # records skipped while waiting for a re-read, before asking again
    STALLED_AFTER = 4  # quiet periods before a record never fetched counts as lost

    def __init__(self, checked: Callable[[str], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self._checked = checked
        self._clock = clock
        self._next: dict[Any, int] = {}  # tp -> the offset that must come next
        self._rewinding: dict[Any, int] = {}  # tp -> records skipped since the seek back was asked
        self._heard: dict[Any, float] = {}  # tp -> when a record last arrived (or a tail was last read again)
        self._seen_waiting: dict[Any, float] = {}  # tp -> when a check first found its next record on the broker
        self._since = clock()  # when positions were last set anew

    def reset(self) -> None:
        """At a rebalance: positions are set anew (to the commits), and a partition may have moved."""
        self._next.clear()
        self._rewinding.clear()
        self._heard.clear()
        self._seen_waiting.clear()
        self._since = self._clock()

    def admit(self, tp: Any, offset: int, baseline: int | None = None) -> tuple[bool, int | None]:
        """Whether to apply this record, and where to send the consumer back to (None: nowhere).
        ``baseline``: where the partition's first record is due when none was seen yet (its commit)."""
        if not self._checked(tp.topic):
            return True, None
        self._heard[tp] = self._clock()
        self._seen_waiting.pop(tp, None)
        due = self._next.get(tp, baseline)
        if due is None or offset <= due:  # in order, the first one, or read again after a seek back
            self._next[tp] = offset + 1
            self._rewinding.pop(tp, None)
            return True, None
        skipped = self._rewinding.get(tp)
        self._rewinding[tp] = 1 if skipped is None or skipped >= self.RESEEK_AFTER else skipped + 1
        return False, due if self._rewinding[tp] == 1 else None

    def expect(self, tp: Any, offset: int) -> None:
        """``tp`` is being read again from ``offset``: what arrives after it before the re-read is
        skipped without asking again."""
        if self._checked(tp.topic):
            self._next[tp] = min(self._next.get(tp, offset), offset)
            self._rewinding[tp] = 1

    def overdue(self, assigned: Iterable[Any], baseline: Callable[[Any], int | None],
                highwater: Callable[[Any], int | None], quiet_for: float,
                taken: Callable[[Any], int | None]) -> dict[Any, int]:
        """Partitions whose next record exists on the broker (below its high watermark) but has not
        arrived though nothing of the partition arrived for ``quiet_for`` seconds, each with the
        offset to read again from. The caller asks only while its agents and its scheduler hold
        nothing unread. ``taken``: the offset up to which the consumer has handed the partition's
        records on (None: not known); a record below it was dropped on the way, one above it only
        counts after ``STALLED_AFTER`` quiet periods. A partition is named again only after another
        quiet period, so a re-read under way is not asked twice."""
        now, late = self._clock(), {}
        for tp in assigned:
            quiet = now - self._heard.get(tp, self._since)
            if not self._checked(tp.topic) or quiet < quiet_for:
                continue
            due, end = self._next.get(tp, baseline(tp)), highwater(tp)
            if due is None or end is None or end <= due:
                self._seen_waiting.pop(tp, None)
                continue
            # A partition quiet since the start has waited for nothing until a record is written to
            # it: found in `make run`, a returns timer tick read again 2 ms after it was written.
            waiting = now - self._seen_waiting.setdefault(tp, now)
            passed = taken(tp)
            if (passed is not None and passed > due) or min(quiet, waiting) >= quiet_for * self.STALLED_AFTER:
                late[tp] = due
                self._heard[tp] = now
        return late
