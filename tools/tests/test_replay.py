"""The on-call tools against the real broker: inspect decodes (dead letters with their headers),
reset refuses while the processor runs and moves its group when it does not, redrive sends each
dead letter back once and records it."""

from __future__ import annotations

import json
import signal

import pytest
from confluent_kafka import Consumer, TopicPartition
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import ServiceProcess, free_port, orderops_cli, producer, read_topic

from orderops.codec.avro import NotSingleObjectEncoded
from orderops.model.catalog import DEAD_LETTER_TOPICS, ORDER_STATE, REDRIVE_TOPICS, STOREFRONT_ORDERS
from orderops.ops.security import client_config
from orderops.runtime import deadletter

pytestmark = pytest.mark.broker



def placed(order_id: str) -> Story:
    story = Story(order_id)
    story.on(STOREFRONT_ORDERS).OrderPlaced(customer=customer(), lines=[line("l1", "Blue mug", 1, "10.00")],
                                            instruments=[card("card-1", "10.00")], shipping_address=address(),
                                            total=money("10.00"))
    story.on(STOREFRONT_ORDERS).OrderCancelled(reason="changed my mind", requested_by="customer")
    return story


def test_inspect_decodes_a_topic_and_a_dead_letter(catalog_topics, run_id):
    order_id = f"insp-{run_id}"
    kafka = producer(catalog_topics)
    placed(order_id).publish(kafka)
    result = orderops_cli(catalog_topics, "replay", "inspect", STOREFRONT_ORDERS.name, "--order", order_id)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["type"] for x in lines] == ["OrderPlaced", "OrderCancelled"]
    assert lines[0]["event"]["payload"]["lines"][0]["name"] == "Blue mug"

    dlq = DEAD_LETTER_TOPICS[ORDER_STATE]
    headers = deadletter.dead_letter_headers(None, topic=STOREFRONT_ORDERS.name, partition=3, offset=7,
                                             error=NotSingleObjectEncoded("no marker"), service=ORDER_STATE)
    kafka.produce(dlq.name, key=order_id.encode(), value=b"garbage", headers=headers)
    kafka.flush(10)
    result = orderops_cli(catalog_topics, "replay", "inspect", dlq.name, "--order", order_id)
    [dead] = [json.loads(x) for x in result.stdout.splitlines()]
    assert dead["value"] == "garbage" and dead["headers"]["error-class"] == "not-single-object-encoded"
    assert dead["headers"]["origin-offset"] == "7"


