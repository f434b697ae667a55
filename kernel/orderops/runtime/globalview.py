"""Compacted topics read whole: every worker of a processor holds all of it (a global table).

``read_all`` is for tools (synchronous, confluent-kafka). ``GlobalView`` is for processors: it
reads the topic from the beginning without a consumer group, keeps following it, and reports
``caught_up`` once it has read everything that was there when it started — the processor's
/healthz is not ready before.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as CTopicPartition

from orderops.codec.avro import Codec, DecodeError
from orderops.model.catalog import Topic
from orderops.ops.security import KafkaSecurity, client_config

log = logging.getLogger("orderops.runtime.globalview")


class BrokerUnavailable(Exception):
    """No broker answered, or the topic is missing: what to do is in the message."""


def read_all(bootstrap: str, topic: Topic, codec: Codec | None = None, timeout: float = 30) -> dict[str, dict]:
    """Every key's latest record on a compacted topic (tombstones remove keys)."""
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
        latest: dict[str, dict] = {}
        while pending:
            message = consumer.poll(timeout)
            if message is None:
                raise TimeoutError(f"{topic.name}: no message within {timeout}s while reading it whole")
            if message.error():
                continue
            key = message.key().decode()
            if message.value() is None:
                latest.pop(key, None)
            else:
                latest[key] = codec.decode(message.value(), topic.value_schema).record
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
            return consumer.get_watermark_offsets(CTopicPartition(topic, partition), timeout=timeout)[1]
        except KafkaException as exc:
            error = exc.args[0]
            electing = error.code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                                        KafkaError.UNKNOWN_TOPIC_OR_PART)
            if not (electing or error.retriable()) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class GlobalView:
    def __init__(self, bootstrap: str, topic: Topic, codec: Codec, convert: Callable[[dict], Any]) -> None:
        self.bootstrap, self.topic, self.codec, self.convert = bootstrap, topic, codec, convert
        self.items: dict[str, Any] = {}
        self.caught_up = asyncio.Event()
        self.undecodable = 0

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

    def _apply(self, message: Any) -> None:
        key = message.key.decode() if message.key else ""
        if message.value is None:
            self.items.pop(key, None)
            return
        try:
            self.items[key] = self.convert(self.codec.decode(message.value, self.topic.value_schema).record)
        except DecodeError as exc:
            self.undecodable += 1
            log.error("%s[%d]@%d: cannot decode %s: %s; the entry is ignored. Republish it with a valid record.",
                      self.topic.name, message.partition, message.offset, key, exc)
