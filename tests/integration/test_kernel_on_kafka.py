"""The riskiest point of the stack, proven on a real broker: a Faust app built with the kernel
keeps a RocksDB table keyed by order over two co-partitioned topics, writes its changelog,
recovers the table from the changelog alone after a restart with its local state deleted, and
dead-letters poison messages (with every header) without stopping."""

from __future__ import annotations

import re
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import ServiceProcess, free_port, producer, read_topic

from orderops.model.catalog import PAYMENTS_EVENTS, STOREFRONT_ORDERS, dead_letter_topic
from orderops.ops.admin import create_topics
from orderops.ops.settings import KafkaSettings
from orderops.runtime import deadletter

pytestmark = pytest.mark.broker
HERE = Path(__file__).parent


def _story(order_id: str) -> Story:
    story = Story(order_id)
    story.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(), lines=[line("l1", "Blue mug", 2, "12.50")], instruments=[card("card-1", "25.00")],
        shipping_address=address(), total=money("25.00"),
    )
    story.after(minutes=2).on(PAYMENTS_EVENTS).PaymentAuthorized(
        instrument_id="card-1", amount=money("25.00"), authorization_id=f"auth-{order_id}")
    story.after(hours=20).on(PAYMENTS_EVENTS).PaymentCaptured(
        instrument_id="card-1", amount=money("25.00"), capture_id=f"cap-{order_id}")
    return story


async def _wait_for(probe: ServiceProcess, order_id: str, applied: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        status, state = await probe.get_json(f"/probe/orders/{order_id}")
        if status == 200 and len(state.get("applied", {})) >= applied:
            return state
        time.sleep(0.3)
    raise AssertionError(f"{order_id}: expected {applied} applied events, have {state}\n{probe.log_tail()}")


async def test_table_recovers_from_changelog_and_poison_goes_to_dlq(catalog_topics, run_id, tmp_path):
    bootstrap = catalog_topics
    service_name = f"kernel-probe-{run_id}"
    dlq = dead_letter_topic(service_name)
    create_topics((dlq,), KafkaSettings(bootstrap, 1))
    data_dir = tmp_path / "state"
    env = {"KAFKA_BOOTSTRAP": bootstrap, "PROBE_SERVICE_NAME": service_name, "PROBE_ORDER_PREFIX": f"p{run_id}-",
           "ORDEROPS_DATA_DIR": str(data_dir), "WEB_PORT": str(free_port()), "LOG_LEVEL": "info"}
    probe = ServiceProcess([str(HERE / "kernel_probe_app.py")], env, tmp_path / "probe.log", int(env["WEB_PORT"]))
    probe.start()
    try:
        health = await probe.wait_ready()
        assert health["recovered"] and health["assigned_partitions"] > 0

        # Enough orders to land on several partitions of both topics.
        order_ids = [f"p{run_id}-{n}" for n in range(12)]
        kafka = producer(bootstrap)
        for order_id in order_ids:
            _story(order_id).publish(kafka)
        # Poison: bytes that are not an event, then an event the processing step refuses;
        # each is followed by a good event for the same order, which must still be applied.
        poisoned = order_ids[0]
        kafka.produce(STOREFRONT_ORDERS.name, key=poisoned.encode(), value=b"not avro at all",
                      headers=[("trace-id", b"abc123")])
        bad = Story(poisoned)
        bad.on(STOREFRONT_ORDERS).OrderCancelled(reason="raise-in-processing", requested_by="customer")
        bad.on(STOREFRONT_ORDERS).OrderCancelled(reason="changed my mind", requested_by="customer")
        for topic, key, value in bad.encoded():
            kafka.produce(topic.name, key=key, value=value)
        assert kafka.flush(30) == 0

        before = {}
        for order_id in order_ids:
            before[order_id] = await _wait_for(probe, order_id, 4 if order_id == poisoned else 3)
        assert len({state["partition"] for state in before.values()}) > 1, "orders should span partitions"
        assert sorted(before[poisoned]["applied"].values()) == [
            "OrderCancelled", "OrderPlaced", "PaymentAuthorized", "PaymentCaptured"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{env['WEB_PORT']}/metrics", timeout=10).read().decode()
        memtables = re.search(r'^orderops_rocksdb_memory_bytes\{part="memtables",processor="[^"]+"\} (\S+)$', metrics, re.M)
        assert memtables and float(memtables.group(1)) > 0, "the table's RocksDB shares the processor's limit"

        dead = read_topic(bootstrap, dlq.name, until=lambda got: len(got) >= 2)
        assert len(dead) == 2
        undecodable, unprocessable = sorted(dead, key=lambda m: m.offset())  # same order: same partition
        headers = dict(undecodable.headers())
        assert undecodable.value() == b"not avro at all" and undecodable.key() == poisoned.encode()
        assert headers["trace-id"] == b"abc123", "original headers must be kept"
        assert headers[deadletter.ORIGIN_TOPIC] == STOREFRONT_ORDERS.name.encode()
        assert int(headers[deadletter.ORIGIN_OFFSET]) >= 0 and int(headers[deadletter.ORIGIN_PARTITION]) >= 0
        assert headers[deadletter.ERROR_CLASS] == b"not-single-object-encoded"
        assert headers[deadletter.SERVICE] == service_name.encode()
        assert b"C3 01" in headers[deadletter.ERROR] and headers[deadletter.FAILED_AT]
        processing = dict(unprocessable.headers())
        assert processing[deadletter.ERROR_CLASS] == b"processing-error"
        assert b"told to fail" in processing[deadletter.ERROR]

        # Restart with the local RocksDB state deleted: the table must come back from the changelog.
        assert probe.stop(signal.SIGTERM) == 0, probe.log_tail()
        shutil.rmtree(data_dir)
        probe.start()
        await probe.wait_ready()
        for order_id in order_ids:
            status, after = await probe.get_json(f"/probe/orders/{order_id}")
            assert status == 200 and after == before[order_id], f"{order_id} not recovered: {after}"
    finally:
        probe.stop(signal.SIGKILL)
