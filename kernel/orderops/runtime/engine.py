"""Faust as the engine, not the data path: the one module of the batch runtime that reaches into
faust-streaming and aiokafka.

Faust keeps what an engine is for: the consumer group, partition assignment, changelog-backed
table recovery, standby replicas, the worker's lifecycle and the web server. Its fetch loop is
handed over: records of the processor's own input topics go, a fetched batch at a time, to a
``BatchHandler`` (``orderops.runtime.batch``); every other record (a changelog's, while a table
recovers or a standby follows) goes to Faust as before. Nothing here is patched: Faust is given
subclasses through its public settings (``App.transport``): the consumer (``BatchConsumer``),
aiokafka's client run in the app's own loop (``InLoopConsumer``: every call to it a plain
``await``, not a hop between two loops), and librdkafka as Faust's producer
(``orderops.runtime.faustproducer``: timer ticks, HTTP actions, Faust's own topics).

Private names this module uses, all checked by ``tests/unit/test_runtime_engine.py`` against the
pinned versions (``PINNED``):

- ``faust.transport.consumer.Consumer._drain_messages(fetcher)``: overridden, the fetch loop;
- ``faust.transport.consumer.Consumer._wait_next_records(timeout)``: one fetch, with Faust's flow
  control and without the partitions it pauses (an active table's while it recovers);
- ``faust.transport.drivers.aiokafka.Consumer._to_message(tp, record)``: a record of another topic
  made into Faust's message, as its own loop makes it;
- ``faust.transport.drivers.aiokafka.Consumer._new_consumer_thread()``: overridden, aiokafka's
  consumer in the app's loop (``InLoopConsumer``), not in a thread with a loop of its own;
- ``faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._ensure_consumer()``, and mode's
  ``ServiceThread`` methods ``InLoopConsumer`` gives back to ``mode.Service`` (``start``,
  ``maybe_start``, ``stop``, ``crash``, ``_stop_children``, ``_stop_futures``,
  ``_stop_exit_stacks``, ``_stopped_set``, ``set_shutdown``) and its ``on_thread_stop``;
- aiokafka's ``Fetcher._proc_fetch_request``, ``._records``, ``._fetch_min_bytes`` and
  ``._fetch_max_wait_ms``: how long a fetch waits, by whether the last one brought records
  (``FetchPolicy``);
- ``mode.Service.wait_first`` and Faust's ``Consumer.suspend_flow``: a changelog record handed to
  Faust (``handed_on``) that has to wait gives way to a rebalance, as in Faust's own loop;
- ``faust.transport.consumer.Consumer._commit(offsets)`` and ``._committed_offset``: commit, and
  keep Faust's idea of the commits current (lag, the seek after a rebalance);
- ``mode.Service._stopped``: whether the consumer or the fetcher stops;
- aiokafka's ``AIOKafkaConsumer._subscription.subscription.assignment.state_value(tp)``: a
  partition's position, high watermark, pause and ``timestamp`` (when the high watermark was last
  read), for the hold-back rule;
- ``faust.stores.rocksdb.Store._db_for_partition(partition)``: a key read in its partition's
  database only;
- ``mode.Worker._starting_fut``: what a worker's start raised (``start_failure``): mode's
  ``execute_from_commandline`` turns any error into ``SystemExit(1)``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, NamedTuple, Protocol

import faust
from faust.serializers import codecs
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service as ModeService
from mode.utils.futures import maybe_async

from orderops.runtime.faustproducer import RdKafkaProducer
from orderops.runtime.metrics import PRODUCER_CLIENTS_REPLACED, initialise
from orderops.runtime.resend import FATAL

log = logging.getLogger("orderops.runtime.engine")
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class BatchHandler(Protocol):
    """What the engine hands fetched records of the processor's own inputs to."""

    def reads(self, topic: str) -> bool: ...

    def busy(self) -> AbstractContextManager[None]:
        """Held from a fetch's return until its records are handled: a revocation waits for it."""

    async def handle(self, records: Mapping[TP, list[Any]], engine: Engine) -> None: ...


# Faust's fetch: answered as soon as one byte is there, else after 1.5 s.
QUIET_FETCH = (FAUST_FETCH_MIN_BYTES, FAUST_FETCH_MAX_WAIT_MS) = (1, 1500)


