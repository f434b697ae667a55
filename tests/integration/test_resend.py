"""The upstream stand-ins' producer on a real broker: a send that times out is sent again by a new
producer (what an upstream outbox does), a send the broker refuses for good is told and counted."""

from __future__ import annotations

import io
import threading
import time

import pytest
from confluent_kafka.admin import NewTopic

from orderops.model.catalog import Topic
from orderops.ops.admin import admin_client
from orderops.ops.settings import KafkaSettings
from orderops.replay.topicreader import read
from orderops.runtime.resend import ResendingProducer

pytestmark = pytest.mark.broker


def probe(name: str) -> Topic:
    return Topic(name, None, "order id", ("test",), (), "resend probe", partitions_override=1)


def test_a_send_that_times_out_is_sent_again_until_the_broker_takes_it(catalog_topics, run_id):
    topic = probe(f"test.resend-late-{run_id}")  # not there yet: sends to it time out
    admin = admin_client(KafkaSettings(catalog_topics, 1))
    told = io.StringIO()
    producer = ResendingProducer(catalog_topics, "probe", told, message_timeout_ms=2000)
    creation = threading.Timer(5, lambda: admin.create_topics([NewTopic(topic.name, 1, 1)])[topic.name].result())
    creation.start()
    try:
        producer.produce(topic.name, b"o-1", b"first")
        producer.produce(topic.name, b"o-1", b"second")
        assert producer.flush(60) == 0, told.getvalue()
        assert producer.resent >= 2 and producer.lost == 0 and "sends them again" in told.getvalue()
        values = [m.value() for m in read(catalog_topics, topic)]
        assert values[:2] == [b"first", b"second"], values  # in the order given
    finally:
        creation.join()
        admin.delete_topics([topic.name])


def test_a_send_the_broker_refuses_for_good_is_told_and_not_sent_again(catalog_topics, run_id):
    topic = probe(f"test.resend-refused-{run_id}")
    admin = admin_client(KafkaSettings(catalog_topics, 1))
    admin.create_topics([NewTopic(topic.name, 1, 1, config={"max.message.bytes": "200"})])[topic.name].result()
    time.sleep(1)
    told = io.StringIO()
    producer = ResendingProducer(catalog_topics, "probe", told, message_timeout_ms=5000)
    try:
        producer.produce(topic.name, b"o-1", b"x" * 5000)
        assert producer.flush(30) == 0
        producer.produce(topic.name, b"o-1", b"small")  # a batch of its own: the broker judges batches
        assert producer.flush(30) == 0
        assert producer.lost == 1 and producer.resent == 0, told.getvalue()
        assert "for good" in told.getvalue()
        assert [m.value() for m in read(catalog_topics, topic)] == [b"small"]
    finally:
        admin.delete_topics([topic.name])
