"""Faust's producer on librdkafka (orderops.runtime.faustproducer), against a real broker: records land where
every other producer here puts them, with their headers and timestamps; each future resolves with
the record's own offset; ``flush`` returns only when every record is acknowledged; a record the
broker refuses for good fails its future, as not worth sending again; records a client could not
deliver, and those a client held when it failed fatally, are sent again, in order, by a new client;
Faust declares topics through it, and a declaration the broker does not answer is made once it does."""

from __future__ import annotations

import asyncio
import logging

import faust
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic
from prometheus_client import REGISTRY

from orderops.model.catalog import Topic
from orderops.ops.admin import admin_client
from orderops.ops.settings import KafkaSettings
from orderops.replay.topicreader import read
from orderops.runtime.engine import BatchTransport
from orderops.runtime.faustproducer import RdKafkaProducer, SendFailed

pytestmark = pytest.mark.broker

PARTITIONS = 4


def replaced(run_id: str, reason: str) -> float:
    """orderops_producer_clients_replaced_total of the test's producer (labelled with its app's id)."""
    return REGISTRY.get_sample_value("orderops_producer_clients_replaced_total",
                                     {"processor": f"faustproducer-test-{run_id}", "reason": reason}) or 0.0


def probe(name: str, partitions: int = PARTITIONS) -> Topic:
    return Topic(name, None, "order id", ("test",), (), "faustproducer probe", partitions_override=partitions)


def create(bootstrap: str, topic: Topic, **config: str) -> None:
    admin = admin_client(KafkaSettings(bootstrap, 1))
    admin.create_topics([NewTopic(topic.name, topic.partitions, 1, config=config)])[topic.name].result()


async def started_producer(bootstrap: str, run_id: str, request_timeout: float = 1200.0,
                           **client_settings: object) -> tuple[faust.App, RdKafkaProducer]:
    app = faust.App(f"faustproducer-test-{run_id}", broker=f"kafka://{bootstrap}", producer_linger=0.005,
                    producer_request_timeout=request_timeout)
    app.transport = BatchTransport(app.conf.broker_consumer, app)  # as every processor's app has it
    producer = app.producer
    assert isinstance(producer, RdKafkaProducer)
    producer.client_settings = client_settings
    await producer.start()
    return app, producer


async def test_records_land_on_the_murmur2_partition_with_headers_timestamps_and_their_offsets(catalog_topics, run_id):
    topic = probe(f"test.faustproducer-land-{run_id}")
    create(catalog_topics, topic)
    app, producer = await started_producer(catalog_topics, run_id)
    try:
        keys = [f"o-{i}".encode() for i in range(40)]
        futures = [await producer.send(topic.name, key, b"v-" + key, None, 1_700_000_000.123 + i,
                                       [("cause", b"orders"), ("n", str(i).encode())])
                   for i, key in enumerate(keys)]
        acks = [await future for future in futures]
        # Through Faust's own path too (publish_message, the sensors, the FutureMessage).
        sent = await app.topic(topic.name).send(key=b"o-faust", value=b"via faust", headers=[("h", b"1")])
        faust_ack = await sent
        hashed = {key: producer.key_partition(topic.name, key).partition for key in keys}
    finally:
        await producer.stop()

    messages = read(catalog_topics, topic)
    by_key = {m.key(): m for m in messages}
    assert len(messages) == len(keys) + 1
    for i, (key, ack) in enumerate(zip(keys, acks, strict=True)):
        expected_partition = (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        message = by_key[key]
        assert (ack.topic, ack.partition, ack.offset) == (topic.name, expected_partition, message.offset())
        assert message.partition() == expected_partition == hashed[key]
        assert message.headers() == [("cause", b"orders"), ("n", str(i).encode())]
        assert message.timestamp()[1] == 1_700_000_000_123 + i * 1000
        assert ack.topic_partition == (topic.name, expected_partition)
    assert by_key[b"o-faust"].headers() == [("h", b"1")]
    assert faust_ack.offset == by_key[b"o-faust"].offset()


async def test_flush_returns_once_every_record_is_acknowledged(catalog_topics, run_id):
    topic = probe(f"test.faustproducer-flush-{run_id}")
    create(catalog_topics, topic)
    _app, producer = await started_producer(catalog_topics, run_id)
    try:
        futures = [await producer.send(topic.name, f"o-{i % 97}".encode(), bytes(200), None, None, None)
                   for i in range(20_000)]
        assert producer.in_flight > 0  # not all acknowledged right away, or this test proves nothing
        await producer.flush()
        assert producer.in_flight == 0
        assert all(f.done() and f.exception() is None for f in futures)
    finally:
        await producer.stop()
    assert len(read(catalog_topics, topic)) == 20_000


async def test_a_flush_waits_for_what_was_sent_before_it_not_for_a_producer_that_never_stops(catalog_topics, run_id):
    topic = probe(f"test.faustproducer-busy-{run_id}")
    create(catalog_topics, topic)
    _app, producer = await started_producer(catalog_topics, run_id)
    sending, busy = True, None

    async def keep_sending() -> None:
        i = 0
        while sending:
            await producer.send(topic.name, f"o-{i % 97}".encode(), bytes(100), None, None, None)
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0)

    try:
        before = [await producer.send(topic.name, b"o-1", bytes(100), None, None, None) for _ in range(5000)]
        busy = asyncio.create_task(keep_sending())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(producer.flush(), 60)  # with a flush that waits for nothing in flight: never
        assert all(f.done() for f in before)
        assert producer.in_flight > 0  # the busy sender's records were still going out
    finally:
        sending = False
        if busy is not None:
            await busy
        await producer.stop()


