"""Records of a processor's input topics delivered in the order they were written.

An order's events arrive on several topics (storefront, payments, warehouse, other processors'
outputs), one partition each, all partitioned by order id. Kafka orders each partition, not the
partitions between them, and Faust delivers them round-robin. Live, the topics are read as they
are written and the difference does not show; after a restart or any lag, a processor reads a
backlog of every partition at once, and round-robin meant e.g. a cancellation read before the
authorization written seconds earlier: another outcome than the one the written order gives
(found by the fault test, which replays the inputs in write order and compares).

``EventTimeOrder`` is Faust's consumer scheduler (``ConsumerScheduler``): it keeps what was
fetched per partition and hands out the record written earliest first. It holds a record while
another input partition of the same number (the same orders) has nothing fetched yet but is
known to be behind — the earlier record may be on its way — for at most ``max_hold_seconds``
(Kafka Streams' ``max.task.idle.ms``), so a slow partition delays but never stops the others.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from faust.transport.utils import DefaultSchedulingStrategy


def next_record(heads: Mapping[Any, int], behind: set[Any]) -> Any | None:
    """The partition whose head record goes next: the earliest written, unless a partition of
    the same number that is ``behind`` (nothing fetched, more on the broker) could hold an
    earlier one. ``heads``: partition -> timestamp of its first buffered record."""
    if not heads:
        return None
    tp = min(heads, key=lambda t: (heads[t], t.topic, t.partition))
    if any(other.partition == tp.partition and other.topic != tp.topic for other in behind):
        return None
    return tp


class EventTimeOrder(DefaultSchedulingStrategy):
    max_hold_seconds = 2.0
    app: Any = None  # set by ``for_app``
    ordered: frozenset[str] = frozenset()  # the input topics put in write order; others pass at once

    @classmethod
    def for_app(cls, app: Any, topics: frozenset[str]) -> type[EventTimeOrder]:
        """The scheduler class to configure on ``app`` (Faust makes one per consumer, without
        arguments), ordering ``topics`` (a processor's inputs; not changelogs, read in recovery)."""
        return type(cls.__name__, (cls,), {"app": app, "ordered": frozenset(topics)})

    @property
    def consumer(self) -> Any:
        return self.app._consumer if self.app is not None else None

    def __init__(self) -> None:
        self.buffers: dict[Any, deque] = {}
        self.delivered: dict[Any, int] = {}  # tp -> last offset handed out
        self.held_since: float | None = None

    def iterate(self, records: Mapping[Any, list]) -> Iterator[tuple[Any, Any]]:
        """Faust iterates what this returns, and may stop early (a rebalance, flow stopped): so a
        record leaves its buffer only once Faust asked for the one after it. Nothing fetched is
        dropped here; a record already buffered (a re-fetch after a seek) is not buffered twice."""
        passing = []
        assigned = self._assigned()
        for tp in [tp for tp in self.buffers if assigned is not None and tp not in assigned]:
            del self.buffers[tp]  # its new owner reads it from the last commit
            self.delivered.pop(tp, None)
        for tp, batch in records.items():
            if self.ordered and tp.topic not in self.ordered:
                passing.extend((tp, record) for record in batch)  # e.g. changelogs during recovery
                continue
            buffer = self.buffers.setdefault(tp, deque())
            last = buffer[-1].offset if buffer else -1
            buffer.extend(r for r in batch if r.offset > last)
        return self._release(passing)

    def _release(self, passing: list) -> Iterator[tuple[Any, Any]]:
        yield from passing
        waited = False
        active = self._active()
        behind = self._behind({tp for tp, buf in self.buffers.items() if buf})
        while True:
            heads = {tp: buf[0].timestamp for tp, buf in self.buffers.items()
                     if buf and (active is None or tp in active)}
            if not heads:
                self.held_since = None
                return
            tp = None if waited else next_record(heads, behind)
            if tp is None:
                now = time.monotonic()
                self.held_since = self.held_since or now
                if now - self.held_since < self.max_hold_seconds and not waited:
                    return
                waited = True  # waited long enough: what is here goes, in write order
                tp = min(heads, key=lambda t: (heads[t], t.topic, t.partition))
            else:
                self.held_since = None
            record = self.buffers[tp][0]
            yield tp, record  # taken out only when Faust asks for the next one: it was handed on
            buffer = self.buffers.get(tp)
            if buffer and buffer[0] is record:
                buffer.popleft()
                self.delivered[tp] = record.offset
                if not buffer and self._is_behind(tp):
                    behind.add(tp)

    def _assigned(self) -> set | None:
        consumer = self.consumer
        return set(consumer.assignment()) if consumer is not None else None

    def _active(self) -> set | None:
        """Partitions Faust hands records on for (others, e.g. paused in a rebalance, it skips)."""
        consumer = self.consumer
        if consumer is None or consumer._active_partitions is None:
            return None
        return set(consumer._active_partitions) | set(consumer._buffered_partitions)

    def _behind(self, buffered: set) -> set:
        """Input partitions with nothing fetched but more on the broker (or not known yet)."""
        consumer = self.consumer
        if consumer is None:
            return set()
        return {tp for tp in consumer.assignment()
                if tp not in buffered and tp.topic in self.ordered and self._is_behind(tp)}

    def _is_behind(self, tp: Any) -> bool:
        consumer = self.consumer
        if consumer is None:
            return False
        try:
            highwater = consumer.highwater(tp)
        except Exception:
            highwater = None
        if highwater is None:  # not fetched yet (moments after an assignment): it may hold earlier ones
            return True
        read = self.delivered.get(tp)
        position = read + 1 if read is not None else consumer._committed_offset.get(tp) or 0
        return position < highwater
