"""orderops.faustmonitor: the samples Faust's own Prometheus monitor exports, after the same hooks,
across a rebalance (which removes the per-topic and per-partition series)."""

from __future__ import annotations

from types import SimpleNamespace

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from orderops.faustmonitor import FaustMonitor


class Named:
    """A stream or table as the hooks see them: a name, hashable by identity."""

    def __init__(self, name: str) -> None:
        self.name = self.shortlabel = name
        self.task_owner = self

    def __str__(self) -> str:
        return self.name


def samples(registry: CollectorRegistry) -> dict[tuple, float]:
    """Every sample but times: of a histogram (a latency) its count, and no creation times."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples
            if not s.name.endswith("_created") and (family.type != "histogram" or s.name.endswith("_count"))}


def traffic(monitor: PrometheusMonitor, topics: list[str], first_offset: int) -> None:
    stream, states = Named("Stream: orders.join"), Named("order-state.orders")
    for offset in range(first_offset, first_offset + 5):
        for number, topic in enumerate(topics):
            tp = TP(topic, number % 3)
            monitor.on_message_in(tp, offset, SimpleNamespace(time_in=None))
            state = monitor.on_stream_event_in(tp, offset, stream, None)
            monitor.on_table_get(states, "o-1")
            monitor.on_table_set(states, "o-1", b"{}")
            if offset % 2:
                monitor.on_table_del(states, "o-1")
            monitor.on_send_initiated(None, f"{topic}.out", None, 3, 10)
            monitor.on_stream_event_out(tp, offset, stream, None, state)
            monitor.count("rebalances")
        monitor.on_tp_commit({TP(t, n % 3): offset for n, t in enumerate(topics)})
        monitor.track_tp_end_offset(TP(topics[0], 0), offset + 10)


def two_monitors() -> tuple[tuple[PrometheusMonitor, CollectorRegistry], tuple[FaustMonitor, CollectorRegistry]]:
    faust_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    return ((PrometheusMonitor(metrics=FaustMetrics.create(faust_registry, "orderops_faust")), faust_registry),
            (FaustMonitor(metrics=FaustMetrics.create(ours_registry, "orderops_faust")), ours_registry))


def test_exports_what_fausts_monitor_exports():
    (faust, faust_registry), (ours, ours_registry) = two_monitors()
    for monitor in (faust, ours):
        traffic(monitor, ["payments", "orders", "warehouse"], 0)
    assert samples(ours_registry) == samples(faust_registry)
    assert samples(ours_registry)[("orderops_faust_table_operations_total",
                                   (("operation", "keys_updated"), ("table", "table.order-state.orders")))] == 15


def test_series_removed_at_a_rebalance_come_back_with_the_next_message():
    (faust, faust_registry), (ours, ours_registry) = two_monitors()
    for monitor in (faust, ours):
        traffic(monitor, ["payments", "orders"], 0)
        app = SimpleNamespace(rebalancing_count=1)
        monitor.on_rebalance_end(app, monitor.on_rebalance_start(app))
    assert samples(ours_registry) == samples(faust_registry)
    assert not any(name == "orderops_faust_topic_messages_sent_total" for name, _ in samples(ours_registry))
    for monitor in (faust, ours):
        traffic(monitor, ["payments", "warehouse"], 5)
    assert samples(ours_registry) == samples(faust_registry)
    assert samples(ours_registry)[("orderops_faust_topic_messages_sent_total", (("topic", "topic.payments.out"),))] == 5