async def test_a_record_the_broker_refuses_for_good_fails_its_future(catalog_topics, run_id):
    topic = probe(f"test.faustproducer-refused-{run_id}", partitions=1)
    create(catalog_topics, topic, **{"max.message.bytes": "1000"})
    _app, producer = await started_producer(catalog_topics, run_id)
    try:
        refused = await producer.send(topic.name, b"o-1", bytes(5000), None, None, None)
        with pytest.raises(SendFailed) as failure:
            await refused
        assert "TOO_LARGE" in failure.value.code
        # (A record in the same produce request fails with it, as with aiokafka: the broker refuses the batch.)
        assert (await (await producer.send(topic.name, b"o-1", b"small", None, None, None))).offset >= 0
        with pytest.raises(KafkaException):  # beyond the client's own limit: refused before it is handed over
            await producer.send(topic.name, b"o-1", bytes(2_000_000), None, None, None)
        await asyncio.wait_for(producer.flush(), 30)  # failed records are settled, not waited for
        assert producer.in_flight == 0
    finally:
        await producer.stop()
    assert [m.value() for m in read(catalog_topics, topic)] == [b"small"]


async def test_records_a_client_could_not_deliver_are_sent_again_by_a_new_one_in_order(catalog_topics, run_id, caplog):
    topic = probe(f"test.faustproducer-late-{run_id}", partitions=1)  # not there yet: sends to it time out
    _app, producer = await started_producer(catalog_topics, run_id, request_timeout=2.0)
    caplog.set_level(logging.WARNING, "orderops.runtime.faustproducer")
    try:
        futures = [await producer.send(topic.name, b"o-1", f"v{i}".encode(), None, None, None) for i in range(10)]
        await asyncio.sleep(5)  # the records time out in the client at least once
        assert not any(f.done() for f in futures)  # a record that timed out is not failed: it is sent again
        await asyncio.to_thread(create, catalog_topics, topic)
        offsets = [(await asyncio.wait_for(f, 60)).offset for f in futures]
        await asyncio.wait_for(producer.flush(), 30)
    finally:
        await producer.stop()
    assert "was retired" in caplog.text and "sends the 10 record(s) not acknowledged again" in caplog.text
    assert replaced(run_id, "msg_timed_out") >= 1
    values = [m.value() for m in read(catalog_topics, topic)]
    assert values[:10] == [f"v{i}".encode() for i in range(10)], values  # in the order given
    assert [values[offset] for offset in offsets] == values[:10]


