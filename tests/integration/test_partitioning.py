"""How the catalog's topics behave on the broker: the same order id lands on the same partition
whether the simulator (confluent-kafka) or a processor (Faust/aiokafka) writes it, and records of the
topics merged by time carry the broker's append time, not the producer's."""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Producer
from confluent_kafka.admin import NewTopic

from orderops.model.catalog import DATA_TOPICS, Topic
from orderops.ops.admin import admin_client, create_topics
from orderops.ops.security import KafkaSecurity, client_config
from orderops.ops.settings import PRODUCER_DEFAULTS, KafkaSettings
from orderops.replay.topicreader import read

pytestmark = pytest.mark.broker


async def test_partitioners_agree(catalog_topics, run_id):
    # A throwaway topic with the order-scoped partition count: catalog topics get no junk.
    probe = Topic(f"test.partitioning-{run_id}", None, "order id", ("test",), (), "partitioner probe")
    create_topics((probe,), KafkaSettings(catalog_topics, 1))
    try:
        await _check(catalog_topics, probe.name, run_id)
    finally:
        admin_client(KafkaSettings(catalog_topics, 1)).delete_topics([probe.name])


async def _check(bootstrap: str, topic: str, run_id: str) -> None:
    keys = [f"order-{run_id}-{n}".encode() for n in range(200)]
    confluent_partitions, default_partitions = {}, {}

    def remember(into):
        return lambda err, msg: into.__setitem__(msg.key(), msg.partition())

    for config, into in ((PRODUCER_DEFAULTS, confluent_partitions), ({}, default_partitions)):
        producer = Producer(client_config(bootstrap, **config))
        for key in keys:
            producer.produce(topic, key=key, value=b"", on_delivery=remember(into))
        assert producer.flush(30) == 0

    aiokafka = AIOKafkaProducer(bootstrap_servers=bootstrap, **KafkaSecurity.from_env().aiokafka())
    await aiokafka.start()
    try:
        aio_partitions = {key: (await aiokafka.send_and_wait(topic, b"", key=key)).partition
                          for key in keys}
    finally:
        await aiokafka.stop()

    assert confluent_partitions == aio_partitions
    assert default_partitions != aio_partitions, "librdkafka's default (CRC32) differs: the setting matters"


def test_merged_topics_carry_the_brokers_append_time_whatever_the_producer_says(catalog_topics, run_id):
    """A record sent by a producer that held it back (here: stamped an hour ago) is stamped when the
    broker appends it, so a partition's timestamps follow its offsets and replays merge as live did."""
    assert all(t.config.get("message.timestamp.type") == "LogAppendTime" for t in DATA_TOPICS if t.merged_by_time)
    probe = Topic(f"test.append-time-{run_id}", None, "order id", ("test",), (), "timestamp probe")  # as an order log
    create_topics((probe,), KafkaSettings(catalog_topics, 1))
    try:
        producer = Producer(client_config(catalog_topics, **PRODUCER_DEFAULTS))
        an_hour_ago = time.time() - 3600
        for n in range(3):
            producer.produce(probe.name, key=b"o-1", value=str(n).encode(), timestamp=int(an_hour_ago * 1000))
        assert producer.flush(30) == 0
        stamps = [m.timestamp() for m in read(catalog_topics, probe)]
        assert len(stamps) == 3 and all(kind == TIMESTAMP_LOG_APPEND_TIME and ms > (an_hour_ago + 3000) * 1000
                                        for kind, ms in stamps), stamps
    finally:
        admin_client(KafkaSettings(catalog_topics, 1)).delete_topics([probe.name])


def test_an_existing_topic_is_reported_until_aligned_with_the_catalog(catalog_topics, run_id):
    """A topic created before the catalog asked for the broker's timestamps: reported as differing,
    then set to the catalog's by ``align`` (what `orderops topics create --align` does)."""
    settings = KafkaSettings(catalog_topics, 1)
    topic = Topic(f"test.old-settings-{run_id}", None, "order id", ("test",), (), "a topic an older release made")
    older = {key: value for key, value in topic.config.items() if key != "message.timestamp.type"}
    admin = admin_client(settings)
    admin.create_topics([NewTopic(topic.name, topic.partitions, 1, config=older)])[topic.name].result()
    try:
        found = create_topics((topic,), settings)
        assert found.differing == {topic.name: ["message.timestamp.type=CreateTime, catalog says LogAppendTime"]}
        aligned = create_topics((topic,), settings, align=True)
        assert not aligned.differing
        assert aligned.aligned == {topic.name: ["message.timestamp.type=CreateTime, now LogAppendTime"]}
        assert create_topics((topic,), settings).differing == {}
    finally:
        admin.delete_topics([topic.name])