async def test_reset_refuses_while_running_and_moves_the_group_when_stopped(catalog_topics, run_id, tmp_path):
    instance = f"r{run_id}"
    env = {"KAFKA_BOOTSTRAP": catalog_topics, "ORDEROPS_INSTANCE": instance, "WEB_PORT": str(free_port()),
           "ORDEROPS_DATA_DIR": str(tmp_path / "state")}
    process = ServiceProcess(["-m", "order_state"], env, tmp_path / "order-state.log", int(env["WEB_PORT"])).start()
    try:
        await process.wait_ready()
        placed(f"reset-{run_id}").publish(producer(catalog_topics))
        refused = orderops_cli(catalog_topics, "replay", "reset", ORDER_STATE, "--instance", instance, "--to-earliest")
        assert refused.returncode == 1 and "are running" in refused.stderr
    finally:
        process.stop(signal.SIGTERM)
    dry = orderops_cli(catalog_topics, "replay", "reset", ORDER_STATE, "--instance", instance, "--to-earliest", "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout
    done = orderops_cli(catalog_topics, "replay", "reset", ORDER_STATE, "--instance", instance, "--to-earliest")
    assert done.returncode == 0, done.stderr
    group = Consumer(client_config(catalog_topics, **{"group.id": f"{ORDER_STATE}-{instance}"}))
    committed = group.committed([TopicPartition(STOREFRONT_ORDERS.name, p) for p in range(STOREFRONT_ORDERS.partitions)],
                                timeout=30)
    group.close()
    assert [tp.offset for tp in committed] == [0] * STOREFRONT_ORDERS.partitions


def test_redrive_sends_each_dead_letter_back_once(catalog_topics, run_id):
    order_id = f"redr-{run_id}"
    dlq = DEAD_LETTER_TOPICS[ORDER_STATE]
    fixed = placed(order_id).encoded()[0][2]  # a valid event, as if the cause had been fixed
    headers = [("trace-id", b"t-9"), *deadletter.dead_letter_headers(
        None, topic=STOREFRONT_ORDERS.name, partition=1, offset=5, error=ValueError("a bug, since fixed"),
        service=ORDER_STATE)]
    kafka = producer(catalog_topics)
    kafka.produce(dlq.name, key=order_id.encode(), value=fixed, headers=headers)
    misrouted = f"elsewhere-{run_id}"  # the same event keyed by another order: sent back, it would be refused again
    kafka.produce(dlq.name, key=misrouted.encode(), value=fixed, headers=headers)
    kafka.flush(10)
    dry = orderops_cli(catalog_topics, "replay", "redrive", ORDER_STATE, "--order", order_id, "--dry-run")
    assert dry.returncode == 0 and "decodes now" in dry.stdout
    dry = orderops_cli(catalog_topics, "replay", "redrive", ORDER_STATE, "--order", misrouted, "--dry-run")
    assert "STILL UNDECODABLE (key-is-not-the-order-id)" in dry.stdout, dry.stdout
    first = orderops_cli(catalog_topics, "replay", "redrive", ORDER_STATE, "--order", order_id)
    assert first.returncode == 0 and "re-drove 1" in first.stdout, first.stdout + first.stderr
    again = orderops_cli(catalog_topics, "replay", "redrive", ORDER_STATE, "--order", order_id)
    assert "re-drove 0" in again.stdout and "1 already re-driven" in again.stdout
    [back] = read_topic(catalog_topics, STOREFRONT_ORDERS.name, keep=lambda m: m.key() == order_id.encode()
                        and any(k == "redriven-from" for k, _ in (m.headers() or [])), until=lambda got: len(got) >= 1)
    headers_back = dict(back.headers())
    assert back.value() == fixed and headers_back["trace-id"] == b"t-9"
    assert deadletter.ERROR not in headers_back and headers_back["redriven-from"].startswith(dlq.name.encode())
    ledger = read_topic(catalog_topics, REDRIVE_TOPICS[ORDER_STATE].name, until=lambda got: len(got) >= 1)
    assert any(json.loads(m.value())["origin"] == STOREFRONT_ORDERS.name for m in ledger)


def test_a_poison_record_on_the_redrive_ledger_is_told_and_left_out_and_can_be_removed(catalog_topics, run_id):
    """One bad record on a compacted topic never stops a tool, and never marks a dead letter as sent
    back: a value that is no ledger entry, and an entry under another dead letter's key."""
    ledger = REDRIVE_TOPICS[ORDER_STATE]
    forged = json.dumps({"dlq": DEAD_LETTER_TOPICS[ORDER_STATE].name, "partition": 0, "offset": 1, "origin": "x",
                         "at": "2026-12-01T00:00:00+00:00"}).encode()
    poison = {f"poison-{run_id}".encode(): b"\xc3\x01 not json", f"0:9{int(run_id, 16) % 10**6}".encode(): forged}
    kafka = producer(catalog_topics)
    for key, value in poison.items():
        kafka.produce(ledger.name, key=key, value=value)
    kafka.flush(10)
    ran = orderops_cli(catalog_topics, "replay", "redrive", ORDER_STATE, "--order", f"none-{run_id}", "--dry-run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for key in poison:
        assert f"(key {key.decode()})" in ran.stderr and "orderops topics drop-unreadable" in ran.stderr, ran.stderr
    dropped = orderops_cli(catalog_topics, "topics", "drop-unreadable", ledger.name)
    assert dropped.returncode == 0 and all(f"(key {key.decode()})" in dropped.stdout for key in poison), dropped.stdout
    again = orderops_cli(catalog_topics, "replay", "redrive", ORDER_STATE, "--order", f"none-{run_id}", "--dry-run")
    assert again.returncode == 0 and "poison" not in again.stderr and "not a redrive record" not in again.stderr, again.stderr