async def test_after_the_client_fails_fatally_a_new_one_sends_what_it_held_and_what_comes_next(
        catalog_topics, run_id, caplog):
    strict = probe(f"test.faustproducer-gapless-{run_id}", partitions=1)
    create(catalog_topics, strict, **{"max.message.bytes": "1000"})
    other = probe(f"test.faustproducer-after-fatal-{run_id}")
    create(catalog_topics, other)
    # With the gap-less guarantee, a batch the broker refuses is a fatal error of librdkafka's client.
    _app, producer = await started_producer(catalog_topics, run_id, **{"enable.gapless.guarantee": True})
    caplog.set_level(logging.WARNING, "orderops.runtime.faustproducer")
    try:
        refused = await producer.send(strict.name, b"o-1", bytes(5000), None, None, None)
        held = [await producer.send(other.name, f"o-{i}".encode(), b"held", None, None, None) for i in range(50)]
        with pytest.raises(SendFailed):
            await refused
        after = [await producer.send(other.name, f"o-{i}".encode(), b"after", None, None, None) for i in range(50)]
        for future in held + after:
            assert (await asyncio.wait_for(future, 60)).offset >= 0
        await asyncio.wait_for(producer.flush(), 30)
    finally:
        await producer.stop()
    assert "failed fatally" in caplog.text and caplog.text.count("was retired") == 1, caplog.text
    assert replaced(run_id, "fatal") == 1
    values = [(m.key(), m.value()) for m in read(catalog_topics, other)]
    assert {(f"o-{i}".encode(), v) for i in range(50) for v in (b"held", b"after")} <= set(values)
    for i in range(50):  # each key's records in the order given (a record written and sent again comes twice)
        mine = [v for k, v in values if k == f"o-{i}".encode()]
        assert mine == sorted(mine, key=lambda v: v == b"after"), mine


async def test_an_idle_producer_still_reports_what_its_client_says(run_id, caplog):
    from orderops_tools.testing import free_port

    caplog.set_level(logging.WARNING, "orderops.rdkafka")
    _app, producer = await started_producer(f"127.0.0.1:{free_port()}", run_id)  # nothing listens there
    try:
        for _ in range(100):
            if "Connection refused" in caplog.text:
                break
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()
    assert "Connection refused" in caplog.text  # told without a record sent


async def test_faust_declares_its_topics_through_it(catalog_topics, run_id):
    name = f"test.faustproducer-declared-{run_id}"
    _app, producer = await started_producer(catalog_topics, run_id)
    try:
        for _ in range(2):  # declaring an existing topic changes nothing
            await producer.create_topic(name, 3, 1, compacting=True, retention=3600.0)
    finally:
        await producer.stop()
    admin = admin_client(KafkaSettings(catalog_topics, 1))
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 3
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    config = admin.describe_configs([resource])[resource].result()
    assert config["cleanup.policy"].value == "compact" and config["retention.ms"].value == "3600000"


async def test_a_topic_declared_while_the_broker_drops_every_connection_is_declared_once_it_answers(
        catalog_topics, run_id, caplog):
    """Faust's conductor declares its topics through the producer; the broker killed just then
    failed the declaration (librdkafka: "Broker transport failure") and crashed the worker."""
    host, port = catalog_topics.rsplit(":", 1)
    answering = asyncio.Event()

    async def bootstrap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Every connection dropped at once (a broker dying) until ``answering``; then forwarded to the
        real broker, whose metadata sends the clients to it directly."""
        if not answering.is_set():
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    proxy = await asyncio.start_server(bootstrap, "127.0.0.1", 0)
    caplog.set_level(logging.WARNING, "orderops.runtime.faustproducer")
    name = f"test.faustproducer-declared-late-{run_id}"
    _app, producer = await started_producer(f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}", run_id)
    try:
        declaring = asyncio.ensure_future(producer.create_topic(name, 2, 1))
        for _ in range(600):  # a first attempt fails after librdkafka's metadata timeout
            if f"cannot declare topic {name} yet" in caplog.text:
                break
            await asyncio.sleep(0.1)
        assert not declaring.done() and f"cannot declare topic {name} yet" in caplog.text
        answering.set()
        await asyncio.wait_for(declaring, 60)
    finally:
        await producer.stop()
        proxy.close()
    admin = admin_client(KafkaSettings(catalog_topics, 1))
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 2
