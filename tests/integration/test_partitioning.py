"""Co-partitioning across client libraries: the same order id must land on the same partition
whether the simulator (confluent-kafka) or a processor (Faust/aiokafka) writes it."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from orderops.admin import admin_client, create_topics
from orderops.catalog import Topic
from orderops.security import KafkaSecurity, client_config
from orderops.settings import PRODUCER_DEFAULTS, KafkaSettings

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
