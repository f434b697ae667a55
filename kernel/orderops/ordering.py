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
import heapq
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from faust.transport.utils import DefaultSchedulingStrategy

log = logging.getLogger("orderops.ordering")
_PENDING: set[asyncio.Future] = set()


def write_order(records: Mapping[Any, list]) -> list[tuple[Any, Any]]:
    """A fetched batch merged by broker timestamp; a partition's records keep their offset order
    (``heapq.merge`` takes from each list's head only, whatever the producer-set timestamps)."""
    streams = [[(r.timestamp, tp.topic, tp.partition, r.offset, tp, r) for r in batch] for tp, batch in records.items()]
    return [(tp, r) for *_, tp, r in heapq.merge(*streams, key=lambda item: item[:4])]


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
    test's last events). The seek runs in the consumer's thread instead, then Faust's read offset
    follows it (so the re-read records are not taken for already-read ones)."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        await consumer.seek(tp, offset)
        return
    await thread.call_thread(thread.seek, tp, offset)
    consumer._read_offset[tp] = offset if offset else None


class EventTimeOrder(DefaultSchedulingStrategy):
    app: Any = None  # set by ``for_app``

    @classmethod
    def for_app(cls, app: Any) -> type[EventTimeOrder]:
        """The scheduler class to configure on ``app`` (Faust makes one per consumer, without arguments)."""
        return type(cls.__name__, (cls,), {"app": app})

    def __init__(self) -> None:
        self._rewinds: dict[Any, int] = {}  # tp -> the offset a rewind reads again from
        self._fresh: set[Any] = set()  # rewound while the batch in hand may still hold older records

    @property
    def consumer(self) -> Any:
        return self.app._consumer if self.app is not None else None

    def iterate(self, records: Mapping[Any, list]) -> Iterator[tuple[Any, Any]]:
        return self._hand_out(write_order(records))

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

    def _stale(self, tp: Any, offset: int) -> bool:
        """Whether a record was fetched before a rewind of its partition (so comes again after it)."""
        due = self._rewinds.get(tp)
        if due is None:
            return False
        if offset > due:
            return True
        del self._rewinds[tp]  # the re-read has begun (or a rebalance sent the partition further back)
        return False

    def _hand_out(self, merged: list[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        handed: set[int] = set()  # handed on, or left for a rewind to read again
        stale: set[Any] = set()
        try:
            for i, (tp, record) in enumerate(merged):
                if self._stale(tp, record.offset):
                    handed.add(i)
                    stale.add(tp)
                    continue
                if not self._delivers(tp):
                    continue  # Faust would skip it without a word: it is read again below
                yield tp, record
                handed.add(i)  # Faust asked for the next one: this one it handed on
        finally:
            resume = first_not_handed_on(merged, handed)
            # Records fetched after a rewind's seek start at the rewind: later ones mean the seek did
            # not take (a rebalance's own seek raced it), so it is asked again.
            resume.update({tp: self._rewinds[tp] for tp in stale if tp in self._rewinds and tp not in self._fresh})
            self._fresh = set()
            if resume:
                self._read_again(resume)

    def _delivers(self, tp: Any) -> bool:
        """Whether Faust hands a record of ``tp`` on now (its own test in ``Consumer.getmany``)."""
        consumer = self.consumer
        if consumer is None or consumer._active_partitions is None:
            return True
        return tp in consumer._active_partitions or tp in consumer._buffered_partitions

    def _read_again(self, resume: dict[Any, int]) -> None:
        consumer, app = self.consumer, self.app
        if consumer is None:
            return
        where = ", ".join(f"{tp.topic}[{tp.partition}] from {offset}" for tp, offset in sorted(resume.items()))
        if app.rebalancing:
            log.info("not handed on: %s; the rebalance under way re-reads from the last commits", where)
            return
        generation = app.consumer_generation_id
        log.info("reading again what Faust did not hand on: %s", where)

        async def seek_back() -> None:
            for tp, offset in resume.items():
                # A rebalance since this was scheduled has sent every partition back to its last
                # commit, before records Faust handed on and then cleared from the agents' queues;
                # seeking here would jump forward over those (found: an order's parcel applied after
                # its dispatch, at the 200-order broker-kill test).
                if app.rebalancing or app.consumer_generation_id != generation:
                    log.info("not read again from here: a rebalance re-read from the last commits (%s)", where)
                    return
                try:
                    await seek_in_consumer_thread(consumer, tp, offset)
                except Exception as exc:  # revoked meanwhile: its new owner reads it from the last commit
                    log.info("%s[%d]: not read again here (%s)", tp.topic, tp.partition, exc)

        task = asyncio.ensure_future(seek_back())
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)


class Continuity:
    """The last check before an agent applies a record: each partition's records arrive without a
    hole. Faust can drop a record between its consumer and the agent without a trace — its drain
    loop moves its read offset past a record whose delivery the flow's suspension cancelled, its
    queues are cleared at a rebalance — and the partition's later records then arrive first
    (found: a parcel's tracking update applied before its creation after a restart, seen only as a
    paused commit). Whatever the path, the hole shows here, where records arrive: the record after
    it is not applied, the consumer is sent back to the hole, and the partition's records come
    again in order. Topics that may have holes of their own (compacted ones) are not checked.
    """

    RESEEK_AFTER = 5000  # records skipped while waiting for a re-read, before asking again

    def __init__(self, checked: Callable[[str], bool]) -> None:
        self._checked = checked
        self._next: dict[Any, int] = {}  # tp -> the offset that must come next
        self._rewinding: dict[Any, int] = {}  # tp -> records skipped since the seek back was asked

    def reset(self) -> None:
        """At a rebalance: positions are set anew (to the commits), and a partition may have moved."""
        self._next.clear()
        self._rewinding.clear()

    def admit(self, tp: Any, offset: int, baseline: int | None = None) -> tuple[bool, int | None]:
        """Whether to apply this record, and where to send the consumer back to (None: nowhere).
        ``baseline``: where the partition's first record is due when none was seen yet (its commit)."""
        if not self._checked(tp.topic):
            return True, None
        due = self._next.get(tp, baseline)
        if due is None or offset <= due:  # in order, the first one, or read again after a seek back
            self._next[tp] = offset + 1
            self._rewinding.pop(tp, None)
            return True, None
        skipped = self._rewinding.get(tp)
        self._rewinding[tp] = 1 if skipped is None or skipped >= self.RESEEK_AFTER else skipped + 1
        return False, due if self._rewinding[tp] == 1 else None
