"""The benchmark's memory verdict (orderops_tools.bench): RocksDB's memtables and block cache fill up
to their configured bounds by design, so a processor's growth is also reported without them."""

from __future__ import annotations

from orderops_tools.bench import Results, _outside_rocksdb, _soak_section, targets


def soak(rss: list[float], rocksdb: list[float]) -> dict:
    times = [0.0, 300.0, 600.0]
    return {"rate": 50, "seconds": 600.0, "orders": 2_685, "lag": 0,
            "samples": [(t, {"timeline": mb, "broker": 900.0}) for t, mb in zip(times, rss, strict=True)],
            "rocksdb": [(t, {"timeline": mb}) for t, mb in zip(times, rocksdb, strict=True)]}


def test_growth_that_is_rocksdb_filling_its_cache_is_told_apart_from_the_rest():
    filling = soak(rss=[150, 200, 240], rocksdb=[10, 40, 78])  # +40 MB of RSS, +38 of it RocksDB's
    assert _outside_rocksdb(filling) == {"timeline": 2.0}
    leaking = soak(rss=[150, 200, 240], rocksdb=[10, 64, 64])  # RocksDB full at its bound: the 40 MB are elsewhere
    assert _outside_rocksdb(leaking) == {"timeline": 40.0}
    flushed = soak(rss=[150, 200, 170], rocksdb=[10, 50, 20])  # a memtable flushed: RSS fell with it
    assert _outside_rocksdb(flushed) == {"timeline": 0.0}


def test_the_report_shows_both_and_the_verdict_names_the_growth_outside_rocksdb():
    results = Results(soak=soak(rss=[150, 200, 240], rocksdb=[10, 64, 64]))
    section = "\n".join(_soak_section(results))
    assert "| timeline | 150 | 200 | 240 | +40 MB (+20.0%) | 64 → 64 MB | +40 MB |" in section
    assert "| broker | 900 | 900 | 900 | +0 MB (+0.0%) | | |" in section
    verdict = next(line for line in targets(results) if line.startswith("- Memory flat"))
    assert "outside RocksDB's bounded memtables and cache, timeline's, +40 MB" in verdict


def test_the_table_of_processors_alone_says_how_many_events_each_parked():
    from pathlib import Path

    from orderops_tools.bench import report

    machine = dict.fromkeys(("date", "cores", "cpu", "memory", "python", "kafka", "faust-streaming", "aiokafka",
                             "confluent-kafka"), "x")
    alone = {"events": 22_854, "measured": 21_000, "seconds": 20.0,
             "rate": 1_143, "cpu_per_1000": 0.77, "peak_rss_mb": 178, "ratio": 0.08,
             "state_mb_per_100k_orders": 90, "rss_mb_per_100k_orders": 400}
    results = Results(machine=machine, baselines={"passthrough": 13_000}, events=22_000, orders=2_678,
                      processors={"fulfillment": {**alone, "parked": 12_345}, "notifier": alone})
    text = report(results, Path("plot.png"))
    assert "| fulfillment | 22,854 | 21,000 | 1,143 | 8% | 0.77 | 178 | 90 | 400 | 12,345 |" in text
    assert "| notifier | 22,854 | 21,000 | 1,143 | 8% | 0.77 | 178 | 90 | 400 | — |" in text  # not counted


def test_what_the_machine_allows_the_pipeline_is_worked_out_from_the_runs_own_figures():
    from orderops_tools.bench import PIPELINE, ceiling

    def alone(messages: int, cpu_per_1000: float) -> dict:
        return {"events": messages, "cpu_per_1000": cpu_per_1000}

    processors = {name: alone(1_000, 0.5) for name in PIPELINE} | {"timeline": alone(4_000, 1.0)}
    results = Results(machine={"cores": "2"}, baselines={"passthrough": 20_000}, events=1_000, processors=processors)
    text = "\n".join(ceiling(results))
    assert "| timeline | 4.00 | 4.00 |" in text and "| notifier | 1.00 | 0.50 |" in text
    assert "| all five | 8.00 | 6.00 |" in text
    assert "at most **333 upstream events/s**" in text  # 2 cores × 1,000 ms / 6 ms per event
    assert "one per core: at most **5,000/s**; at 25% of it (the target for each processor), 1,250/s." in text
    assert "7,000 upstream events/s would take every processor at **140% of the passthrough**" in text
    del processors["notifier"]  # not every processor measured alone: no bound to give
    assert ceiling(results) == []


def test_a_shops_peak_is_sized_from_the_runs_cpu_per_upstream_event():
    from orderops_tools.bench import sizing

    results = Results(machine={"cores": "2"}, pipeline=[
        {"offered": 200, "achieved": 200, "cpu_ms": {"broker": 1.2}},
        {"offered": 600, "achieved": 330, "cpu_ms": {"broker": 0.8}}])  # did not keep up: not the broker's figure
    text = "\n".join(sizing(results, {"order-state": 0.12, "timeline": 0.9}))
    # 7,000/s × 0.9 ms = 6.3 cores, at most 60% busy: 10.5 → 11 workers; 0.12 ms: 1.4 → 2 workers
    assert "| timeline | 0.90 | 10.5 | 11 |" in text and "| order-state | 0.12 | 1.4 | 2 |" in text
    assert "| broker (in the pipeline at 200/s, replication not counted) | 1.20 | 14.0 | |" in text
    assert "**14 machines of 2 cores**" in text  # 11 + 2 + 14.0 = 27 cores
    assert "at least **16 partitions**" in text and "timeline with 11" in text
    unmeasured = "\n".join(sizing(Results(machine={"cores": "2"}), {"timeline": 0.9}))
    assert "**6 machines of 2 cores** like this one for the processors (the broker's share was not measured" in unmeasured