@dataclass(frozen=True)
class FetchPolicy:
    """How long a fetch waits for records to gather, by whether the last one brought any.

    While records flow, a fetch waits for ``min_bytes`` or ``max_wait_ms``: each fetch names every
    partition the worker holds (the timeline: 80), and one answered with the record or two that
    came since the last cost more than the records did. When the last fetch came back empty the
    processor is idle, and the next one is Faust's: the first record ends it at once (no wait added
    to a quiet system's first event) and an idle processor fetches every 1.5 s."""

    min_bytes: int = FAUST_FETCH_MIN_BYTES
    max_wait_ms: int = FAUST_FETCH_MAX_WAIT_MS

    def next_fetch(self, records_came: bool) -> tuple[int, int]:
        """(fetch_min_bytes, fetch_max_wait_ms) for the next fetch."""
        return (self.min_bytes, self.max_wait_ms) if records_came else QUIET_FETCH

    def follow(self, fetcher: Any) -> None:
        """Set aiokafka's ``fetcher`` (read for each request it builds) after each of its fetches."""
        fetch = fetcher._proc_fetch_request

        async def fetch_and_adapt(assignment: Any, node_id: int, request: Any) -> Any:
            # Records may sit in the buffer for partitions the consumer paused: only what this
            # fetch added counts.
            before = dict(fetcher._records)
            try:
                return await fetch(assignment, node_id, request)
            finally:
                came = any(before.get(tp) is not records for tp, records in fetcher._records.items())
                fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = self.next_fetch(came)

        fetcher._proc_fetch_request = fetch_and_adapt


