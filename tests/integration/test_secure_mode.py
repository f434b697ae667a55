"""Secure mode on a real broker of its own (TLS, SASL/SCRAM-SHA-512, the StandardAuthorizer with
nothing allowed without an ACL), every principal and ACL made from the catalog:

- a plaintext connection and a wrong password are refused;
- a processor's principal is refused what its ACLs do not give it (another's input, an upstream
  topic to write, another's consumer group, a topic outside its prefix), and gets what they do;
- the whole flow runs with each part as its own principal — the processors, the policy admin
  publishing policies, the simulator playing the upstream systems, the on-call engineer
  rebuilding state — and ends where an unsecured run ends: every state machine what a clean
  replay gives, every order in the support view, e-mails sent, nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from orderops_tools.testing import (
    Mailbox,
    PrivateBroker,
    environment,
    orderops_cli,
    poll_json,
    rebuilt_identically,
    start_processors,
)

from orderops.model import catalog
from orderops.ops.security import client_config
from orderops.ops.settings import PRODUCER_DEFAULTS
from orderops.replay.topicreader import read

pytestmark = pytest.mark.broker
ORDERS = 12



@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    broker = PrivateBroker(tmp_path_factory.mktemp("secure") / "broker", secure=True)
    broker.start()
    yield broker
    broker.stop()


def test_no_way_in_without_tls_and_the_right_password(secure_broker):
    plaintext = AdminClient({"bootstrap.servers": secure_broker.bootstrap, "log_level": 0})
    with pytest.raises(KafkaException):
        plaintext.list_topics(timeout=5)
    with environment(secure_broker.client_env("fulfillment")):
        wrong = {**client_config(secure_broker.bootstrap), "sasl.password": "not-the-password", "log_level": 0}
    seen: list[KafkaError] = []
    admin = AdminClient({**wrong, "error_cb": seen.append})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    admin.poll(3)  # error callbacks are served by poll
    assert any(e.code() == KafkaError._AUTHENTICATION and "invalid credentials" in e.str() for e in seen), seen


def test_a_processor_gets_exactly_what_its_acls_give(secure_broker):
    with environment(secure_broker.client_env(catalog.FULFILLMENT)):
        config = client_config(secure_broker.bootstrap)
    # Write: its own output yes, an upstream system's topic no.
    producer = Producer({**config, **PRODUCER_DEFAULTS})
    results: dict[str, KafkaError | None] = {}
    for topic in (catalog.FULFILLMENT_STATE_CHANGES, catalog.STOREFRONT_ORDERS):
        producer.produce(topic.name, key=b"acl-probe", value=b"not an event",
                         on_delivery=lambda err, msg, name=topic.name: results.__setitem__(name, err))
    producer.flush(30)
    assert results[catalog.FULFILLMENT_STATE_CHANGES.name] is None
    assert results[catalog.STOREFRONT_ORDERS.name].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # Read (a message waits on each): its input yes, another processor's input (payments) no.
    with environment(secure_broker.client_env()):
        admin_producer = Producer(client_config(secure_broker.bootstrap, **PRODUCER_DEFAULTS))
    for topic in (catalog.WAREHOUSE_FULFILLMENT, catalog.PAYMENTS_EVENTS):
        admin_producer.produce(topic.name, key=b"acl-probe", value=b"probe", partition=0)
    assert admin_producer.flush(30) == 0
    assert _first_answer(config, catalog.WAREHOUSE_FULFILLMENT.name).value() == b"probe"
    assert _first_answer(config, catalog.PAYMENTS_EVENTS.name).error().code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Another processor's consumer group: no.
    intruder = Consumer({**config, "group.id": catalog.ORDER_STATE, "auto.offset.reset": "earliest"})
    intruder.subscribe([catalog.WAREHOUSE_FULFILLMENT.name])
    try:
        deadline, error = time.monotonic() + 30, None
        while error is None and time.monotonic() < deadline:
            message = intruder.poll(1)
            if message is not None and message.error():
                error = message.error()
        assert error is not None and error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, error
    finally:
        intruder.close()
    # Topics: its own prefix (changelogs) yes, another's no.
    admin = AdminClient(config)
    futures = admin.create_topics([NewTopic(f"{catalog.FULFILLMENT}-probe-changelog", 1, 1),
                                   NewTopic(f"{catalog.ORDER_STATE}-probe-changelog", 1, 1)])
    futures[f"{catalog.FULFILLMENT}-probe-changelog"].result(30)
    with pytest.raises(KafkaException) as refused:
        futures[f"{catalog.ORDER_STATE}-probe-changelog"].result(30)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Its own internal topics: created, read and written, never deleted (ALL on the prefix allowed it).
    gone = admin.delete_topics([f"{catalog.FULFILLMENT}-probe-changelog"], operation_timeout=30)
    with pytest.raises(KafkaException) as kept:
        gone[f"{catalog.FULFILLMENT}-probe-changelog"].result(30)
    assert kept.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def _first_answer(config: dict, topic: str):
    """The first message or error a consumer of ``topic`` (in a group the principal may use) gets."""
    consumer = Consumer({**config, "group.id": f"fulfillment-acl-probe-{topic}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and (not message.error() or message.error().code() != KafkaError._PARTITION_EOF):
                return message
        raise AssertionError(f"{topic}: no answer within 30 s")
    finally:
        consumer.close()


async def test_the_whole_flow_runs_with_each_part_as_its_own_principal(secure_broker, run_id, tmp_path,
                                                                       support_users):
    bootstrap = secure_broker.bootstrap
    mailbox = Mailbox().start()
    processes = {}
    try:
        published = orderops_cli(bootstrap, "policies", "publish", env=secure_broker.client_env(catalog.POLICY_ADMIN))
        assert published.returncode == 0, published.stderr
        processes = start_processors(bootstrap, tmp_path, {"ORDEROPS_SMTP_PORT": str(mailbox.port),
                                                           "ORDEROPS_NOTIFIER_CHANNELS": "email"},
                                     broker=secure_broker)
        await asyncio.gather(*(p.wait_ready(timeout=180) for p in processes.values()))
        seed = int(run_id, 16) % 10**6
        simulator = subprocess.run(
            [sys.executable, "-m", "orderops_tools.simulator", "--orders", str(ORDERS), "--seed", str(seed),
             "--rate", "200", "--compression", "1000000000", "--start", datetime(2026, 9, 1, tzinfo=UTC).isoformat(),
             "--order-gap", "0.3"],
            env={**secure_broker.env, **secure_broker.client_env("simulator")}, capture_output=True, text=True,
            timeout=300)
        sent = f"sent:{catalog.STOREFRONT_ORDERS.name}"
        assert simulator.returncode == 0 and sent in simulator.stdout, simulator.stderr[-2000:]

        for n in range(ORDERS):
            await poll_json(processes["timeline"], f"/orders/sim-{seed}-{n:06d}", lambda v: v["placed_at"] is not None,
                            timeout=120)
        on_call = secure_broker.client_env(catalog.ON_CALL)
        for processor in ("order-state", "fulfillment", "returns"):
            deadline = time.monotonic() + 180
            while True:
                result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--clock", "wall", env=on_call)
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(3)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
            assert rebuilt_identically(result)[0] > 0, result.stdout
        await _until(lambda: len(mailbox.messages) > 0, 60)
        with environment(secure_broker.client_env()):
            dead = {t.name: [m.key() for m in read(bootstrap, t) if m.key() != b"acl-probe"]  # the ACL test's probes
                    for t in catalog.DEAD_LETTER_TOPICS.values()}
        assert not any(dead.values()), dead
        for name, process in processes.items():
            assert "AuthorizationFailed" not in process.log_tail(400), (name, process.log_tail(40))
    finally:
        for process in processes.values():
            process.stop(signal.SIGKILL)
        mailbox.stop()


async def _until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.5)
