"""Faust's Kafka consumer in the processor's own event loop, instead of a thread of its own.

Faust runs aiokafka's consumer in a ``ServiceThread`` with a second event loop, and every call to it
— each ``getmany`` above all — crosses between the two loops: a method-queue put with
``call_soon_threadsafe``, a wake-up of the consumer's loop through its self-pipe, the call, and a
second ``call_soon_threadsafe`` to resolve the caller's future. A processor that keeps up gets one or
two records per ``getmany``, so that round trip is paid per message: ``strace`` of the pipeline at
100 events/s counted 4.4–4.7 event-loop wake-ups, about 3 futex waits and 2–3 self-pipe writes per
message received (docs/performance.md, "Session 11").

Here the same consumer class runs as an ordinary ``mode`` service in the app's loop, and a call to
it is a plain ``await``. Everything else stays Faust's and aiokafka's: the fetcher, the rebalance
listener (whose callbacks still go through the consumer's method queue, now in the same loop),
commits, seeks. What the thread gave — aiokafka's heartbeats and prefetching going on while the
processor's loop is busy — matters only if one step holds the loop for seconds; a step here takes a
millisecond or two, and the group's heartbeat runs in its own task between them.

``ORDEROPS_CONSUMER_THREAD=1`` restores Faust's thread (for an A/B, or if a processor ever needs it).
Fed at 50 events/s, each processor used 4–9% less CPU in the app's loop.

The bigger cost turned out to be the fetches themselves (``FetchPolicy``, in either mode).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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


def consumer_runs_in(consumer: Any) -> str | None:
    """Where a Faust consumer's Kafka client runs: ``"app-loop"``, ``"thread"``, or ``None`` (none yet)."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        return None
    return "app-loop" if isinstance(thread, InLoopConsumer) else "thread"


def install(in_loop: bool = True, fetch_min_bytes: int = FAUST_FETCH_MIN_BYTES,
            fetch_max_wait_ms: int = FAUST_FETCH_MAX_WAIT_MS) -> None:
    """Make Faust's aiokafka consumers run in the app's loop (``in_loop``), or in Faust's thread;
    and fetch by ``FetchPolicy(fetch_min_bytes, fetch_max_wait_ms)`` (the defaults: Faust's)."""
    global _policy
    faust_aiokafka.Consumer._new_consumer_thread = _new_consumer_thread if in_loop else _faust_new_consumer_thread
    _policy = FetchPolicy(fetch_min_bytes, fetch_max_wait_ms)
    faust_aiokafka.AIOKafkaConsumerThread.on_start = _on_start
