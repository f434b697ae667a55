"""Faust as the engine, not the data path: the one module of the batch runtime that reaches into
faust-streaming and aiokafka.

Faust keeps what an engine is for: the consumer group, partition assignment, changelog-backed
table recovery, standby replicas, the worker's lifecycle and the web server. Its fetch loop is
handed over: records of the processor's own input topics go, a fetched batch at a time, to a
``BatchHandler`` (``orderops.runtime.batch``); every other record (a changelog's, while a table
recovers or a standby follows) goes to Faust as before. Nothing here is patched: Faust is given
subclasses through its public settings (``App.transport``).

Private names this module uses, all checked by ``tests/unit/test_runtime_engine.py`` against the
pinned versions (``PINNED``):

- ``faust.transport.consumer.Consumer._drain_messages(fetcher)``: overridden, the fetch loop;
- ``faust.transport.consumer.Consumer._wait_next_records(timeout)``: one fetch, with Faust's flow
  control and without the partitions it pauses (an active table's while it recovers);
- ``faust.transport.drivers.aiokafka.Consumer._to_message(tp, record)``: a record of another topic
  made into Faust's message, as its own loop makes it;
- ``faust.transport.drivers.aiokafka.Consumer._new_consumer_thread()``: overridden, the consumer in
  the app's loop (``orderops.oneloop.InLoopConsumer``);
- ``faust.transport.consumer.Consumer._commit(offsets)`` and ``._committed_offset``: commit, and
  keep Faust's idea of the commits current (lag, the seek after a rebalance);
- ``mode.Service._stopped``: whether the consumer or the fetcher stops;
- aiokafka's ``AIOKafkaConsumer._subscription.subscription.assignment.state_value(tp)``: a
  partition's position, high watermark and pause, for the hold-back rule's lag;
- ``faust.stores.rocksdb.Store._db_for_partition(partition)``: a key read in its partition's
  database only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from importlib.metadata import version
from typing import Any, NamedTuple, Protocol

import faust
from faust.serializers import codecs
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from orderops.oneloop import InLoopConsumer, handed_on

log = logging.getLogger("orderops.runtime.engine")
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class BatchHandler(Protocol):
    """What the engine hands fetched records of the processor's own inputs to."""

    def reads(self, topic: str) -> bool: ...

    def busy(self) -> AbstractContextManager[None]:
        """Held from a fetch's return until its records are handled: a revocation waits for it."""

    async def handle(self, records: Mapping[TP, list], engine: Engine) -> None: ...


class PartitionState(NamedTuple):
    position: int | None
    highwater: int | None
    paused: bool


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose fetch loop hands the processor's input records to its
    ``BatchHandler`` a fetched batch at a time."""

    handler: BatchHandler | None = None  # set by BatchTransport, before the consumer starts

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return InLoopConsumer(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        handler = self.handler
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
                    mine: dict[TP, list] = {}
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
            log.exception("the batch loop stopped: %r. The worker restarts its fetcher; what was not committed is "
                          "read again.", exc)
            raise


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


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
        return done

    async def seek(self, tp: TP, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (a batch that could not finish)."""
        await self.consumer.seek(tp, offset)

    def flowing(self) -> bool:
        """False once a rebalance (or the worker's stop) began: what is not applied yet waits."""
        return self.consumer.flow_active and not self.consumer.should_stop

    def partition_states(self) -> dict[TP, PartitionState]:
        """aiokafka's state of every assigned partition; empty while there is none."""
        try:
            subscription = self.consumer._thread._ensure_consumer()._subscription.subscription
            assignment = subscription.assignment if subscription is not None else None
        except Exception:  # not started yet
            return {}
        if assignment is None:
            return {}
        states = {}
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            states[TP(tp.topic, tp.partition)] = PartitionState(state._position, state.highwater, state.paused)
        return states


def run_batches(app: faust.App, handler: BatchHandler, channel: faust.TopicT,
                on_revoked: Callable[[], Awaitable[None]]) -> None:
    """Make ``app`` fetch with ``BatchConsumer`` and hand ``channel``'s records to ``handler``.
    Call before the app starts. ``on_revoked`` runs when partitions are taken away, before Faust
    lets them go: the batch in hand finishes and commits, what waits is forgotten."""
    transport = BatchTransport(app.conf.broker_consumer, app)
    transport.Consumer = type("BatchConsumer", (BatchConsumer,), {"handler": handler})
    app.transport = transport
    app.topics.add(channel)  # subscribed; no agent reads it: the consumer hands its records over

    async def revoked(*args: Any, **kwargs: Any) -> None:
        await on_revoked()

    app.on_partitions_revoked.connect(revoked)


def read_stored(table: faust.TableT, key: bytes, partition: int) -> bytes | None:
    """A key's bytes in the table's store, looked up in its partition's database only (Faust's own
    read, outside a stream, asks every partition's database of a key it has not seen)."""
    store = table.data
    by_partition = getattr(store, "_db_for_partition", None)
    if by_partition is None:  # the in-memory store (tests): Faust's read
        value = table.get(codecs.loads(table.key_serializer, key))
        return None if value is None else codecs.dumps(table.value_serializer, value)
    return by_partition(partition).get(key)


def versions_in_use() -> dict[str, str]:
    return {name: version(name) for name in PINNED}
