"""Compacted topics read whole: every worker of a processor holds all of it (a global table).

``read_compacted`` is for tools (synchronous, confluent-kafka). ``GlobalView`` is for processors:
it reads the topic from the beginning without a consumer group, keeps following it, and reports
``caught_up`` once it has read everything that was there when it started — the processor's
/healthz is not ready before.

Both apply one rule to a record that cannot be read (it does not decode, or decodes into something
``convert`` refuses): the key's latest record governs, so the key is absent, and the record is
reported (topic, partition, offset, key, why) — never a crash, never a read from the start again.
A later good record for the key, or a tombstone, ends it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as CTopicPartition

from orderops.codec.avro import Codec
from orderops.model.catalog import Topic
from orderops.ops.security import KafkaSecurity, client_config

log = logging.getLogger("orderops.runtime.globalview")


class BrokerUnavailable(Exception):
    """No broker answered, or the topic is missing: what to do is in the message."""


@dataclass(frozen=True)
class Unreadable:
    """A compacted topic's latest record for a key that cannot be read."""

    topic: str
    partition: int
    offset: int
    key: str
    why: str

    def describe(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset} (key {self.key}): {self.why}"


@dataclass
class Compacted:
    entries: dict[str, Any] = field(default_factory=dict)
    unreadable: dict[str, Unreadable] = field(default_factory=dict)  # by key

    def apply(self, topic: str, partition: int, offset: int, key: str, value: bytes | None,
              read: Callable[[bytes], Any]) -> Unreadable | None:
        """One record, in offset order; returns what it could not read."""
        self.entries.pop(key, None)
        self.unreadable.pop(key, None)
        if value is None:
            return None
        try:
            self.entries[key] = read(value)
        except Exception as exc:  # an undecodable record, or a value its reader refuses: reported, not fatal
            self.unreadable[key] = Unreadable(topic, partition, offset, key, f"{type(exc).__name__}: {exc}")
            return self.unreadable[key]
        return None


