"""Reading whole topics (or ranges) with a throw-away consumer: what the on-call tools, the
offline rebuild and the policy what-if read. No consumer group is joined or committed."""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from orderops.model import catalog
from orderops.ops.security import client_config
from orderops.replay.rebuild import Message


def consumer_for(bootstrap: str) -> Consumer:
    from orderops.ops.admin import QuietLogger

    return Consumer(client_config(bootstrap, **{"group.id": f"orderops-replay-{uuid.uuid4().hex}",
                                                "enable.auto.commit": False, "logger": QuietLogger()}))


def read(bootstrap: str, topic: catalog.Topic, partitions: list[int] | None = None, start: dict[int, int] | None = None,
         stop: dict[int, int] | None = None) -> list[Any]:
    """Every message of the topic's partitions from ``start`` (default: the beginning) up to the end
    as it was when reading began (or ``stop``), in partition and offset order."""
    consumer = consumer_for(bootstrap)
    try:
        chosen = partitions if partitions is not None else list(range(topic.partitions))
        ends = {p: _end_offset(consumer, topic.name, p) for p in chosen}
        if stop:
            ends = {p: min(ends[p], stop.get(p, ends[p])) for p in chosen}
        first = {p: (start or {}).get(p, OFFSET_BEGINNING) for p in chosen}
        pending = {p for p in chosen if ends[p] > max(first[p], 0)}
        consumer.assign([TopicPartition(topic.name, p, first[p]) for p in pending])
        messages: list[Any] = []
        while pending:
            message = consumer.poll(10)
            if message is None:
                raise TimeoutError(f"{topic.name}: nothing arrived for 10 s while {sorted(pending)} were unread")
            if message.error():
                continue
            if message.partition() in pending and message.offset() < ends[message.partition()]:
                messages.append(message)
            if message.offset() + 1 >= ends[message.partition()]:
                pending.discard(message.partition())
        return sorted(messages, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def _end_offset(consumer: Consumer, topic: str, partition: int, patience: float = 30) -> int:
    """The partition's end offset; a broker that just started answers NOT_LEADER for a moment."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)[1])
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def read_messages(bootstrap: str, topics: list[catalog.Topic], progress: bool = True) -> list[Message]:
    messages: list[Message] = []
    for topic in topics:
        for m in read(bootstrap, topic):
            messages.append(Message(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                                    tuple(m.headers() or ())))
        if progress:
            print(f"  read {topic.name}: {len(messages):,} messages so far", file=sys.stderr, flush=True)
    return messages


