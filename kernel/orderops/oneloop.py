"""Faust's Kafka consumer in the processor's own event loop, instead of a thread of its own.

Faust runs aiokafka's consumer in a ``ServiceThread`` with a second event loop, and every call to it
— each ``getmany`` above all — crosses between the two loops: a method-queue put with
``call_soon_threadsafe``, a wake-up of the consumer's loop through its self-pipe, the call, and a
second ``call_soon_threadsafe`` to resolve the caller's future. A processor that keeps up gets one or
two records per ``getmany``, so that round trip is paid per message: ``strace`` of the pipeline at
100 events/s counted 4.4–4.7 event-loop wake-ups, about 3 futex waits and 2–3 self-pipe writes per
message received (docs/performance.md).

Here the same consumer class runs as an ordinary ``mode`` service in the app's loop, and a call to
it is a plain ``await``. Everything else stays Faust's and aiokafka's: the fetcher, the rebalance
listener (whose callbacks still go through the consumer's method queue, now in the same loop),
commits, seeks. What the thread gave — aiokafka's heartbeats and prefetching going on while the
processor's loop is busy — matters only if one step holds the loop for seconds; a step here takes a
millisecond or two, and the group's heartbeat runs in its own task between them.

``ORDEROPS_CONSUMER_THREAD=1`` restores Faust's thread (for an A/B, or if a processor ever needs it).
Fed at 50 events/s, each processor used 4–9% less CPU in the app's loop.

The bigger cost turned out to be the fetches themselves (``FetchPolicy``, in either mode).

``drain_messages`` hands each fetched record to the streams without the four tasks per record that
Faust's loop makes (``handed_on``); ``ORDEROPS_FAUST_DRAIN=1`` restores Faust's loop.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service
from mode.utils.futures import maybe_async

_faust_new_consumer_thread = faust_aiokafka.Consumer._new_consumer_thread


class InLoopConsumer(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer "thread", run as a service of the app's own loop."""

    # A thread's stop waits for the thread to say it shut down; a service in the loop is done when
    # its stop returns.
    wait_for_shutdown = False

    def __init__(self, consumer: Any, *, loop: Any, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._close_thread_loop_on_stop = False  # the app's loop: not ours to close

    async def call_thread(self, fun: Callable[..., Awaitable], *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Callable[..., Awaitable], *args: Any, **kwargs: Any) -> None:
        self.add_future(maybe_async(fun(*args, **kwargs)))

    # mode's ServiceThread replaces these to run them in its thread; a service in the loop runs
    # them as any service does.
    async def start(self) -> None:
        await Service.start(self)

    async def maybe_start(self) -> bool:
        return await Service.maybe_start(self)

    async def stop(self) -> None:
        await Service.stop(self)

    async def on_stop(self) -> None:
        await self.on_thread_stop()  # stops aiokafka's consumer

    async def crash(self, reason: BaseException) -> None:
        await Service.crash(self, reason)

    async def _stop_children(self) -> None:
        await Service._stop_children(self)

    async def _stop_futures(self) -> None:
        await Service._stop_futures(self)

    async def _stop_exit_stacks(self) -> None:
        await Service._stop_exit_stacks(self)

    def _stopped_set(self) -> None:
        Service._stopped_set(self)

    def set_shutdown(self) -> None:
        Service.set_shutdown(self)


def _new_consumer_thread(self: faust_aiokafka.Consumer) -> faust_aiokafka.AIOKafkaConsumerThread:
    return InLoopConsumer(self, loop=self.loop, beacon=self.beacon)


# Faust's fetch: answered as soon as one byte is there, else after 1.5 s.
QUIET_FETCH = (FAUST_FETCH_MIN_BYTES, FAUST_FETCH_MAX_WAIT_MS) = (1, 1500)


@dataclass(frozen=True)
class FetchPolicy:
    """How long a fetch waits for records to gather, by whether the last one brought any.

    While records flow, a fetch waits for ``min_bytes`` or ``max_wait_ms``: each fetch names every
    partition the worker holds (the timeline: 129), encoded and decoded in Python, and one answered
    with the record or two that came since the last cost more than the records did. When the last
    fetch came back empty the processor is idle, and the next one is Faust's: the first record ends
    it at once (no wait added to a quiet system's first event) and an idle processor fetches every
    1.5 s rather than 20 times a second."""

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


_policy = FetchPolicy()  # set by install
_faust_on_start = faust_aiokafka.AIOKafkaConsumerThread.on_start


async def _on_start(self: faust_aiokafka.AIOKafkaConsumerThread) -> None:
    await _faust_on_start(self)  # creates and starts aiokafka's consumer, and its fetcher
    _policy.follow(self._ensure_consumer()._fetcher)


# -- handing fetched records to the streams -------------------------------------------------------

_faust_drain_messages = faust_consumer.Consumer._drain_messages


async def handed_on(consumer: Any, callback: Callable[[Any], Coroutine], message: Any) -> None:
    """Hand one fetched record to its topic's streams (Faust's conductor callback).

    Faust runs each callback in a task raced against the flow being suspended (a rebalance) and the
    consumer stopping: ``wait_first`` makes four tasks, waits, and cancels three, about 30 µs per
    record, most of it event-loop turns — per message, in every processor. The callback
    almost never waits: it decodes the record and puts it in the stream's buffer without blocking
    (a buffer under pressure pauses the partition's fetching instead). So it is run here until it
    finishes or first waits; only one that waits (flow control suspended for a rebalance, the
    producer's buffer or a stream's buffer full) goes on as Faust's would, raced the same way, so a
    rebalance still drops what waits for it."""
    delivery = callback(message)
    try:
        waiting_on = delivery.send(None)
    except StopIteration:
        return
    await consumer.wait_first(asyncio.ensure_future(_rest_of(delivery, waiting_on)), consumer.suspend_flow.wait())


@types.coroutine
def _rest_of(started: Coroutine, waiting_on: Any) -> Generator[Any, Any, Any]:
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


async def drain_messages(self: Any, fetcher: Any) -> None:
    """Faust's ``Consumer._drain_messages`` (faust-streaming 0.15), each record handed on by
    ``handed_on`` instead of ``wait_first``; the rest as Faust has it: read offsets, gaps of acked
    topics, commits every ``commit_every`` acks, a turn of the loop every 100 records."""
    callback, getmany = self.callback, self.getmany
    consumer_should_stop, fetcher_should_stop = self._stopped.is_set, fetcher._stopped.is_set
    get_read_offset, set_read_offset = self._read_offset.__getitem__, self._read_offset.__setitem__
    set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
    commit_every, acks_enabled_for = self._commit_every, self.app.topics.acks_enabled_for
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(faust_consumer.CONSUMER_FETCHING)
            fetched = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in fetched:
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset, read = message.offset, get_read_offset(tp)
                    if read is None or offset >= read:
                        if offset - (read or 0) > 1 and read and acks_enabled_for(message.topic):
                            await self._add_gap(tp, read + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        await handed_on(self, callback, message)
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
            unset_flag(faust_consumer.CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(faust_consumer.CONSUMER_FETCHING)


def consumer_runs_in(consumer: Any) -> str | None:
    """Where a Faust consumer's Kafka client runs: ``"app-loop"``, ``"thread"``, or ``None`` (none yet)."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        return None
    return "app-loop" if isinstance(thread, InLoopConsumer) else "thread"


def records_handed_on_by() -> str:
    """Which loop hands fetched records to the streams: ``"orderops"`` (``drain_messages``) or ``"faust"``."""
    return "orderops" if faust_consumer.Consumer._drain_messages is drain_messages else "faust"


def install(in_loop: bool = True, fetch_min_bytes: int = FAUST_FETCH_MIN_BYTES,
            fetch_max_wait_ms: int = FAUST_FETCH_MAX_WAIT_MS, faust_drain: bool = False) -> None:
    """Make Faust's aiokafka consumers run in the app's loop (``in_loop``), or in Faust's thread;
    fetch by ``FetchPolicy(fetch_min_bytes, fetch_max_wait_ms)`` (the defaults: Faust's); and hand
    records on by ``drain_messages``, or by Faust's loop (``faust_drain``)."""
    global _policy
    faust_aiokafka.Consumer._new_consumer_thread = _new_consumer_thread if in_loop else _faust_new_consumer_thread
    faust_consumer.Consumer._drain_messages = _faust_drain_messages if faust_drain else drain_messages
    _policy = FetchPolicy(fetch_min_bytes, fetch_max_wait_ms)
    faust_aiokafka.AIOKafkaConsumerThread.on_start = _on_start