class InLoopConsumer(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer "thread", run as a service of the app's own loop: a call to the
    client is a plain ``await``, where Faust's thread made each a hop between two loops (wake-ups,
    futex waits and self-pipe writes per fetch). Heartbeats run in their own task between batches."""

    # A thread's stop waits for the thread to say it shut down; a service in the loop is done when
    # its stop returns.
    wait_for_shutdown = False
    fetch_policy = FetchPolicy()  # set per app by run_batches

    def __init__(self, consumer: Any, *, loop: Any, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._close_thread_loop_on_stop = False  # the app's loop: not ours to close

    async def on_start(self) -> None:
        await super().on_start()  # creates and starts aiokafka's consumer, and its fetcher
        self.fetch_policy.follow(self._ensure_consumer()._fetcher)

    async def call_thread(self, fun: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
        self.add_future(maybe_async(fun(*args, **kwargs)))

    # mode's ServiceThread replaces these to run them in its thread; a service in the loop runs
    # them as any service does.
    async def start(self) -> None:
        await ModeService.start(self)

    async def maybe_start(self) -> bool:
        return bool(await ModeService.maybe_start(self))

    async def stop(self) -> None:
        await ModeService.stop(self)

    async def on_stop(self) -> None:
        await self.on_thread_stop()  # stops aiokafka's consumer

    async def crash(self, reason: BaseException) -> None:
        await ModeService.crash(self, reason)

    async def _stop_children(self) -> None:
        await ModeService._stop_children(self)

    async def _stop_futures(self) -> None:
        await ModeService._stop_futures(self)

    async def _stop_exit_stacks(self) -> None:
        await ModeService._stop_exit_stacks(self)

    def _stopped_set(self) -> None:
        ModeService._stopped_set(self)

    def set_shutdown(self) -> None:
        ModeService.set_shutdown(self)


async def handed_on(consumer: Any, callback: Callable[[Any], Coroutine[Any, Any, Any]], message: Any) -> None:
    """Hand one record of a topic the batch path does not read (a changelog's, while a table
    recovers or a standby follows) to Faust (its conductor callback). Run until it finishes or
    first waits; only one that waits goes on raced against the flow being suspended (a rebalance),
    as in Faust's own loop, without the four tasks Faust's makes for every record."""
    delivery = callback(message)
    try:
        waiting_on = delivery.send(None)
    except StopIteration:
        return
    await consumer.wait_first(asyncio.ensure_future(_rest_of(delivery, waiting_on)), consumer.suspend_flow.wait())


@types.coroutine
def _rest_of(started: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """A coroutine already run up to its first wait (on ``waiting_on``), resumed as a task would."""
    while True:
        try:
            received = yield waiting_on
        except BaseException as thrown:  # cancelled: the coroutine it waits in is cancelled too
            try:
                waiting_on = started.throw(thrown)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = started.send(received)
            except StopIteration as done:
                return done.value


class PartitionState(NamedTuple):
    position: int | None
    highwater: int | None
    paused: bool
    polled_at: int | None = None  # ms, this machine's clock: when the high watermark was last read


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose fetch loop hands the processor's input records to its
    ``BatchHandler`` a fetched batch at a time."""

    handler: BatchHandler | None = None  # set by run_batches, before the consumer starts
    fetch_policy = FetchPolicy()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        consumer = type("InLoopConsumer", (InLoopConsumer,), {"fetch_policy": self.fetch_policy})
        return consumer(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        handler = self.handler
        assert handler is not None, "run_batches gives every BatchConsumer its handler"
        engine = Engine(self)
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                records, _ = await self._wait_next_records(1.0)
                if self.should_stop:
                    return
                # Taken at once after the fetch (no await between): a revocation that begins from here
                # on waits until these records are handled, and one that began before stopped the flow.
                with handler.busy():
                    if not self.flow_active:
                        continue  # a rebalance began: every partition is sought to its commit after it
                    mine: dict[TP, list[Any]] = {}
                    for tp, batch in (records or {}).items():
                        if handler.reads(tp.topic):
                            mine[tp] = batch
                        else:
                            for record in batch:
                                await handed_on(self, self.callback, self._to_message(tp, record))
                    await handler.handle(mine, engine)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            log.critical("the batch loop stopped, and the worker with it: %r. %s", exc, stopped_advice(exc),
                         exc_info=True)
            raise


def stopped_advice(exc: BaseException) -> str:
    """What the operator does when the batch loop stopped on ``exc``: nothing it had not committed is
    lost (its records are read again after a restart), so the cause is what needs them."""
    if "No space left on device" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
        return ("The disk under the processor's state (ORDEROPS_DATA_DIR) is full. Free space there or give it more, "
                "then start the worker again: what it had not committed is read again, and its tables are restored "
                "from their changelogs where the local copy is behind.")
    return "Start the worker again once the cause is fixed: what it had not committed is read again."


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer
    Producer = RdKafkaProducer


class Engine:
    """What the batch handler asks of Faust's consumer: commits, seeks, partition states."""

    def __init__(self, consumer: BatchConsumer) -> None:
        self.consumer = consumer

    async def commit(self, offsets: Mapping[TP, int]) -> bool:
        """Commit the next offset to read of each partition; Faust's own record of commits follows."""
        if not offsets:
            return True
        done = await self.consumer._commit(offsets)
        if done:
            self.consumer._committed_offset.update(offsets)
        return bool(done)

    async def seek(self, tp: TP, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (a batch that could not finish)."""
        await self.consumer.seek(tp, offset)

    def flowing(self) -> bool:
        """False once a rebalance (or the worker's stop) began: what is not applied yet waits."""
        return self.consumer.flow_active and not self.consumer.should_stop

    def partition_states(self, numbers: set[int] | None = None) -> dict[TP, PartitionState]:
        """aiokafka's state of every assigned partition (of the partition ``numbers`` only, if
        given: a batch's tasks); empty while there is none."""
        try:
            subscription = self.consumer._thread._ensure_consumer()._subscription.subscription
            assignment = subscription.assignment if subscription is not None else None
        except Exception:  # not started yet
            return {}
        if assignment is None:
            return {}
        states = {}
        for tp in assignment.tps:
            if numbers is not None and tp.partition not in numbers:
                continue
            state = assignment.state_value(tp)
            states[TP(tp.topic, tp.partition)] = PartitionState(state._position, state.highwater, state.paused,
                                                                state.timestamp)
        return states


def run_batches(app: faust.App, processor: str, handler: BatchHandler, channel: faust.TopicT,
                on_revoked: Callable[[Engine], Awaitable[None]], fetch: FetchPolicy = FetchPolicy()) -> None:
    """Make ``app`` fetch with ``BatchConsumer`` and hand ``channel``'s records to ``handler``.
    Call before the app starts. ``on_revoked`` runs when partitions are taken away, before Faust
    lets them go (with the engine, to commit what is written): the batch in hand finishes and
    commits, what waits is forgotten."""
    transport = BatchTransport(app.conf.broker_consumer, app)
    transport.Consumer = type("BatchConsumer", (BatchConsumer,),  # type: ignore[assignment]  # a subclass
                              {"handler": handler, "fetch_policy": fetch})
    transport.Producer = type("RdKafkaProducer", (RdKafkaProducer,),  # type: ignore[assignment]  # a subclass
                              {"processor": processor})
    initialise(PRODUCER_CLIENTS_REPLACED, [(processor, FATAL), (processor, "msg_timed_out")])
    app.transport = transport
    app.topics.add(channel)  # subscribed; no agent reads it: the consumer hands its records over

    async def revoked(*args: Any, **kwargs: Any) -> None:
        await on_revoked(Engine(app.consumer))

    app.on_partitions_revoked.connect(revoked)


def read_stored(table: faust.TableT, key: bytes, partition: int) -> bytes | None:
    """A key's bytes in the table's store, looked up in its partition's database only (Faust's own
    read, outside a stream, asks every partition's database of a key it has not seen)."""
    store = table.data
    by_partition = getattr(store, "_db_for_partition", None)
    if by_partition is None:  # the in-memory store (tests): Faust's read
        value = table.get(codecs.loads(table.key_serializer, key))
        return None if value is None else codecs.dumps(table.value_serializer, value)
    found: bytes | None = by_partition(partition).get(key)
    return found


def versions_in_use() -> dict[str, str]:
    return {name: version(name) for name in PINNED}


def start_failure(worker: Any) -> BaseException | None:
    """What made a worker's start fail, once ``execute_from_commandline`` exited (None: it did not
    fail, or was cancelled: a stop)."""
    starting = getattr(worker, "_starting_fut", None)
    if starting is None or not starting.done() or starting.cancelled():
        return None
    failure: BaseException | None = starting.exception()
    return failure
