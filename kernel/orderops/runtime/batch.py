"""The data path: one fetched batch of a processor's input partitions, from records to a commit.

``BatchRunner.handle`` is the whole of it, in this order:

1. **merge**: the batch (with the records that waited from the last one) in write order across
   topics, by broker time, each partition in offset order; records whose task still has older
   records on the broker wait for the next batch (``ordering.held_within``, the hold-back rule);
2. **apply**: each record through the processor's ``apply`` (decode, the pure functions, encode):
   its outputs are handed to the producer at once, its state changes are kept per key in the
   ``Batch`` (a later record of the same order reads them), anything raised dead-letters it;
3. **effects** (only a processor with effects outside Kafka: the notifier's messages): the batch
   is written first (step 4 without the offsets), so what the effects will do is durable before
   the far end hears of it; then the effects run, up to ``concurrency`` keys at once, each key's
   in sequence, and what they leave (state, records) is a second batch;
4. **commit** (``BatchRunner._commit``, the one place the order of writes is decided): the
   producer's wait for the batch's outputs (a record refused for good dead-letters its cause, and
   that is waited for too); then the changelog records, one per changed key, and a wait for them;
   the state stores, one write batch per table with the changelog offsets Faust's recovery resumes from;
   the follow-ups (metrics); the input offsets, at most every ``commit_interval`` seconds (and at a
   revocation): a commit is a broker round trip, and a crash between commits only reads again
   what is written already (and finds it applied).

Nothing is committed before the outputs and the state it covers are acknowledged, no changelog
record is sent before the outputs of the events it counts as applied are acknowledged, and the
state store is written only after its changelog records are: a crash anywhere reads the batch's records
again, they produce the same records with the same ids (readers drop the copies), and a record
already applied is recognised by its event id. At-least-once with idempotent outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson
from faust.serializers import codecs
from faust.types import TP

from orderops.runtime.engine import Engine, read_stored
from orderops.runtime.metrics import LATEST_RECORDS, count_tally
from orderops.runtime.ordering import held_within, in_write_order, lag_of, tasks_of, with_held, write_order
from orderops.runtime.producer import BatchProducer

log = logging.getLogger("orderops.runtime.batch")
# The input record being applied, (topic, partition, offset, key): what a line logged meanwhile is of
# (orderops.ops.logs puts it into each JSON line).
APPLYING: ContextVar[tuple[str, int, int, bytes | None] | None] = ContextVar("orderops_applying", default=None)
# Seconds a task waits for a partition whose fetches fail before it goes on without it: longer than
# a leader's failover (the broker's session timeout, 9 s by default, then the clients' metadata
# refresh), so that a node's loss does not reorder an order's events.
TASK_IDLE_LIMIT = 30.0


class StateTable(Protocol):
    """What the runtime needs of a Faust table: read a key, and apply changelog records to its store."""

    name: str
    key_serializer: Any
    value_serializer: Any
    changelog_topic: Any

    def get(self, key: Any, default: Any = None) -> Any: ...

    def apply_changelog_batch(self, batch: Any) -> None: ...


class StoredMessage(NamedTuple):
    tp: TP
    partition: int
    offset: int
    key: bytes
    value: bytes | None


class Stored:
    """One changelog record of a table as its store applies it: the shape of Faust's changelog
    event (``message`` with the bytes, where RocksDB reads them; ``key`` and ``value`` parsed,
    where the in-memory store reads them)."""

    __slots__ = ("key", "message")

    def __init__(self, tp: TP, offset: int, key: Any, key_bytes: bytes, value_bytes: bytes | None) -> None:
        self.message = StoredMessage(tp, tp.partition, offset, key_bytes, value_bytes)
        self.key = key

    @property
    def value(self) -> Any:
        return None if self.message.value is None else orjson.loads(self.message.value)


@dataclass
class StateChange:
    table: StateTable
    key: str
    stored: bytes | None  # what the table keeps (None: the key is deleted)
    loaded: Any  # the value as the processor uses it
    partition: int
    remember: bool = True  # kept by the StateCache for later batches (a value that is read again)
    sent: tuple[int, str, bytes] | None = None  # its changelog record handed over already: (number, topic, key)
    # A working value (``Batch.working``): changed in place by the batch's records, serialized once, at the commit.
    serialize: Callable[[Any], bytes] | None = None


class StateCache:
    """The values (as the processor uses them: immutable) of the keys the last batches wrote or
    read, the most recent ``size`` of them: an order's next event, a batch or two later, does not
    read and parse its state again. Forgotten at a revocation: a partition may come back after another
    worker changed it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, table: str, key: str) -> Any:
        return self._values.get((table, key), _MISSING)

    def keep(self, changes: Iterable[StateChange]) -> None:
        values = self._values
        for change in changes:
            if not change.remember:
                continue
            where = (change.table.name, change.key)
            values[where] = change.loaded
            values.move_to_end(where)
        while len(values) > self.size:
            values.popitem(last=False)

    def remember(self, table: str, key: str, value: Any) -> None:
        """A value read from the store (what it holds: the batches before wrote it)."""
        values = self._values
        values[(table, key)] = value
        if len(values) > self.size:
            values.popitem(last=False)

    def clear(self) -> None:
        self._values.clear()


