"""The topic catalog is the contract every service, test and tool reads: keep it true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orderops.codec.schemas import SchemaRegistry
from orderops.model import catalog

REPO = Path(__file__).resolve().parents[2]
REGISTRY = SchemaRegistry()


@pytest.mark.parametrize("topic", catalog.ALL_TOPICS, ids=lambda t: t.name)
def test_names_follow_the_convention(topic):
    assert catalog.NAME_PATTERN.match(topic.name), f"{topic.name}: lowercase, '.' between segments, '-' inside words"
    assert "_" not in topic.name


@pytest.mark.parametrize("topic", catalog.ALL_TOPICS, ids=lambda t: t.name)
def test_every_topic_has_exactly_one_writer_except_the_notification_inbox_and_the_digests(topic):
    known = set(catalog.PROCESSORS) | set(catalog.UPSTREAM_SYSTEMS)
    assert topic.writers and set(topic.writers) <= known
    assert set(topic.readers) <= known
    if topic in (catalog.NOTIFICATIONS_REQUESTS, catalog.TIMELINE_DIGESTS):
        assert set(topic.writers) == {catalog.ORDER_STATE, catalog.FULFILLMENT, catalog.RETURNS}
    else:
        assert len(topic.writers) == 1, f"{topic.name} has writers {topic.writers}"


def test_order_scoped_topics_are_co_partitioned():
    counts = {t.name: t.partitions for t in catalog.ALL_TOPICS if t.order_scoped}
    assert len(set(counts.values())) == 1, counts


def test_partition_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ORDEROPS_PARTITIONS", "12")
    assert catalog.STOREFRONT_ORDERS.partitions == 12
    assert catalog.RETURNS_POLICIES.partitions == 1, "the global policy table is not order-scoped"


def test_every_processor_has_a_dead_letter_topic_it_alone_writes():
    for processor in catalog.PROCESSORS:
        dlq = catalog.DEAD_LETTER_TOPICS[processor]
        assert dlq.name == f"{processor}.dlq" and dlq.writers == (processor,) and dlq.value_schema is None


def test_every_value_schema_exists_and_compacted_topics_are_keyed_by_identity():
    for topic in catalog.DATA_TOPICS:
        assert topic.value_schema in REGISTRY.sources, topic.name
    compacted = {t.name for t in catalog.ALL_TOPICS if t.compacted} - {t.name for t in catalog.REDRIVE_TOPICS.values()}
    assert compacted == {"returns.policies", "support.order-views"}


def test_data_flow_matches_the_design():
    """The brief's topic map, but for fulfillment's status: on a topic of its own, read by order-state and
    returns instead of all of fulfillment.state-changes; and the state machines' records reach the
    timeline in digests, one per cause (docs/architecture.md, "Data flow")."""
    reads = {p: {t.name for t in catalog.inputs_of(p)} for p in catalog.PROCESSORS}
    assert reads[catalog.ORDER_STATE] == {"storefront.orders", "payments.events", "fulfillment.status"}
    assert reads[catalog.FULFILLMENT] == {"storefront.orders", "warehouse.fulfillment"}
    assert reads[catalog.RETURNS] == {"storefront.orders", "storefront.returns", "warehouse.returns", "payments.events",
                                      "fulfillment.status", "returns.policies", "support.actions"}
    assert reads[catalog.NOTIFIER] == {"notifications.requests"}
    upstream_and_derived = {t.name for t in catalog.DATA_TOPICS} - {
        "returns.policies", "support.timeline", "support.order-views", "support.escalations"} - catalog.DIGESTED_TOPICS
    assert reads[catalog.TIMELINE] == upstream_and_derived
    assert {catalog.TIMELINE_DIGESTS.name, catalog.NOTIFICATIONS_DELIVERIES.name} <= reads[catalog.TIMELINE]
    machines_write = {t.name for p in (catalog.ORDER_STATE, catalog.FULFILLMENT, catalog.RETURNS)
                      for t in catalog.outputs_of(p) if t in catalog.DATA_TOPICS}
    assert machines_write - {catalog.TIMELINE_DIGESTS.name} == catalog.DIGESTED_TOPICS


def test_unknown_topic_is_a_clear_error():
    with pytest.raises(KeyError, match="not in the topic catalog"):
        catalog.topic("storefront.order")


def _python_files():
    for folder in ("kernel", "services", "tests", "tools"):
        yield from (REPO / folder).rglob("*.py") if (REPO / folder).is_dir() else ()


def test_no_topic_name_is_written_as_a_literal_outside_the_catalog():
    names = {t.name for t in catalog.ALL_TOPICS}
    offenders = []
    for path in _python_files():
        if (path.name == "catalog.py" and path.parent.name == "model") or path == Path(__file__).resolve():
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not offenders, "use orderops.model.catalog instead of topic-name literals:\n" + "\n".join(offenders)
