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
from collections.abc import Iterator, Mapping
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


class EventTimeOrder(DefaultSchedulingStrategy):
    app: Any = None  # set by ``for_app``

    @classmethod
    def for_app(cls, app: Any) -> type[EventTimeOrder]:
        """The scheduler class to configure on ``app`` (Faust makes one per consumer, without arguments)."""
        return type(cls.__name__, (cls,), {"app": app})

    @property
    def consumer(self) -> Any:
        return self.app._consumer if self.app is not None else None

    def iterate(self, records: Mapping[Any, list]) -> Iterator[tuple[Any, Any]]:
        return self._hand_out(write_order(records))

    def _hand_out(self, merged: list[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        handed: set[int] = set()
        try:
            for i, (tp, record) in enumerate(merged):
                if not self._delivers(tp):
                    continue  # Faust would skip it without a word: it is read again below
                yield tp, record
                handed.add(i)  # Faust asked for the next one: this one it handed on
        finally:
            resume = first_not_handed_on(merged, handed)
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
                    await consumer.seek(tp, offset)
                except Exception as exc:  # revoked meanwhile: its new owner reads it from the last commit
                    log.info("%s[%d]: not read again here (%s)", tp.topic, tp.partition, exc)

        task = asyncio.ensure_future(seek_back())
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