_MISSING = object()
E = TypeVar("E", bound="Effect")


@dataclass
class Batch:
    """One batch's work in hand: what it changed, what it sent, and what follows the commit."""

    producer: BatchProducer
    cache: StateCache
    changes: dict[tuple[str, str], StateChange] = field(default_factory=dict)
    causes: dict[int, Any] = field(default_factory=dict)  # producer number -> the input record it came of
    follow_ups: list[Callable[[], None]] = field(default_factory=list)
    counted: dict[str, int] = field(default_factory=dict)  # records applied (or dead-lettered) per topic
    tally: Counter[tuple[Any, ...]] = field(default_factory=Counter)  # transitions, parks, rejections (metrics.tally_outcome)
    # (topic, key) -> what builds its record, and the input record it came of: only the newest is sent
    latest: dict[tuple[str, str], tuple[Callable[[], tuple[bytes, bytes]], Any]] = field(default_factory=dict)
    superseded: dict[str, int] = field(default_factory=dict)  # latest-only records a newer one replaced, per topic
    effects: dict[str, Effect] = field(default_factory=dict)  # key -> its work outside Kafka, after the write
    notes: dict[Any, Any] = field(default_factory=dict)  # the record handler's own bookkeeping for this batch
    bases: dict[tuple[str, str], Any] = field(default_factory=dict)  # working values as they were before the batch

    def load(self, table: StateTable, key: str, load: Callable[[Any], Any], partition: int) -> Any:
        """The key's value as the batch's earlier records left it, else as the table has it in the
        partition's store (``load`` of the stored value; None when there is none)."""
        change = self.changes.get((table.name, key))
        if change is not None:
            return change.loaded
        cached = self.cache.get(table.name, key)
        if cached is not _MISSING:
            return cached
        stored = read_stored(table, codecs.dumps(table.key_serializer, key), partition)
        value = None if stored is None else load(codecs.loads(table.value_serializer, stored))
        self.cache.remember(table.name, key, value)  # an order's deadline, read at each of its events, often stays
        return value

    def put(self, table: StateTable, key: str, stored: bytes | None, loaded: Any, partition: int,
            remember: bool = True, at_once: bool = False) -> None:
        """The key's new value (``stored``: as its table keeps it, None deletes it), written at the
        commit; ``remember``: kept for later batches' reads (False for a value the processor never
        reads); ``at_once``: its changelog record is sent now, not at the commit (an effect's
        outcome, on record as soon as it is known: a crash before the commit finds it)."""
        change = StateChange(table, key, stored, loaded, partition, remember)
        if at_once:
            change.sent = self._send_changelog(change)
        self.changes[(table.name, key)] = change

    def working(self, table: StateTable, key: str, load: Callable[[Any], Any], copy: Callable[[Any], Any],
                partition: int) -> Any:
        """The key's value for the batch to change in place (None when there is none): the batch's
        own copy, made at its first use in the batch (``copy`` of what ``load`` gives); a value read
        from the cache or the store is never changed, so the cache may share it. A value several
        records change is copied once and written once (``put_working``), not once per record."""
        change = self.changes.get((table.name, key))
        if change is not None and change.serialize is not None:
            return change.loaded
        value = self.load(table, key, load, partition)
        self.bases[(table.name, key)] = value
        return None if value is None else copy(value)

    def put_working(self, table: StateTable, key: str, value: Any, serialize: Callable[[Any], bytes],
                    partition: int) -> StateChange:
        """``value`` (from ``working``, changed in place; or new) is the key's: ``serialize(value)``
        as the table keeps it is made at the commit, from the value as the batch's last record left
        it. The change: its ``loaded`` is the key's value as the batch leaves it (what a follow-up
        reads; a follow-up that held the batch itself would keep it alive until the collector ran)."""
        where = (table.name, key)
        change = self.changes.get(where)
        if change is not None and change.serialize is not None:
            change.loaded = value
            return change
        change = self.changes[where] = StateChange(table, key, None, value, partition, serialize=serialize)
        return change

    def base(self, table: StateTable, key: str) -> Any:
        """The key's value before the batch changed it in place (None: there was none), to make the
        working value again when a record that changed it part of the way failed."""
        return self.bases.get((table.name, key))

    def _send_changelog(self, change: StateChange) -> tuple[int, str, bytes]:
        table = change.table
        key_bytes = codecs.dumps(table.key_serializer, change.key)
        topic = table.changelog_topic.get_topic_name()
        return self.producer.send(topic, key_bytes, change.stored, partition=change.partition), topic, key_bytes

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None,
             cause: Any) -> None:
        self.causes[self.producer.send(topic, key, value, headers)] = cause

    def send_latest(self, topic: str, key: str, build: Callable[[], tuple[bytes, bytes]], cause: Any) -> None:
        """A record that only says what is latest for ``key`` (a compacted topic's): of the batch's,
        only the newest per topic and key is built (``build``: its key and value bytes) and sent, at
        the commit. ``build`` must read only values that do not change."""
        if (topic, key) in self.latest:
            self.superseded[topic] = self.superseded.get(topic, 0) + 1
        self.latest[(topic, key)] = (build, cause)

    def then(self, follow_up: Callable[[], None]) -> None:
        self.follow_ups.append(follow_up)

    def effect(self, key: str, make: Callable[[], E]) -> E:
        """The key's effect outside Kafka (``make`` builds it the first time a record of the batch
        asks for one): run after the batch is written, before its offsets are committed."""
        found = self.effects.get(key)
        if found is None:
            found = self.effects[key] = make()
        return found  # type: ignore[return-value]


