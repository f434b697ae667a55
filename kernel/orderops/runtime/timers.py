"""Deadlines on each partition's event clock, for a processor that runs on event time.

Live, a sweep on the wall clock finds due deadlines (``Service.enable_timers``). On event time there
is no wall clock to sweep by, and an order that has no later event of its own must still come due
(a backorder past its ETA, a return left in review). Its partition's clock is what moves: the
latest event time of the records applied from that partition, across the processor's
co-partitioned inputs, in the order they are applied. When a record moves it past an order's
deadline, the order is due, there and then, before the next record. The same records in the same
order give the same ticks, live or replayed, whatever else the worker holds and however it was
batched; a worker-wide clock would make them depend on other partitions and on when a sweep ran.

Each partition's clock is kept in the deadlines table under ``clock_key(partition)``, in that
partition, so a restart goes on from it. Due deadlines are found with a heap per partition, built
from the table after each recovery and fed by every ``schedule``; an entry is checked against the
table when it comes up (a later ``schedule`` of the key replaced it, or a batch read again undid it).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime
from typing import Any

from orderops.runtime.batch import Batch, StateTable

CLOCK_PREFIX = "\x00event-clock:"


def clock_key(partition: int) -> str:
    return f"{CLOCK_PREFIX}{partition}"


def _as_stored(value: Any) -> Any:
    return value


class PartitionClocks:
    def __init__(self, table: StateTable, stored: Callable[[str], bytes], partition_of: Callable[[str], int]) -> None:
        """``table``: the deadlines (key -> ISO time), ``stored``: a value as the table keeps it,
        ``partition_of``: a key's partition."""
        self.table, self._stored, self._partition_of = table, stored, partition_of
        # partition -> [(due, key, due as the table keeps it)]
        self._heaps: dict[int, list[tuple[datetime, str, str]]] | None = None

    def forget(self) -> None:
        """After a recovery: the partitions held may have changed; the heaps are built again."""
        self._heaps = None

    def advance(self, batch: Batch, partition: int, event_time: datetime | None) -> datetime | None:
        """The partition's clock once a record of ``event_time`` (None: one that does not move it)
        is applied; kept with the batch when it moved."""
        self._built()
        stored = batch.load(self.table, clock_key(partition), _as_stored, partition)
        clock = datetime.fromisoformat(stored) if stored is not None else None
        if event_time is None or (clock is not None and event_time <= clock):
            return clock
        batch.put(self.table, clock_key(partition), self._stored(event_time.isoformat()), event_time.isoformat(),
                  partition)
        return event_time

    def schedule(self, key: str, due: datetime | None, partition: int) -> None:
        """A deadline the batch set (the table's write is the batch's)."""
        if due is not None:
            heapq.heappush(self._built().setdefault(partition, []), (due, key, due.isoformat()))

    def due(self, batch: Batch, partition: int, clock: datetime | None) -> list[tuple[str, datetime]]:
        """The partition's keys whose deadline the clock has reached, each with its deadline, taken
        off: the caller judges each (and sets its next deadline)."""
        heap = self._built().get(partition)
        found: list[tuple[str, datetime]] = []
        if clock is None or not heap:
            return found
        while heap and heap[0][0] <= clock:
            due, key, stored = heapq.heappop(heap)
            if batch.load(self.table, key, _as_stored, partition) == stored:
                found.append((key, due))
        return found

    def _built(self) -> dict[int, list[tuple[datetime, str, str]]]:
        if self._heaps is None:
            heaps: dict[int, list[tuple[datetime, str, str]]] = {}
            for key, due in self.table.items():  # type: ignore[attr-defined]
                if due is not None and not key.startswith(CLOCK_PREFIX):
                    heaps.setdefault(self._partition_of(key), []).append((datetime.fromisoformat(due), key, due))
            for heap in heaps.values():
                heapq.heapify(heap)
            self._heaps = heaps
        return self._heaps
