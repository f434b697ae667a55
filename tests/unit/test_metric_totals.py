"""orderops.ops.processors.metric_totals: what `make run`'s figures and the bench's soak read from a
processor's /metrics, against a real Prometheus exposition server."""

from __future__ import annotations

from orderops_tools.testing import free_port
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from orderops.ops.processors import metric_totals


def test_named_families_are_summed_over_their_labels_and_a_silent_page_is_none():
    registry = CollectorRegistry()
    memory = Gauge("orderops_rocksdb_memory_bytes", "RocksDB memory", ["part"], registry=registry)
    memory.labels("memtables").set(3 << 20)
    memory.labels("block_cache").set(1 << 20)
    Counter("orderops_events_processed", "events", ["topic"], registry=registry).labels("a").inc(7)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        found = metric_totals(f"http://127.0.0.1:{port}", ["orderops_rocksdb_memory_bytes", "orderops_events_processed",
                                                           "orderops_not_there"])
        assert found == {"orderops_rocksdb_memory_bytes": 4 << 20, "orderops_events_processed": 7.0,
                         "orderops_not_there": 0.0}  # a counter's _created timestamp is not counted
    finally:
        server.shutdown()
    assert metric_totals(f"http://127.0.0.1:{free_port()}", ["orderops_events_processed"]) is None
