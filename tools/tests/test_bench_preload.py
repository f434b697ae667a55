"""The benchmark's preload reaches the broker in the order it was sent, but for sends close together
(orderops_tools.bench.produce, ``in_order_every``): written all at once, an order's events on different
topics got broker timestamps in any order, and the processors alone parked most of fulfillment's
input, a different number each run."""

from __future__ import annotations

import dataclasses

import pytest
from orderops_tools import bench

from orderops.ops.admin import create_topics
from orderops.ops.settings import KafkaSettings
from orderops.replay.topicreader import read_messages

pytestmark = pytest.mark.broker


def test_sends_further_apart_than_the_batch_reach_the_broker_in_order(catalog_topics, run_id, monkeypatch):
    sends = bench.workload(3000, seed=3)[0]
    topics = {send.topic.name: dataclasses.replace(send.topic, name=f"preload-{run_id}-{send.topic.name}") for send in sends}
    create_topics(tuple(topics.values()), KafkaSettings(catalog_topics, 1))
    monkeypatch.setattr(bench, "BOOTSTRAP", [catalog_topics])

    bench.produce(sends, topic_of=lambda send: topics[send.topic.name].name, in_order_every=100)

    sent_at = {send.value: n for n, send in enumerate(sends)}
    written = sorted((sent_at[m.value], m.timestamp_ms) for m in read_messages(catalog_topics, list(topics.values()),
                                                                                progress=False))
    assert [n for n, _ in written] == list(range(len(sends))), "every send written once"
    latest_before = 0
    for n, at in written:
        if n >= 101:
            latest_before = max(latest_before, written[n - 101][1])
        assert at >= latest_before, f"send {n} was written before a send more than 100 earlier"