class Effect(Protocol):
    """Work outside Kafka for one key, run once the batch that asked for it is durable; what it
    leaves (state, records) goes into ``after``, the batch committed with the input offsets."""

    async def run(self, after: Batch) -> None: ...


class RecordHandler(Protocol):
    """A processor's work on one input record: ``apply`` reads and changes state through the batch,
    sends its outputs through it, and dead-letters the record itself if anything raises."""

    def apply(self, batch: Batch, record: Any) -> object: ...

    def finish(self, batch: Batch) -> None:
        """Once every record of the batch is applied, before it is written: work on the batch as a
        whole (the notifier begins each order's due deliveries in cause order)."""

    def dead_letter(self, batch: Batch, record: Any, error: BaseException) -> None: ...


class BatchRunner:
    """The engine's ``BatchHandler`` for one processor: its input topics, its record handler, its
    producer."""

    def __init__(self, name: str, topics: frozenset[str], handler: RecordHandler, producer: BatchProducer,
                 counted: Callable[[dict[str, int]], None] = lambda counts: None, cached: int = 10_000,
                 max_records: int = 1000, ready: Callable[[], Awaitable[None]] | None = None,
                 concurrency: int = 1, commit_interval: float = 0.0, idle_limit: float = TASK_IDLE_LIMIT) -> None:
        """``ready``: awaited before each batch is applied (the processor's global views loaded);
        ``concurrency``: keys whose effects run at once; ``commit_interval``: seconds between
        commits of the input offsets (0: after every batch); ``idle_limit``: seconds a task's
        records wait for a partition whose fetches fail (``ordering.held_within``)."""
        self.name, self.topics, self.handler, self.producer = name, topics, handler, producer
        self.idle_limit = idle_limit
        self.concurrency = concurrency
        self.commit_interval = commit_interval
        self._uncommitted: dict[TP, int] = {}  # next offsets written (records, state) and not committed yet
        self._committed_at = time.monotonic()
        self._ready = ready
        self.max_records = max_records
        self.cache = StateCache(cached)
        self._counted = counted
        self._held: dict[TP, list[Any]] = {}  # records waiting for their task, for the next batch
        self._idle_since: dict[int, float] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def reads(self, topic: str) -> bool:
        return topic in self.topics

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    async def revoked(self, engine: Engine) -> None:
        """Partitions are taken away: the batch in hand finishes first, and what is written is
        committed; the records that wait are forgotten (they are read again from the commits by
        whoever gets them)."""
        await self._idle.wait()
        await self._commit_offsets(engine)
        self.cache.clear()
        self._held = {}
        self._idle_since.clear()

    async def handle(self, records: Mapping[TP, list[Any]], engine: Engine) -> None:
        """Apply a fetched batch, in write order, ``max_records`` at a time, each part committed
        before the next begins; a rebalance that begins meanwhile stops it after the part in hand
        (Faust then sends every partition back to its commit)."""
        if not records and not self._held:
            if self._uncommitted and self._commit_due():
                await self._commit_offsets(engine)
            return
        resume: dict[TP, int] = {}
        try:
            if self._ready is not None:
                await self._ready()
            ready, resume = self._merge(records, engine)
            for start in range(0, len(ready), self.max_records):
                if not engine.flowing():
                    break  # a revocation began: nothing more is applied of partitions that may go
                part = ready[start:start + self.max_records]
                batch = Batch(self.producer, self.cache)
                for tp, record in part:
                    batch.counted[tp.topic] = batch.counted.get(tp.topic, 0) + 1
                    applying = APPLYING.set((tp.topic, tp.partition, record.offset, record.key))
                    try:
                        self.handler.apply(batch, record)
                    finally:
                        APPLYING.reset(applying)
                self.handler.finish(batch)
                if batch.effects:
                    await self._write(batch)
                    batch = await self._run_effects(batch.effects)
                resume.update(await self._commit(batch, part, engine))
        except BaseException:
            await self._read_again(resume, engine)
            raise

    def _merge(self, records: Mapping[TP, list[Any]], engine: Engine) -> tuple[list[tuple[TP, Any]], dict[TP, int]]:
        """The records to apply now, in write order, and where each partition's records begin (to
        read them again if the batch cannot finish)."""
        if self._held:
            records = {**records, **{tp: with_held(held, records.get(tp, ())) for tp, held in self._held.items()}}
            self._held = {}
        started = {tp: batch[0].offset for tp, batch in records.items() if batch}
        merged = write_order(records)
        ordered = {tp: batch for tp, batch in records.items() if batch and in_write_order(tp.topic)}
        waiting: dict[TP, int] = {}
        if ordered:
            states = engine.partition_states({tp.partition for tp in ordered})

            def lag(tp: TP) -> int | None:
                state = states.get(tp)
                return None if state is None else lag_of(state.position, state.highwater, state.paused)

            def polled_at(tp: TP) -> int | None:
                state = states.get(tp)
                return None if state is None else state.polled_at

            waiting = held_within(ordered, tasks_of(states), lag, self._idle_since, self.idle_limit,
                                  polled_at=polled_at)
        ready = []
        for tp, record in merged:
            if record.offset >= waiting.get(tp, record.offset + 1):
                self._held.setdefault(tp, []).append(record)
            else:
                ready.append((tp, record))
        return ready, started

    async def _run_effects(self, effects: Mapping[str, Effect]) -> Batch:
        """Every key's effects, ``concurrency`` keys at a time; what they leave, as a batch."""
        after = Batch(self.producer, self.cache)
        gate = asyncio.Semaphore(self.concurrency)

        async def run(effect: Effect) -> None:
            async with gate:
                await effect.run(after)

        async with asyncio.TaskGroup() as group:
            for effect in effects.values():
                group.create_task(run(effect))
        return after

    async def _commit(self, batch: Batch, applied: list[tuple[TP, Any]], engine: Engine) -> dict[TP, int]:
        """Write the batch, then commit the offsets of the records it applied."""
        await self._write(batch)
        next_offsets: dict[TP, int] = {}
        for tp, record in applied:
            next_offsets[tp] = max(next_offsets.get(tp, 0), record.offset + 1)
        self._uncommitted.update(next_offsets)
        if self._commit_due():
            await self._commit_offsets(engine)
        return next_offsets

    def _commit_due(self) -> bool:
        return time.monotonic() - self._committed_at >= self.commit_interval

    async def _commit_offsets(self, engine: Engine) -> None:
        """Commit the offsets of what is written: its records and state are acknowledged, so a
        crash before the next commit only reads them again (and finds them applied)."""
        offsets, self._uncommitted = self._uncommitted, {}
        self._committed_at = time.monotonic()
        if offsets and not await engine.commit(offsets):
            log.info("%s: the commit of %d partitions' offsets did not go through (a rebalance?): what they "
                     "cover is read again and found applied.", self.name, len(offsets))
    async def _write(self, batch: Batch) -> None:
        """The batch's records and state, acknowledged and stored; its follow-ups run."""
        for (topic, _), (build, cause) in batch.latest.items():
            try:
                key, value = build()
            except Exception as exc:  # its cause is dead-lettered; the state it leaves is still written
                self.handler.dead_letter(batch, cause, exc)
                continue
            batch.send(topic, key, value, None, cause)
            LATEST_RECORDS.labels(self.name, topic, "sent").inc()
        for topic, n in batch.superseded.items():
            LATEST_RECORDS.labels(self.name, topic, "superseded").inc(n)
        # The outputs first, the changelog after them: a state whose changelog record is durable
        # counts its events as applied (their ids are in it), so whoever restores it never makes
        # their outputs again. Sent together, a SIGKILL once left the changelog acknowledged and a
        # parcel's dispatch records lost, for good (the fault suite's rebuild found them missing).
        offsets = await self._acknowledged(batch)
        changelog = []
        for change in batch.changes.values():
            if change.serialize is not None:
                change.stored = change.serialize(change.loaded)
            number, topic, key_bytes = change.sent or batch._send_changelog(change)
            changelog.append((number, change, TP(topic, change.partition), key_bytes))
        offsets.update(await self._acknowledged(batch))
        by_table: dict[str, list[Stored]] = {}
        tables: dict[str, StateTable] = {}
        for number, change, tp, key_bytes in changelog:
            tables[change.table.name] = change.table
            by_table.setdefault(change.table.name, []).append(
                Stored(tp, offsets[number], change.key, key_bytes, change.stored))
        for name, written in by_table.items():
            tables[name].apply_changelog_batch(written)
        self.cache.keep(batch.changes.values())
        for follow_up in batch.follow_ups:
            follow_up()
        count_tally(self.name, batch.tally)
        self._counted(batch.counted)

    async def _acknowledged(self, batch: Batch) -> dict[int, int]:
        """Wait for every record handed over; a record refused for good dead-letters its cause (and
        the dead letter is waited for too). Each acknowledged record's offset, by its number."""
        delivery = await self.producer.delivered()
        offsets = delivery.offsets
        while delivery.refused:
            for number, error in delivery.refused:
                cause = batch.causes.get(number)
                if cause is None:
                    raise error  # a changelog record or a dead letter itself: the store cannot be kept
                self.handler.dead_letter(batch, cause, error)
            delivery = await self.producer.delivered()
            offsets.update(delivery.offsets)
        return offsets

    async def _read_again(self, started: Mapping[TP, int], engine: Engine) -> None:
        """A batch that could not finish: its partitions are read again from where it began (what
        the parts before it wrote is committed first)."""
        with contextlib.suppress(Exception):
            await self._commit_offsets(engine)
        self._held = {}
        self.cache.clear()
        for tp, offset in started.items():
            try:
                await engine.seek(tp, offset)
            except Exception:  # revoked meanwhile: its new owner reads it from the commit
                log.debug("%s: could not seek %s back to %d", self.name, tp, offset)
