"""A record the broker refuses for good (here: larger than its topic takes) dead-letters the input
record it came of, and the processor goes on with the next ones: the batch path's one wait for its
records, the dead letters' wait after it, and the state written from the first wait's offsets."""

from __future__ import annotations

import signal

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import PrivateBroker, poll_json, producer, read_topic, start_processors

from orderops.model.catalog import DEAD_LETTER_TOPICS, ORDER_STATE, ORDERS_STATE_CHANGES, STOREFRONT_ORDERS
from orderops.ops.security import client_config
from orderops.runtime import deadletter

pytestmark = pytest.mark.broker


def order(order_id: str) -> Story:
    story = Story(order_id)
    story.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(), lines=[line("l1", "Blue mug", 2, "30.00")], instruments=[card("card-1", "60.00")],
        shipping_address=address(), total=money("60.00"))
    return story


async def test_a_record_refused_for_good_dead_letters_its_cause_and_the_processor_goes_on(tmp_path, run_id):
    broker = PrivateBroker(tmp_path / "broker")  # its topics' settings are this test's to change
    bootstrap = broker.start()
    process = None
    try:
        from orderops.ops.admin import create_topics
        from orderops.ops.settings import KafkaSettings

        create_topics(settings=KafkaSettings(bootstrap, 1))
        admin = AdminClient(client_config(bootstrap))
        tiny = ConfigResource(ConfigResource.Type.TOPIC, ORDERS_STATE_CHANGES.name, incremental_configs=[
            ConfigEntry("max.message.bytes", "64", incremental_operation=AlterConfigOpType.SET)])
        for future in admin.incremental_alter_configs([tiny]).values():
            future.result(30)
        process = start_processors(bootstrap, tmp_path, {"ORDEROPS_INSTANCE": f"refused{run_id}"},
                                   names=(ORDER_STATE,))[ORDER_STATE]
        await process.wait_ready(timeout=120)
        kafka = producer(bootstrap)
        first, second = f"refused-a-{run_id}", f"refused-b-{run_id}"
        order(first).publish(kafka)
        letters = read_topic(bootstrap, DEAD_LETTER_TOPICS[ORDER_STATE].name, lambda got: len(got) >= 1, timeout=90,
                             keep=lambda m: m.key() == first.encode())
        headers = dict(letters[0].headers())
        assert headers[deadletter.ORIGIN_TOPIC].decode() == STOREFRONT_ORDERS.name
        assert b"too large" in headers[deadletter.ERROR].lower(), headers[deadletter.ERROR]
        order(second).publish(kafka)  # the processor goes on: the next order is applied (and refused) as well
        read_topic(bootstrap, DEAD_LETTER_TOPICS[ORDER_STATE].name, lambda got: len(got) >= 1, timeout=90,
                   keep=lambda m: m.key() == second.encode())
        for order_id in (first, second):  # its state is written from the offsets of the first wait
            await poll_json(process, f"/orders/{order_id}", lambda view, order_id=order_id: view.get("order_id") == order_id,
                            timeout=60)
        assert process.process.poll() is None, process.log_tail()
    finally:
        if process is not None:
            process.stop(signal.SIGKILL)
        broker.stop()