def read_all(bootstrap: str, topic: Topic, codec: Codec | None = None, timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Every key's latest record on a compacted topic (tombstones remove keys); a record that
    cannot be read is logged and left out (``read_compacted`` says which)."""
    found = read_compacted(bootstrap, topic, codec, timeout=timeout)
    for bad in found.unreadable.values():
        log.warning("%s; left out. Publish a good record for the key, or remove it: orderops topics drop-unreadable %s",
                    bad.describe(), topic.name)
    return found.entries


def drop_unreadable(bootstrap: str, topic: Topic, convert: Callable[[dict[str, Any]], Any] = lambda record: record,
                    codec: Codec | None = None, reader: Reader | None = None) -> list[Unreadable]:
    """Write a tombstone for every key whose latest record cannot be read; returns what it removed."""
    from confluent_kafka import Producer

    from orderops.ops.settings import PRODUCER_DEFAULTS

    found = read_compacted(bootstrap, topic, codec, convert, reader=reader)
    if not found.unreadable:
        return []
    producer = Producer(client_config(bootstrap, **PRODUCER_DEFAULTS))
    for bad in found.unreadable.values():
        producer.produce(topic.name, key=bad.key.encode(), value=None, partition=bad.partition)
    if producer.flush(30):
        raise BrokerUnavailable(f"{topic.name}: the broker did not acknowledge the tombstones within 30 s; run the "
                                "command again")
    return list(found.unreadable.values())


# Reads a compacted topic's record (key, value) that is no Avro of the catalog (a ledger's JSON), or raises.
Reader = Callable[[str, bytes], Any]


def read_compacted(bootstrap: str, topic: Topic, codec: Codec | None = None,
                   convert: Callable[[dict[str, Any]], Any] = lambda record: record, timeout: float = 30,
                   reader: Reader | None = None) -> Compacted:
    """Every key's latest record on a compacted topic, converted (or read by ``reader``); and the
    keys whose latest record cannot be read."""
    from orderops.ops.admin import QuietLogger

    codec = codec or Codec()
    consumer = Consumer(client_config(bootstrap, **{"group.id": f"orderops-reader-{uuid.uuid4().hex}",
                                                    "enable.auto.commit": False, "logger": QuietLogger()}))
    try:
        try:
            metadata = consumer.list_topics(topic.name, timeout=timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} ({exc.args[0].str()}): start one "
                                    "(make kafka-up) or set KAFKA_BOOTSTRAP") from None
        if metadata.topics[topic.name].error is not None:
            raise BrokerUnavailable(f"{topic.name}: {metadata.topics[topic.name].error.str()} "
                                    "(create the topics: make topics)")
        partitions = list(metadata.topics[topic.name].partitions)
        ends = {p: _end_offset(consumer, topic.name, p, timeout) for p in partitions}
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([CTopicPartition(topic.name, p, OFFSET_BEGINNING) for p in pending])
        latest = Compacted()

        def read(value: bytes) -> Any:
            return convert(codec.decode(value, topic.value_schema or "").record)

        while pending:
            message = consumer.poll(timeout)
            if message is None:
                raise TimeoutError(f"{topic.name}: no message within {timeout}s while reading it whole")
            if message.error():
                continue
            key = (message.key() or b"").decode(errors="replace")
            latest.apply(topic.name, message.partition(), message.offset(), key, message.value(),
                         read if reader is None else functools.partial(reader, key))
            if message.offset() + 1 >= ends[message.partition()]:
                pending.discard(message.partition())
        return latest
    finally:
        consumer.close()


def _end_offset(consumer: Consumer, topic: str, partition: int, timeout: float) -> int:
    """The partition's end offset, retried while the broker is still electing its leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(CTopicPartition(topic, partition), timeout=timeout)[1])
        except KafkaException as exc:
            error = exc.args[0]
            electing = error.code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                                        KafkaError.UNKNOWN_TOPIC_OR_PART)
            if not (electing or error.retriable()) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class GlobalView:
    def __init__(self, bootstrap: str, topic: Topic, codec: Codec, convert: Callable[[dict[str, Any]], Any],
                 remedy: str = "") -> None:
        """``remedy``: the command that removes an unreadable record (default: the generic one)."""
        self.bootstrap, self.topic, self.codec, self.convert = bootstrap, topic, codec, convert
        self.remedy = remedy or f"orderops topics drop-unreadable {topic.name}"
        self.view = Compacted()
        self.items: dict[str, Any] = self.view.entries
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        """Follow the topic for the life of the process; a failure is logged and retried (a view
        that stopped would leave the processor deciding on stale policies without saying so)."""
        delay = 1.0
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker went away, a rebalance of the cluster...
                log.warning("%s: reading it failed (%s: %s); retrying in %.0fs. If this repeats, check the broker "
                            "and that the topic exists (make topics).", self.topic.name, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                    **KafkaSecurity.from_env().aiokafka())
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic.name, p) for p in range(self.topic.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            behind = {tp for tp, end in ends.items() if end > 0}
            while True:
                if not behind and not self.caught_up.is_set():
                    log.info("%s: read %d entries; caught up", self.topic.name, len(self.items))
                    self.caught_up.set()
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, messages in batch.items():
                    for message in messages:
                        self._apply(message)
                        if tp in behind and message.offset + 1 >= ends[tp]:
                            behind.discard(tp)
        finally:
            await consumer.stop()

    @property
    def unreadable(self) -> dict[str, Unreadable]:
        return self.view.unreadable

    def _apply(self, message: Any) -> None:
        key = message.key.decode(errors="replace") if message.key else ""
        bad = self.view.apply(self.topic.name, message.partition, message.offset, key, message.value, self._read)
        if bad is not None:
            log.error("%s; the key is left out of the view. Publish a good record for it, or remove it: %s",
                      bad.describe(), self.remedy)

    def _read(self, value: bytes) -> Any:
        return self.convert(self.codec.decode(value, self.topic.value_schema or "").record)
