"""Faust's Prometheus monitor (``orderops_faust_*``) with each labelled series looked up once.

Faust's ``PrometheusMonitor`` asks ``metric.labels(...)`` for the series at every call of its
hooks: for every message read, every event a stream hands on, every table read and write and every
record sent, several per message. Each ask takes prometheus_client about 1.4 µs (it checks and
converts the label values and takes a lock), together 4–5% of a processor's CPU. This
monitor keeps the series it was given, per metric and label values, and exports the same samples.

Faust removes the per-topic and per-partition series at every rebalance (a partition this worker
no longer reads should not keep its gauges); the kept series go with them, or a series removed
from its metric would go on being counted where no scrape sees it.
"""

from __future__ import annotations

from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor


class FaustMonitor(PrometheusMonitor):
    """``PrometheusMonitor``'s hooks, the same metrics and samples, each series asked for once."""

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        super().__init__(metrics=metrics, **kwargs)
        self._series: dict[tuple[int, tuple], Any] = {}
        self._stream_series: dict[Any, Any] = {}

    def series(self, metric: Any, *values: Any) -> Any:
        """``metric.labels(*values)``, asked of prometheus_client the first time only."""
        key = (id(metric), values)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = metric.labels(*values)
        return found

    def _clear_partition_related_metrics(self) -> None:
        super()._clear_partition_related_metrics()
        self._series.clear()

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        metrics = self._metrics
        metrics.messages_received.inc()
        metrics.active_messages.inc()
        self.series(metrics.messages_received_per_topics, tp.topic).inc()
        self.series(metrics.messages_received_per_topics_partition, tp.topic, tp.partition).set(offset)

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict | None:
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        metrics = self._metrics
        metrics.total_events.inc()
        metrics.total_active_events.inc()
        per_stream = self._stream_series.get(stream)
        if per_stream is None:
            # Not cleared at a rebalance (Faust keeps this series); a stream lives as long as its agent.
            per_stream = self._stream_series[stream] = metrics.total_events_per_stream.labels(
                stream=f"stream.{self._stream_label(stream)}.events")
        per_stream.inc()
        return state

    def on_table_get(self, table: Any, key: Any) -> None:
        Monitor.on_table_get(self, table, key)
        self._table_operation(table, self.KEYS_RETRIEVED)

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        Monitor.on_table_set(self, table, key, value)
        self._table_operation(table, self.KEYS_UPDATED)

    def on_table_del(self, table: Any, key: Any) -> None:
        Monitor.on_table_del(self, table, key)
        self._table_operation(table, self.KEYS_DELETED)

    def _table_operation(self, table: Any, operation: str) -> None:
        self.series(self._metrics.table_operations, f"table.{table.name}", operation).inc()

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        self.series(self._metrics.topic_messages_sent, f"topic.{topic}").inc()
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def count(self, metric_name: str, count: int = 1) -> None:
        Monitor.count(self, metric_name, count=count)
        self.series(self._metrics.count_metrics_by_name, metric_name).inc(count)

    def on_tp_commit(self, tp_offsets: Any) -> None:
        Monitor.on_tp_commit(self, tp_offsets)
        for tp, offset in tp_offsets.items():
            self.series(self._metrics.topic_partition_offset_commited, tp.topic, tp.partition).set(offset)

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        Monitor.track_tp_end_offset(self, tp, offset)
        self.series(self._metrics.topic_partition_end_offset, tp.topic, tp.partition).set(offset)
