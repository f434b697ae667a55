"""Write-behind for a processor's agent: an event's outputs are sent at once; its state is written,
its follow-ups run and its offset is acknowledged once the broker has acknowledged those outputs —
in event order, by a completer task, while the agent goes on with the next event.

Why: waiting inside each event for the broker's ack held every processor to one round trip per
event. The guarantees that wait gave are kept:

- a table records an event as applied only after the event's outputs are acknowledged (a
  redelivered event found applied emits nothing, so its outputs must already be safe);
- an offset is acknowledged to Faust, and so committed, only after its event's state is written;
- a later event of the same order reads the state its predecessors left (``Step.load`` answers from
  what is staged before asking the table), so apply-once and the order of transitions hold.

A crash loses only what was not yet acknowledged; those events are read again and give the same
records, with the same ids, which every reader recognises.

Some records only say what is latest: the timeline's view of an order, on a compacted topic. An
event leaves such a record to the completer (``Step.send_latest``), which sends, of all the steps it
completes together, only the newest per topic and key, and writes none of their states before it is
acknowledged. Under load a completer takes a fetch's worth of steps at once, and an order whose
events came together is published once, not once per event; when traffic is light it takes a step
or two, and each event's record is sent.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.streams import _current_event  # the event a table write belongs to (its partition)

from orderops.catalog import Topic
from orderops.metrics import LATEST_RECORDS

log = logging.getLogger("orderops.writebehind")
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
MAX_COMPLETED_TOGETHER = 500  # steps whose acks are awaited and whose writes are coalesced at once


@dataclass
class Sent:
    """One record handed to the producer, and what it takes to send it again."""

    channel: faust.TopicT
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] | None
    ack: asyncio.Future


@dataclass
class Step:
    """What one event leaves to do once its outputs are acknowledged."""

    event: faust.EventT
    staging: Staging
    sent: list[Sent] = field(default_factory=list)
    writes: list[tuple[faust.TableT, str, Any, int]] = field(default_factory=list)
    follow_ups: list[Callable[[], None]] = field(default_factory=list)
    latest: dict[tuple[str, str], Callable[[], Awaitable[Sent]]] = field(default_factory=dict)

    def load(self, table: faust.TableT, key: str, load: Callable[[Any], Any]) -> Any:
        """The key's value as the events before this one left it (staged, else in the table), as a
        domain object (``load`` of the stored value; None if there is none), from the cache of
        recently put objects when it is there."""
        return self.staging.load(table, key, load)

    def put(self, table: faust.TableT, key: str, value: Any, loaded: Any = None) -> None:
        """Stage the key's new value: readable at once, written once this event's outputs are acked.
        ``loaded``: the immutable domain object ``value`` stores, kept for the next ``load``. A value
        of None deletes the key (a tombstone on the changelog)."""
        self.writes.append((table, key, value, self.staging.stage(table, key, value, loaded)))

    def then(self, follow_up: Callable[[], None]) -> None:
        """Run after the state is written (deadlines, metrics: what must not run for a lost event)."""
        self.follow_ups.append(follow_up)

    def send_latest(self, topic: Topic, key: str, send: Callable[[], Awaitable[Sent]]) -> None:
        """Leave a record that only says what is latest for ``key`` to the completer: ``send`` (which
        builds, encodes and sends it) is called unless a later step completed with this one leaves
        its own for the same topic and key. Only a compacted topic's records can be latest-only."""
        if not topic.compacted:
            raise ValueError(f"{topic.name} is not compacted: each of its records counts, none is only the latest")
        self.latest[(topic.name, key)] = send


def newest_latest(steps: Iterable[Step]) -> dict[tuple[str, str], tuple[Step, Callable[[], Awaitable[Sent]], int]]:
    """Of the latest-only records the steps leave, the newest per topic and key: its step, its send,
    and how many older ones of that topic and key it supersedes."""
    newest: dict[tuple[str, str], tuple[Step, Callable[[], Awaitable[Sent]], int]] = {}
    for step in steps:
        for where, send in step.latest.items():
            newest[where] = (step, send, newest[where][2] + 1 if where in newest else 0)
    return newest


class Staging:
    """Table values written by events whose outputs are not yet acknowledged, newest per key; and
    the domain objects last put, so that an order's next event need not read and parse its state.

    The objects are immutable, and only this agent writes its table's keys while it holds their
    partitions; a rebalance may hand a partition to another worker and back, so ``forget`` (called
    at every rebalance) drops them. The cache holds at most ``cached`` orders, least recent out.
    """

    def __init__(self, cached: int) -> None:
        self._values: dict[tuple[str, str], tuple[int, Any]] = {}
        self._version = 0
        self._loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cached = cached

    def get(self, table: faust.TableT, key: str) -> Any:
        """The key's value as the table will hold it (staged JSON text parsed, as the table parses it)."""
        staged = self._values.get((table.name, key))
        if staged is None:
            return table.get(key)
        return orjson.loads(staged[1]) if isinstance(staged[1], bytes) else staged[1]

    def load(self, table: faust.TableT, key: str, load: Callable[[Any], Any]) -> Any:
        where = (table.name, key)
        if where in self._loaded:
            self._loaded.move_to_end(where)
            return self._loaded[where]
        stored = self.get(table, key)
        return load(stored) if stored else None

    def stage(self, table: faust.TableT, key: str, value: Any, loaded: Any = None) -> int:
        self._version += 1
        where = (table.name, key)
        self._values[where] = (self._version, value)
        self._loaded.pop(where, None)
        if loaded is not None and self._cached > 0:
            self._loaded[where] = loaded
            if len(self._loaded) > self._cached:
                self._loaded.popitem(last=False)
        return self._version

    def forget(self) -> None:
        self._loaded.clear()

    def written(self, table: faust.TableT, key: str, version: int) -> None:
        if self._values.get((table.name, key), (None,))[0] == version:
            del self._values[(table.name, key)]

    def __len__(self) -> int:
        return len(self._values)


