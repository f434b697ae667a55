"""The simulator: same seed, same bytes; chaos counted exactly; and on the real broker, a
processor accounts for every malformed message the simulator sent to the topics it reads."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import UTC, datetime

import pytest
from orderops_tools.simulator import SCENARIOS, Config, order_story, plan, play
from orderops_tools.testing import ServiceProcess, free_port, read_topic

from orderops.codec.avro import Codec
from orderops.model.catalog import DEAD_LETTER_TOPICS, ORDER_STATE, inputs_of

START = datetime(2026, 11, 1, tzinfo=UTC)


def test_same_seed_same_bytes_other_seed_other_orders():
    config = Config(seed=7, orders=25, duplicates=0.05, reorder=0.1, malformed=0.02)
    first, _ = plan(config, START)
    again, _ = plan(config, START)
    assert [(s.at, s.topic.name, s.key, s.value) for s in first] == [(s.at, s.topic.name, s.key, s.value) for s in again]
    other, _ = plan(Config(seed=8, orders=25), START)
    assert {s.value for s in other}.isdisjoint({s.value for s in first if s.kind not in ("malformed",)})


def test_chaos_is_counted_exactly():
    config = Config(seed=3, orders=60, duplicates=0.05, reorder=0.1, malformed=0.03)
    sends, chaos = plan(config, START)
    kinds = Counter(s.kind for s in sends)
    assert kinds["duplicate"] == chaos["duplicates"] > 0
    assert kinds["malformed"] == sum(v for k, v in chaos.items() if k.startswith("malformed:")) > 0
    assert chaos["reordered"] > 0
    originals = {(s.key, s.value) for s in sends if s.kind not in ("duplicate", "malformed")}
    assert {(s.key, s.value) for s in sends if s.kind == "duplicate"} <= originals


def test_every_event_is_schema_valid_and_each_topic_keeps_an_orders_order():
    codec = Codec()
    sends, _ = plan(Config(seed=5, orders=40, reorder=0.3), START)
    last: dict[tuple[bytes, str], float] = {}
    for send in sends:
        if send.kind in ("duplicate", "malformed"):
            continue
        codec.decode(send.value, send.topic.value_schema)
        key = (send.key, send.topic.name)
        assert send.at >= last.get(key, send.at)
        last[key] = send.at


def test_orders_cover_the_scenarios_the_brief_names():
    types = Counter()
    for n in range(300):
        types.update(e.envelope.short_type for e in order_story(Config(seed=11), n, START).events)
    for wanted in ("OrderPlaced", "AuthorizationFailed", "AuthorizationExpired", "PaymentCaptured", "LineBackordered",
                   "BackorderEtaChanged", "TrackingUpdated", "DeliveryFailed", "ReturnedToSender", "OrderCancelled",
                   "LineCancelledByWarehouse", "ReturnRequested", "InspectionCompleted", "ContactOpened"):
        assert types[wanted] > 0, wanted
    assert set(SCENARIOS) >= {"split_shipment", "backorder", "return", "refund_failure"}


@pytest.mark.broker
async def test_a_processor_accounts_for_every_malformed_message(catalog_topics, run_id, tmp_path):
    """order-state dead-letters exactly the malformed messages sent to the topics it reads."""
    config = Config(seed=int(run_id, 16) % 10**6, orders=15, malformed=0.15, duplicates=0.1, rate=5000,
                    compression=10**9, start=START)
    env = {"KAFKA_BOOTSTRAP": catalog_topics, "ORDEROPS_INSTANCE": f"t{run_id}", "WEB_PORT": str(free_port()),
           "ORDEROPS_DATA_DIR": str(tmp_path / "state")}
    process = ServiceProcess(["-m", "order_state"], env, tmp_path / "order-state.log", int(env["WEB_PORT"])).start()
    try:
        await process.wait_ready()
        summary = play(config, catalog_topics, answer_refunds=False)
        read = {t.name for t in inputs_of(ORDER_STATE)}
        expected = sum(v for k, v in summary.items() if k.startswith("malformed:") and k.split(":", 1)[1] in read)
        assert expected > 0, summary
        prefix = f"sim-{config.seed}-".encode()
        dead = read_topic(catalog_topics, DEAD_LETTER_TOPICS[ORDER_STATE].name,
                          keep=lambda m: m.key().startswith(prefix), until=lambda got: len(got) >= expected,
                          timeout=90)
        assert len(dead) == expected
    finally:
        process.stop(signal.SIGKILL)