def test_each_state_machine_is_set_against_its_own_floor():
    from pathlib import Path

    from orderops_tools.bench import report

    machine = dict.fromkeys(("date", "cores", "cpu", "memory", "python", "kafka", "faust-streaming", "aiokafka",
                             "confluent-kafka"), "x")
    alone = {"events": 50_000, "measured": 48_000, "seconds": 10.0, "rate": 4_800, "cpu_per_1000": 0.24,
             "peak_rss_mb": 300, "ratio": 0.2, "state_mb_per_100k_orders": 90, "rss_mb_per_100k_orders": 400}
    results = Results(machine=machine, baselines={"passthrough": 24_000}, events=50_000, orders=4_000,
                      processors={"order-state": alone, "returns": {**alone, "cpu_per_1000": 0.12}},
                      floors={"order-state": 200.0, "returns": 100.0})
    text = report(results, Path("plot.png"))
    assert "| order-state | 200 | 240 | 1.20× |" in text
    assert "- order-state: live CPU a message ≤ 1.5× its domain floor: **met** (1.20×)." in text
    results.processors["returns"]["cpu_per_1000"] = 0.16
    assert "- returns: live CPU a message ≤ 1.5× its domain floor: **not met** (1.60×)." in report(results, Path("p.png"))


def test_the_timeline_floor_does_the_timelines_work_on_every_order():
    from orderops_tools.bench import timeline_work, workload

    from orderops.codec.avro import Codec
    from orderops.model import catalog
    from orderops.replay.rebuild import Message

    codec, sends = Codec(), workload(600, seed=3)[0]
    began = int(codec.decode(sends[0].value, sends[0].topic.value_schema).record["occurred_at"].timestamp() * 1000)
    inputs = {t.name for t in catalog.inputs_of(catalog.TIMELINE)}
    messages = [Message(send.topic.name, 0, n, began + 1_000 * n, send.key, send.value)
                for n, send in enumerate(sends) if send.topic.name in inputs]
    orders = {m.key for m in messages}
    assert len(messages) > 300 and timeline_work(messages) == len(orders)


def test_the_pipeline_is_set_against_its_targets_on_this_machine():
    from pathlib import Path

    from orderops_tools.bench import report

    machine = dict.fromkeys(("date", "cores", "cpu", "memory", "python", "kafka", "faust-streaming", "aiokafka",
                             "confluent-kafka"), "x")

    def row(offered, achieved, p99, cpu_ms):
        return {"offered": offered, "offered_actual": offered, "achieved": achieved, "processed": achieved,
                "lag_at_end": 0, "completed": 1.0, "p50_ms": p99 / 2, "p99_ms": p99, "max_ms": p99,
                "cpu_ms": cpu_ms, "cpu_share": 0.5}

    results = Results(machine=machine, baselines={"passthrough": 20_000}, events=1_000, orders=100, pipeline=[
        row(50, 50, 120, {"order-state": 0.4, "timeline": 1.0, "broker": 9.0}),
        row(200, 200, 300, {"order-state": 0.3, "timeline": 0.8}),
        row(600, 640, 900, {"order-state": 0.3, "timeline": 0.8})])
    text = report(results, Path("plot.png"))
    assert "- Pipeline sustains 600 upstream events/s: **met** (best achieved 640/s)." in text
    assert "- p99 end-to-end latency under 250 ms at 200 events/s: **not met** (300 ms)." in text
    assert "- The processors' CPU per upstream event at 50 events/s ≤ 4 ms: **met** (1.4 ms)." in text


def test_the_timeline_floor_applies_each_record_of_a_digest_as_the_timeline_does():
    from datetime import UTC, datetime

    from orderops_tools.bench import _timeline_events

    from orderops.codec.avro import Codec
    from orderops.model import catalog
    from orderops.model.envelope import Envelope
    from orderops.replay.rebuild import Message
    from orderops.runtime.machine import digest

    codec, at = Codec(), datetime(2026, 12, 1, tzinfo=UTC)
    status = Envelope("e-1:fulfillment:statussnapshot:0", "o-1", at, catalog.FULFILLMENT,
                      "orderops.fulfillment.FulfillmentStatusChanged",
                      {"status": "unfulfilled", "backordered": False, "lines": []})
    transition = Envelope("e-1:fulfillment:transition:0", "o-1", at, catalog.FULFILLMENT, "orderops.common.StateTransition",
                          {"machine": "line", "entity_id": "l1", "from_state": "new", "to_state": "unfulfilled",
                           "cause_event_id": "e-1", "cause_type": "orderops.storefront.OrderPlaced", "reason": ""})
    parts = [(catalog.FULFILLMENT_STATUS, status), (catalog.FULFILLMENT_STATE_CHANGES, transition)]
    cause = Envelope("e-1", "o-1", at, "storefront", "orderops.storefront.OrderPlaced", {})
    value = codec.encode(catalog.TIMELINE_DIGESTS.value_schema, digest(cause, catalog.FULFILLMENT, [
        {"topic": t.name, "value": codec.encode(t.value_schema, e.to_record())} for t, e in parts]))
    inputs = frozenset(t.name for t in catalog.inputs_of(catalog.TIMELINE))
    events = list(_timeline_events(codec, Message(catalog.TIMELINE_DIGESTS.name, 0, 0, 0, b"o-1", value), inputs))
    # In the catalog's rank: the state changes before the status, as the timeline applies them.
    assert [(t, e.event_id) for t, e in events] == [(catalog.FULFILLMENT_STATE_CHANGES.name, transition.event_id),
                                                    (catalog.FULFILLMENT_STATUS.name, status.event_id)]