class WriteBehind:
    """The completer of one agent's steps, in the order the agent finished them."""

    def __init__(self, service: str, stream: faust.StreamT, depth: int, cached: int,
                 dead_letter: Callable[[faust.EventT, BaseException], Any]) -> None:
        self.service, self.stream, self.staging = service, stream, Staging(cached)
        self._dead_letter = dead_letter
        self._queue: asyncio.Queue[Step] = asyncio.Queue(depth)  # full: the agent waits (backpressure)

    def step(self, event: faust.EventT) -> Step:
        return Step(event, self.staging)

    async def finished(self, step: Step) -> None:
        await self._queue.put(step)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[WriteBehind]:
        completer = asyncio.ensure_future(self._complete())
        try:
            yield self
        finally:
            # Stopping (shutdown, agent restart): what is not completed is not acknowledged, so it
            # is read again by whoever holds the partition next.
            completer.cancel()
            with suppress(asyncio.CancelledError):
                await completer

    async def _complete(self) -> None:
        while True:
            steps = [await self._queue.get()]
            while not self._queue.empty() and len(steps) < MAX_COMPLETED_TOGETHER:
                steps.append(self._queue.get_nowait())
            for (topic, _), (step, send, superseded) in newest_latest(steps).items():
                await self._send_latest(step, send)
                LATEST_RECORDS.labels(self.service, topic, "sent").inc()
                if superseded:
                    LATEST_RECORDS.labels(self.service, topic, "superseded").inc(superseded)
            for step in steps:
                await self._acknowledged(step)
            # Of the writes of one key in these steps, the last holds them all: only it is written.
            last = {(table.name, key): version for step in steps for table, key, _, version in step.writes}
            for step in steps:
                self._write(step, [w for w in step.writes if last[(w[0].name, w[1])] == w[3]])
            for step in steps:
                await self.stream.ack(step.event)

    async def _send_latest(self, step: Step, send: Callable[[], Awaitable[Sent]]) -> None:
        try:
            step.sent.append(await send())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = step.event.message
            log.exception("%s: the latest record left by %s[%d]@%d could not be built or sent (%s); the event goes to "
                          "the dead-letter topic, its state is still written. A bug: the record's data or schema.",
                          self.service, message.topic, message.partition, message.offset, type(exc).__name__)
            await self._dead_letter(step.event, exc)

    def _write(self, step: Step, writes: list[tuple[faust.TableT, str, Any, int]]) -> None:
        token = _current_event.set(weakref.ref(step.event))  # a table write goes to its event's partition
        try:
            for table, key, value, version in writes:
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
                self.staging.written(table, key, version)
            for follow_up in step.follow_ups:
                follow_up()
        except Exception:
            message = step.event.message
            log.exception("%s: after %s[%d]@%d was applied and its outputs acknowledged, writing its state or a "
                          "follow-up failed: a bug. The event is acknowledged; check that order's state.",
                          self.service, message.topic, message.partition, message.offset)
        finally:
            _current_event.reset(token)

    async def _acknowledged(self, step: Step) -> None:
        """Wait for every output's ack; a retriable failure is sent again (same bytes, same ids: readers
        recognise a repeat) until the broker takes it. A permanent one dead-letters the event: its
        state is still written, as later events of the order were applied on top of it."""
        for sent in step.sent:
            attempt = 0
            while True:
                try:
                    await sent.ack
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    message = step.event.message
                    if not getattr(exc, "retriable", True):
                        log.error("%s: the broker refused an output of %s[%d]@%d for good (%s: %s); the event goes "
                                  "to the dead-letter topic.", self.service, message.topic, message.partition,
                                  message.offset, type(exc).__name__, exc)
                        await self._dead_letter(step.event, exc)
                        break
                    delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                    attempt += 1
                    log.warning("%s: an output of %s[%d]@%d to %s was not acknowledged (%s: %s); sending it again in "
                                "%.1f s (attempt %d). Later events wait behind it; check the broker if this repeats.",
                                self.service, message.topic, message.partition, message.offset,
                                sent.channel.get_topic_name(), type(exc).__name__, exc, delay, attempt)
                    await asyncio.sleep(delay)
                    sent.ack = await sent.channel.send(key=sent.key, value=sent.value, headers=sent.headers)
