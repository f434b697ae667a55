"""``orderops bench`` (``make bench``): how fast orderops is on this machine, against baselines
measured in the same run, on a broker of its own. Writes docs/benchmarks.md and a latency plot.

1. Baselines: the broker's own limit (a plain confluent-kafka producer, then consumer, of the same
   messages) and a passthrough (consume -> decode Avro -> encode -> produce, no domain logic).
2. Each processor alone, from empty state, draining a preloaded seeded mix of upstream events (in
   pipeline order, so each finds its inputs written): events/s, CPU seconds per 1,000 events,
   peak RSS, ratio to the passthrough; and its state size per 100,000 orders.
3. The whole pipeline at fixed offered rates: achieved throughput, lag at the end, end-to-end
   latency (upstream event written -> its timeline entry written) p50, p99, max. Before the rates, a
   soak: a steady load the pipeline sustains, every component's resident memory sampled.
4. Replay: the offline rebuild's rate per state-machine processor (orderops replay rebuild), from a
   million messages: the processor's inputs in this run and copies of them with renamed orders.

Sizes come from the environment (BENCH_EVENTS, BENCH_RATES, BENCH_RATE_SECONDS, BENCH_WARMUP_SECONDS,
BENCH_SOAK_SECONDS, BENCH_SOAK_RATE, BENCH_REPLAY_EVENTS); the figures are
measured, never asserted, and every rate is also given as a ratio to a baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orderops.codec.avro import Codec
from orderops.model import catalog
from orderops.ops.paths import source_root
from orderops.ops.settings import PRODUCER_DEFAULTS

if TYPE_CHECKING:
    from orderops.replay.rebuild import Message

ROOT = source_root() or Path.cwd()
START = datetime(2026, 1, 5, 8, tzinfo=UTC)
PIPELINE = ("fulfillment", "order-state", "returns", "notifier", "timeline")  # each finds its inputs written


@dataclass
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)  # name -> messages/s
    processors: dict[str, dict[str, float]] = field(default_factory=dict)
    pipeline: list[dict[str, float]] = field(default_factory=list)
    replay: dict[str, float] = field(default_factory=dict)  # name -> messages/s, orders shared by replay_workers
    replay_one: dict[str, float] = field(default_factory=dict)  # name -> messages/s in one process
    replay_workers: int = 1
    replayed: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> messages, orders, copies
    floors: dict[str, float] = field(default_factory=dict)  # name -> CPU µs a message of its own work (floors)
    events: int = 0
    orders: int = 0
    warmup_seconds: float = 0
    # rate, seconds, orders, lag, samples: [(seconds in, {component: RSS MB})], rocksdb: the same of RocksDB MB
    soak: dict = field(default_factory=dict)


def log(text: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {text}", file=sys.stderr, flush=True)


# -- the workload ---------------------------------------------------------------------------------

def workload(events: int, seed: int) -> tuple[list, int]:
    """A seeded mix of upstream events of whole orders (the simulator's scenarios), at least ``events``."""
    from orderops_tools.simulator import Config, plan

    orders = max(1, events // 20)
    while True:
        sends, _ = plan(Config(seed=seed, orders=orders, compression=1e9, rate=1e9, start=START,
                               order_interval=60), START)
        if len(sends) >= events:
            return sends, orders
        orders = int(orders * events / max(len(sends), 1)) + 1


def producer():
    from confluent_kafka import Producer

    return Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": BOOTSTRAP[0], "linger.ms": 20,
                     "batch.num.messages": 10000, "queue.buffering.max.messages": 1000000})


BOOTSTRAP = [""]


# The preloaded workload is written in seconds, so an order's events on different topics would reach
# the broker milliseconds apart, in batches per partition whose broker timestamps need not follow the
# order they were sent in: its warehouse events could come before its OrderPlaced, and park (44-88%
# of fulfillment's, a different number each run). Waiting for the broker every this many sends keeps
# sends further apart in order, as they are live, where an order's events come minutes apart.
IN_ORDER_EVERY = 500


def produce(sends, topic_of: Callable = lambda send: send.topic.name, pace: float | None = None,
            on_sent: Callable | None = None, in_order_every: int | None = None) -> float:
    """Write every message; ``pace``: messages per second (None: as fast as possible);
    ``in_order_every``: wait until all sent are written after each this many. Seconds taken."""
    kafka = producer()
    began = time.monotonic()
    for n, send in enumerate(sends):
        if in_order_every and n and n % in_order_every == 0:
            kafka.flush(120)
        if pace:
            wait = began + n / pace - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        while True:
            try:
                kafka.produce(topic_of(send), key=send.key, value=send.value)
                break
            except BufferError:
                kafka.poll(0.05)
        if on_sent is not None:
            on_sent(send, time.time())
        kafka.poll(0)
    kafka.flush(120)
    return time.monotonic() - began


def consume(topics: list[str], expected: int, handle: Callable | None = None, timeout: float = 600) -> float:
    """Read ``expected`` messages of these topics from the beginning. Seconds taken."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP[0], "group.id": f"bench-{time.time_ns()}",
                         "enable.auto.commit": False, "fetch.max.bytes": 52428800})
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                     for p in range(catalog.order_partitions())])
    began, seen = time.monotonic(), 0
    try:
        while seen < expected and time.monotonic() - began < timeout:
            for message in consumer.consume(1000, 1.0):
                if message.error():
                    continue
                seen += 1
                if handle is not None:
                    handle(message)
        return time.monotonic() - began
    finally:
        consumer.close()


def upstream_topics() -> list[str]:
    return [t.name for t in catalog.DATA_TOPICS if not set(t.writers) & set(catalog.PROCESSORS)
            and t.order_scoped and t.value_schema]


# -- baselines ------------------------------------------------------------------------------------

def baselines(sends, results: Results) -> None:
    from orderops.ops.admin import create_topics
    from orderops.ops.settings import KafkaSettings

    create_topics((catalog.BENCH_PASSTHROUGH,), KafkaSettings(BOOTSTRAP[0], 1))
    took = produce(sends, topic_of=lambda send: catalog.BENCH_PASSTHROUGH.name)
    results.baselines["broker: produce"] = len(sends) / took
    took = consume([catalog.BENCH_PASSTHROUGH.name], len(sends))
    results.baselines["broker: consume"] = len(sends) / took
    log(f"broker limit: produce {results.baselines['broker: produce']:,.0f}/s, "
        f"consume {results.baselines['broker: consume']:,.0f}/s")

    codec, out = Codec(), producer()

    def passthrough(message) -> None:
        topic = catalog.topic(message.topic())
        record = codec.decode(message.value(), topic.value_schema).record
        value = codec.encode(topic.value_schema, record)
        while True:
            try:
                out.produce(catalog.BENCH_PASSTHROUGH.name, key=message.key(), value=value)
                break
            except BufferError:
                out.poll(0.05)
        out.poll(0)

    produce(sends, in_order_every=IN_ORDER_EVERY)  # the upstream topics themselves, read by the passthrough and the processors
    took = consume(upstream_topics(), len(sends), passthrough)
    out.flush(120)
    results.baselines["passthrough"] = len(sends) / took
    log(f"passthrough (consume, decode, encode, produce): {results.baselines['passthrough']:,.0f}/s")


# -- processors -----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of the process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric_total(web_port: int, family: str) -> float | None:
    """A metric family's samples on a processor's /metrics, summed (Prometheus names a counter's
    family without its ``_total``); None if it does not answer."""
    from orderops.ops.processors import metric_totals

    found = metric_totals(f"http://127.0.0.1:{web_port}", [family], timeout=5)
    return None if found is None else found[family]


def rocksdb_mb(web_port: int) -> float | None:
    """A processor's RocksDB memory (memtables and block cache, ``orderops_rocksdb_memory_bytes``), MB."""
    found = metric_total(web_port, "orderops_rocksdb_memory_bytes")
    return None if found is None else found / (1 << 20)


def events_parked(web_port: int) -> float:
    """Events a processor parked (``orderops_events_parked_total``): each one is applied twice, so the
    work a drained input costs depends on it (NaN if the processor does not answer)."""
    found = metric_total(web_port, "orderops_events_parked")
    return float("nan") if found is None else found


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def lag(group: str, topics: Iterable[catalog.Topic]) -> tuple[int, int]:
    """(messages not yet committed by the group, end offsets in total) over these topics."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP[0], "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t.name, p) for t in topics for p in range(t.partitions)]
        committed = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in consumer.committed(tps, timeout=30)}
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in tps}
        return sum(ends[k] - committed[k] for k in ends), sum(ends.values())
    finally:
        consumer.close()


def start_processor(name: str, instance: str, workdir: Path, extra: dict[str, str]):
    from orderops_tools.testing import ServiceProcess, free_port

    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"KAFKA_BOOTSTRAP": BOOTSTRAP[0], "ORDEROPS_INSTANCE": instance, "WEB_PORT": str(port),
           "ORDEROPS_DATA_DIR": str(workdir / "state"), "ORDEROPS_RUN_DIR": str(workdir), "LOG_LEVEL": "warning",
           **extra}
    return ServiceProcess(["-m", name.replace("-", "_")], env, workdir / f"{name}.log", port).start()


def processors_alone(results: Results, workdir: Path, smtp_port: int, names: tuple[str, ...] = PIPELINE,
                     profiles: Path | None = None) -> None:
    passthrough = results.baselines["passthrough"]
    for name in names:
        process = start_processor(name, "alone", workdir / name, {"ORDEROPS_SMTP_PORT": str(smtp_port),
                                                                  "ORDEROPS_NOTIFIER_CHANNELS": "email"})
        asyncio.run(process.wait_ready(timeout=300))
        inputs = catalog.order_inputs(name)
        group = f"{name}-alone"
        # What it has not processed when the measurement begins: a processor fast enough is already
        # under way when it says it is ready, and what it did before is in neither the time nor the CPU.
        at_start, total = lag(group, inputs)
        pid = process.process.pid
        rss_ready, state_ready = rss_mb(pid, "VmRSS"), tree_bytes(workdir / name / "state")
        sampler = profile(pid, profiles / f"{name}.folded") if profiles else None
        cpu0, began = cpu_seconds(pid), time.monotonic()
        while True:
            behind, total = lag(group, inputs)
            if behind == 0 or time.monotonic() - began > 1800:
                break
            time.sleep(0.5)
        took = time.monotonic() - began
        cpu = cpu_seconds(pid) - cpu0
        if sampler:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its samples when interrupted
            sampler.wait(60)
            log(f"{name}: profile in {profiles / f'{name}.folded'} (folded stacks; self time by frame: "
                f"{', '.join(f'{frame} {share:.0%}' for frame, share in hottest(profiles / f'{name}.folded'))})")
        state_bytes = tree_bytes(workdir / name / "state") - state_ready  # less RocksDB's files of an empty store
        rss = rss_mb(pid)
        parked = events_parked(process.web_port)
        by_topic = {t.name: lag(group, [t])[1] for t in inputs}
        process.stop()
        done = at_start - behind  # of the measured window (capped at 30 min, it may not have drained them all)
        rate = done / took
        results.processors[name] = {
            "events": total, "measured": done, "seconds": took, "rate": rate, "cpu_per_1000": 1000 * cpu / max(done, 1),
            "peak_rss_mb": rss, "ratio": rate / passthrough, "parked": parked, "by_topic": by_topic,
            "state_mb_per_100k_orders": max(state_bytes, 0) / 1e6 * 100000 / max(results.orders, 1),
            "rss_mb_per_100k_orders": max(rss - rss_ready, 0) * 100000 / max(results.orders, 1)}
        log(f"{name} alone: {done:,} of {total:,} input messages in {took:.1f} s = {rate:,.0f}/s "
            f"({rate / passthrough:.0%} of the passthrough), {1000 * cpu / max(done, 1):.2f} CPU s per 1,000, "
            f"peak RSS {rss:.0f} MB, {parked:,.0f} parked"
            + (" (did not finish: capped at 30 min)" if behind else ""))


def profile(pid: int, out: Path) -> subprocess.Popen:
    """py-spy sampling the processor while it drains (the profiling steps of docs/performance.md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-r", "50", "-f", "raw", "-o", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hottest(folded: Path, top: int = 6) -> list[tuple[str, float]]:
    """The frames that most samples were in (self time), with their share of all samples."""
    if not folded.is_file():
        return []
    own: Counter = Counter()
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[stack.rsplit(";", 1)[-1].strip()] += int(count)
    total = sum(own.values()) or 1
    return [(frame, n / total) for frame, n in own.most_common(top)]


# -- replay ---------------------------------------------------------------------------------------

def replays(results: Results, at_least: int) -> None:
    """Each state machine rebuilt from ``at_least`` messages (its inputs in this run, copied with
    new orders: ``renamed_copies``), as ``orderops replay rebuild --dry-run`` does it (its orders
    shared by one process per CPU, the records made counted, not compared: the copies' orders are
    in no topic), and in one process: the rate per core."""
    from orderops.replay.rebuild import ComparedOutputs, replay_in_shares, replay_workers
    from orderops.replay.topicreader import read_messages
    from orderops_tools.replay import machine_processor

    results.replay_workers = replay_workers()
    for name in ("order-state", "fulfillment", "returns"):
        processor = machine_processor(name, BOOTSTRAP[0])
        read = read_messages(BOOTSTRAP[0], [*processor.inputs, processor.timers], progress=False)
        if not read:  # not run alone (--processors), so nothing wrote its inputs
            log(f"replay {name}: no input messages on the broker, not measured")
            continue
        messages = renamed_copies(read, at_least)
        for workers, rates in ((results.replay_workers, results.replay), (1, results.replay_one)):
            began = time.monotonic()
            counted = replay_in_shares(processor, messages, lambda rebuilt: (len(rebuilt.states), len(rebuilt.dead_letters)),
                                       workers, outputs=lambda share: ComparedOutputs(None))
            took = time.monotonic() - began
            orders, dead = (sum(c) for c in zip(*counted, strict=True))
            rates[name] = len(messages) / took
            log(f"replay {name}, {workers} process(es): {len(messages):,} messages ({len(read):,} read, "
                f"{len(messages) // len(read)} copies) in {took:.1f} s = {len(messages) / took:,.0f}/s ({orders:,} orders"
                f"{f', {dead:,} would be dead-lettered' if dead else ''})")
        results.replayed[name] = (len(messages), orders, len(messages) // len(read))


def floors(results: Results) -> None:
    """Each processor on the batch path measured alone, its domain floor: the CPU a message of its
    own work — decode and checks, apply or expire, publish, encode every record, serialize the new
    state, the next deadline — done in this process over the same input messages, in write order,
    state in a dict (the timeline: ``timeline_work``). What the live processor spends beyond it is
    the runtime's (Kafka, the store, the loop)."""
    from orderops.replay.rebuild import ComparedOutputs, replay
    from orderops.replay.topicreader import read_messages
    from orderops_tools.replay import machine_processor

    for name in ("order-state", "fulfillment", "returns", "timeline"):
        if name not in results.processors:
            continue
        if name == "timeline":
            read = read_messages(BOOTSTRAP[0], [*catalog.inputs_of(name), catalog.TIMER_TOPICS[name]], progress=False)
            began = time.process_time()
            timeline_work(read)
        else:
            processor = machine_processor(name, BOOTSTRAP[0])
            read = read_messages(BOOTSTRAP[0], [*processor.inputs, processor.timers], progress=False)
            began = time.process_time()
            replay(processor, read, outputs=lambda share: ComparedOutputs(None))
        floor = (time.process_time() - began) * 1e6 / max(len(read), 1)
        live = results.processors[name]["cpu_per_1000"] * 1000
        results.floors[name] = floor
        log(f"{name}: domain floor {floor:,.0f} µs a message ({len(read):,} messages); live {live:,.0f} µs = "
            f"{live / floor:.2f}× the floor")


def timeline_work(messages: list, batch_records: int = 1000) -> int:
    """The timeline's own work on ``messages``, in write order, views in a dict: decode and checks,
    the view's apply, every timeline and escalation record encoded, the view and entries as JSON, the
    next deadline; in parts of ``batch_records`` (``ORDEROPS_BATCH_MAX_RECORDS``, as live), each
    order's view copied at its first record of a part, changed in place, and written and its view
    record encoded once per part (as the batch path does); the collector paused, as in the state
    machines' floor. The orders it applied."""
    import gc
    from pathlib import Path

    import timeline
    from orderops.codec.avro import Codec, DecodeError
    from orderops.model.envelope import to_json_bytes
    from orderops.replay.rebuild import write_order
    from timeline import domain
    from timeline.records import view_record

    rules = domain.Rules.load(Path(os.environ.get("ORDEROPS_TIMELINE_RULES", Path(timeline.__file__).parent / "rules.yaml")))
    codec, inputs, timers = Codec(), frozenset(t.name for t in catalog.inputs_of("timeline")), catalog.TIMER_TOPICS["timeline"]
    views: dict[str, dict] = {}
    paused = gc.isenabled()
    gc.disable()
    ordered = write_order(messages)
    try:
        for start in range(0, len(ordered), batch_records):
            working: dict[str, dict] = {}
            published: dict[str, tuple] = {}
            for message in ordered[start:start + batch_records]:
                try:
                    envelopes = list(_timeline_events(codec, message, inputs))
                except DecodeError:
                    continue
                for topic_name, envelope in envelopes:
                    _timeline_apply(topic_name, envelope, working, views, published, rules, timers, codec)
            for order_id, view in working.items():
                to_json_bytes(view)
                if order_id in published:
                    codec.encode(catalog.SUPPORT_ORDER_VIEWS.value_schema, view_record(view, *published[order_id]))
                views[order_id] = view
    finally:
        if paused:
            gc.enable()
    return len(views)


def _timeline_events(codec, message, inputs):
    """A message's events as the timeline applies them: a digest's records, each as read from its
    topic, in the catalog's rank (timeline.worker); any other message's own event."""
    from orderops.codec.privacy import read_event
    from orderops.runtime.machine import in_write_rank

    envelope, _ = read_event(codec, message.key, message.value, catalog.topic(message.topic), message.headers, inputs)
    if message.topic != catalog.TIMELINE_DIGESTS.name:
        yield message.topic, envelope
        return
    for _, part in in_write_rank(envelope.payload["records"]):
        yield part["topic"], read_event(codec, message.key, part["value"], catalog.topic(part["topic"]), (), inputs)[0]


def _timeline_apply(topic_name: str, envelope, working: dict, views: dict, published: dict, rules, timers,
                    codec) -> None:
    """One event through the timeline's own work: its order's working view (copied at its first
    event of the part), what it publishes encoded, its entries as JSON, the next deadline."""
    from orderops.model.envelope import to_json_bytes
    from timeline import domain
    from timeline.records import changes_view, publishable

    order_id = envelope.order_id
    view = working.get(order_id)
    if view is None:
        before = views.get(order_id)
        view = None if before is None else domain.copied(before)
    now = envelope.payload["fired_at"] if topic_name == timers.name else envelope.occurred_at
    view, out = domain.apply(view, envelope, topic_name, now, rules, in_place=True)
    if out.duplicate:
        return
    for topic, record in publishable(view, out, envelope):
        codec.encode(topic.value_schema, record)
    if changes_view(out) or order_id in published:
        published[order_id] = (envelope, now)
    for _, entry in domain.entry_writes(order_id, out.entries):
        if entry is not None:
            to_json_bytes(entry)
    domain.next_deadline(view, now, rules)
    working[order_id] = view


def renamed_copies(messages: list[Message], at_least: int) -> list[Message]:
    """``messages`` and copies of them, at least ``at_least`` in all: in each copy every order is a new
    order, its id's prefix (the simulator's ``sim-<seed>-``) replaced wherever it is written (keys,
    event ids, derived ids, headers) by one of the same length, so the Avro bytes stay valid and each
    copy replays as the original did (tools/tests/test_bench_copies.py). Rebuilding a million
    messages this way measures the rebuild at that size (its states and records for as many orders
    held at once) without a million messages on the broker."""
    prefixes = {m.key[:m.key.rindex(b"-") + 1] for m in messages if m.key}
    if len(prefixes) != 1:
        raise ValueError(f"the inputs' order ids have several prefixes ({sorted(prefixes)[:3]}...); copies need one")
    (prefix,) = prefixes
    copies = max(1, -(-at_least // len(messages)))
    if copies > 10 ** (len(prefix) - 2):
        raise ValueError(f"{copies:,} copies do not fit a prefix as long as {prefix!r}")
    out = list(messages)
    for k in range(1, copies):
        new = b"c" + str(k).zfill(len(prefix) - 2).encode() + b"-"
        out.extend(replace(m, key=m.key and m.key.replace(prefix, new), value=m.value and m.value.replace(prefix, new),
                           headers=tuple((h, v and v.replace(prefix, new)) for h, v in m.headers)) for m in messages)
    return out


# -- the pipeline at fixed rates ------------------------------------------------------------------

def warm_up(seconds: float, rate: int = 50) -> None:
    """Load the fresh broker and processors, unmeasured, until the JVM has compiled its hot paths: in
    one run the broker's JIT compilers were most of its CPU in a first 60 s window, a cost a
    running deployment does not pay."""
    if seconds <= 0:
        return
    sends, _ = workload(int(rate * seconds), seed=999)
    produce(sends[:int(rate * seconds)], pace=rate)
    began = time.monotonic()
    while time.monotonic() - began < 300 and sum(lag(f"{name}-pipeline", catalog.order_inputs(name))[0] for name in PIPELINE):
        time.sleep(2)
    log(f"pipeline warmed up: {int(rate * seconds):,} events at {rate}/s, drained in {time.monotonic() - began:.0f} s")


SOAK_SAMPLE_SECONDS = 10


def soak(results: Results, components: dict[str, int], rate: int, seconds: float,
         web_ports: dict[str, int] | None = None) -> None:
    """The pipeline under a steady load it sustains, each component's resident memory sampled: does
    memory level off, or grow with every order opened? (The issue's 3,000 events/s is far above what
    the pipeline takes here; there, a backlog's growth would be all it showed.) Each processor's
    RocksDB memory is sampled too (``web_ports``): its block cache and memtables fill up to their
    configured bounds, growth by design that the rest of its memory is told apart from."""
    sends, _ = workload(int(rate * seconds), seed=2000)
    sends = sends[:int(rate * seconds)]
    samples: list[tuple[float, dict[str, float]]] = []
    stores: list[tuple[float, dict[str, float]]] = []
    began = time.monotonic()

    def sample(send=None, at=None) -> None:
        now = time.monotonic() - began
        if not samples or now - samples[-1][0] >= SOAK_SAMPLE_SECONDS:
            samples.append((now, {name: rss_mb(pid, "VmRSS") for name, pid in components.items() if pid != os.getpid()}))
            stores.append((now, {name: mb for name, port in (web_ports or {}).items()
                                 if (mb := rocksdb_mb(port)) is not None}))

    sample()
    produce(sends, pace=rate, on_sent=sample)
    sample()
    behind = sum(lag(f"{name}-pipeline", catalog.order_inputs(name))[0] for name in PIPELINE)
    results.soak = {"rate": rate, "seconds": seconds, "orders": len({send.key for send in sends}), "lag": behind,
                    "samples": samples, "rocksdb": stores}
    first, last = samples[0][1], samples[-1][1]
    for name in PIPELINE:
        log(f"soak, {name}: seconds in, RSS MB, RocksDB MB: " + "; ".join(
            f"{at:.0f} {rss.get(name, 0):.0f} {usage.get(name, 0):.0f}"
            for (at, rss), (_, usage) in zip(samples, stores, strict=True)))
    log(f"soak at {rate}/s for {seconds:.0f} s: RSS MB from start to end: "
        + ", ".join(f"{name} {first[name]:.0f} -> {last[name]:.0f}" for name in last) + f"; lag at end {behind:,}")


def _rss_at(samples: list[tuple[float, dict[str, float]]], seconds: float) -> dict[str, float]:
    return min(samples, key=lambda s: abs(s[0] - seconds))[1]


def _second_half(soak: dict, series: str = "samples") -> dict[str, tuple[float, float, float]]:
    """Each component's RSS (``series``: or its RocksDB memory) at half time and at the end of the soak,
    and its growth between (a ratio)."""
    if not soak.get(series):
        return {}
    half, end = _rss_at(soak[series], soak["seconds"] / 2), soak[series][-1][1]
    return {name: (half[name], end[name], (end[name] - half[name]) / half[name] if half[name] else 0.0)
            for name in end if name in half}


def _outside_rocksdb(soak: dict) -> dict[str, float]:
    """Per processor, the growth in the second half of its memory outside RocksDB (RSS less the
    memtables and block cache), MB. Approximate by RocksDB's swings: a flushed memtable's memory
    mostly goes back to the system with it (RSS fell with RocksDB's usage in the soaks of session
    16), but not always at once."""
    rss, stores = _second_half(soak), _second_half(soak, "rocksdb")
    return {name: (rss[name][1] - stores[name][1]) - (rss[name][0] - stores[name][0]) for name in stores if name in rss}


def pipeline(results: Results, workdir: Path, smtp_port: int, rates: list[int], seconds: float,
             broker_pid: int | None = None, warmup_seconds: float = 30, soak_rate: int = 50,
             soak_seconds: float = 0) -> None:
    from confluent_kafka import Consumer, TopicPartition

    workers = [start_processor(name, "pipeline", workdir / name, {"ORDEROPS_SMTP_PORT": str(smtp_port),
                                                                  "ORDEROPS_NOTIFIER_CHANNELS": "email"})
               for name in PIPELINE]
    for w in workers:
        asyncio.run(w.wait_ready(timeout=300))
    # Where the machine's CPU goes while the pipeline works: each processor, the broker, the load.
    components = {name: w.process.pid for name, w in zip(PIPELINE, workers, strict=True)}
    components.update({"broker": broker_pid} if broker_pid else {})
    components["load (bench)"] = os.getpid()
    written: dict[str, float] = {}  # upstream event id -> wall time it was handed to the producer
    entries: dict[str, float] = {}  # cause event id -> broker timestamp of its timeline entry
    stop = threading.Event()
    codec = Codec()

    def follow() -> None:
        consumer = Consumer({"bootstrap.servers": BOOTSTRAP[0], "group.id": f"bench-follow-{time.time_ns()}",
                             "enable.auto.commit": False, "auto.offset.reset": "latest"})
        consumer.assign([TopicPartition(catalog.SUPPORT_TIMELINE.name, p, -1)
                         for p in range(catalog.order_partitions())])
        while not stop.is_set():
            for message in consumer.consume(500, 0.5):
                if not message.error():
                    record = codec.decode(message.value(), catalog.SUPPORT_TIMELINE.value_schema).record
                    entries[record["payload"][1]["cause_event_id"]] = message.timestamp()[1] / 1000
        consumer.close()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(3)
    try:
        warm_up(warmup_seconds)
        if soak_seconds > 0:  # before the rates above what the pipeline takes leave it a backlog
            soak(results, components, soak_rate, soak_seconds,
                 {name: w.web_port for name, w in zip(PIPELINE, workers, strict=True)})
        for n, rate in enumerate(rates):
            sends, _ = workload(int(rate * seconds), seed=1000 + n)
            sends = sends[:int(rate * seconds)]
            ids = {}

            def on_sent(send, at, ids=ids) -> None:
                ids[send.seq] = at

            event_ids = [_event_id(codec, send) for send in sends]
            cpu0 = {name: cpu_seconds(pid) for name, pid in components.items()}
            began, began_wall = time.monotonic(), time.time()
            produce(sends, pace=rate, on_sent=on_sent)
            offered = len(sends) / (time.monotonic() - began)
            ended_wall = time.time()
            for send, event_id in zip(sends, event_ids, strict=True):
                written[event_id] = ids[send.seq]
            window_end = time.monotonic()
            behind = sum(lag(f"{name}-pipeline", catalog.order_inputs(name))[0] for name in PIPELINE)
            done_in_window = [e for e in event_ids if e in entries and entries[e] - written[e] <= seconds]
            deadline = time.monotonic() + max(60.0, seconds * 2)
            while time.monotonic() < deadline and sum(e in entries for e in event_ids) < len(event_ids) * 0.999:
                time.sleep(1)
            latencies = sorted(entries[e] - written[e] for e in event_ids if e in entries)
            busy = time.monotonic() - began
            cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in components.items()}
            # Above what the pipeline takes, the window's own events queue behind earlier ones: how
            # many events of any window reached the timeline during this one says what it processed.
            processed = sum(began_wall <= at <= ended_wall for cause, at in list(entries.items())
                            if cause in written) / (ended_wall - began_wall)
            row = {"offered": rate, "offered_actual": offered, "achieved": len(done_in_window) / (window_end - began),
                   "processed": processed,
                   "lag_at_end": behind, "completed": len(latencies) / len(event_ids),
                   "p50_ms": 1000 * _quantile(latencies, 0.5), "p99_ms": 1000 * _quantile(latencies, 0.99),
                   "max_ms": 1000 * (latencies[-1] if latencies else float("nan")),
                   # CPU ms per upstream event, from the first send until the timeline had (nearly) all
                   "cpu_ms": {name: 1000 * c / len(sends) for name, c in cpu.items()},
                   "cpu_share": sum(cpu.values()) / busy / (os.cpu_count() or 1)}
            results.pipeline.append(row)
            log(f"pipeline at {rate:,}/s offered ({offered:,.0f} actual): achieved {row['achieved']:,.0f}/s (processed "
                f"{processed:,.0f}/s of any window), lag at end "
                f"{behind:,}, latency p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, max {row['max_ms']:.0f} ms, "
                f"{row['completed']:.1%} reached the timeline; CPU ms per upstream event: "
                + ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms"].items())
                + f" (machine {row['cpu_share']:.0%} busy)")
    finally:
        stop.set()
        for w in workers:
            w.stop()


def _event_id(codec: Codec, send) -> str:
    return codec.decode(send.value, send.topic.value_schema).record["event_id"]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the report -----------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    from importlib.metadata import version

    memory = next((int(line.split()[1]) / 1024 / 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    kafka = next((line.split(">")[1].split("<")[0] for line in (ROOT / "deploy/kafka/pom.xml").read_text().splitlines()
                  if "<kafka.version>" in line), "?")
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cores": str(os.cpu_count()),
            "cpu": model, "memory": f"{memory:.0f} GiB", "python": platform.python_version(), "kafka": kafka,
            "faust-streaming": version("faust-streaming"), "aiokafka": version("aiokafka"),
            "confluent-kafka": version("confluent-kafka")}


def _whole(value: float) -> str:
    """A figure in whole units, or — where none was measured (NaN)."""
    return "—" if math.isnan(value) else f"{value:,.0f}"


# The pipeline's targets on this 2-core machine with the broker on it; "shop": what a shop of 700
# orders/s offers (about ten events an order), which the ceiling sets against the passthrough.
TARGETS = {"pipeline": 600, "p99_ms": 250, "p99_at": 200, "idle_ms": 4, "idle_at": 50, "shop": 7000,
           "processor_ratio": 0.25, "replay": 20000, "floor_ratio": 1.5}


def report(results: Results, plot: Path) -> str:
    m, b = results.machine, results.baselines
    lines = [
        "# Benchmarks", "",
        "Written by `make bench` (tools/orderops_tools/bench.py); do not edit by hand. Every figure below",
        "was measured in one run on the machine described, against a broker of the benchmark's own; rates",
        "are also given as ratios to the baselines of the same run, so a noisy machine stays comparable.", "",
        f"**Run:** {m['date']} · {m['cores']} cores ({m['cpu']}) · {m['memory']} · Python {m['python']} · "
        f"Kafka {m['kafka']} (embedded, same machine) · faust-streaming {m['faust-streaming']} · aiokafka "
        f"{m['aiokafka']} · confluent-kafka {m['confluent-kafka']} · workload: {results.events:,} upstream events "
        f"of {results.orders:,} simulated orders (seeded)", "",
        "## Baselines", "", "| baseline | messages/s |", "|---|---|",
        *(f"| {k} | {v:,.0f} |" for k, v in b.items()), "",
        "## Each processor alone (from empty state, its whole input preloaded)", "",
        "| processor | input messages | measured | messages/s | ratio to passthrough | CPU s / 1,000 messages |"
        " peak RSS MB | state MB / 100k orders | RSS growth MB / 100k orders | events parked |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {n} | {p['events']:,.0f} | {p.get('measured', p['events']):,.0f} | {p['rate']:,.0f} | {p['ratio']:.0%} | "
          f"{p['cpu_per_1000']:.2f} | "
          f"{p['peak_rss_mb']:.0f} | {p['state_mb_per_100k_orders']:,.0f} | {p['rss_mb_per_100k_orders']:,.0f} | "
          f"{_whole(p.get('parked', float('nan')))} |" for n, p in results.processors.items()), "",
        "Measured: the messages it had not yet processed when it said it was ready; rate and CPU are of",
        "those, from then until it drained its input.",
        "State and RSS per 100,000 orders are extrapolated from this run's orders: the growth of the",
        "RocksDB folder and of resident memory from the ready, empty processor to the drained one",
        "(RocksDB's write-ahead log is part of the folder until it is compacted away). Events parked: read",
        "before what they wait for; each is applied again when that comes, and writes a record more. The",
        f"preload is written in order (the broker acknowledges every {IN_ORDER_EVERY} sends before the next), so",
        "what parks was sent within that many of its prerequisite on another topic.", "",
        *_floors_section(results),
        "## The whole pipeline at fixed offered rates", "",
        f"![end-to-end latency against offered load]({plot.name})", "",
        "| offered events/s | achieved events/s | processed events/s (any window's) | lag at end of window |"
        " reached the timeline | latency p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|---|",
        *(f"| {r['offered']:,} | {r['achieved']:,.0f} | {r['processed']:,.0f} | {r['lag_at_end']:,.0f} | "
          f"{r['completed']:.1%} | {_whole(r['p50_ms'])} | {_whole(r['p99_ms'])} | {_whole(r['max_ms'])} |"
          for r in results.pipeline), "",
        "A latency of — : none of the window's events reached the timeline before the wait after it ended.", "",
        f"Measured after {results.warmup_seconds:.0f} s of unmeasured load at 50 events/s on the fresh broker and "
        "processors (the JVM compiles its hot paths meanwhile).",
        "Latency: from an upstream event handed to the producer to its timeline entry's broker timestamp.",
        "Achieved: events of the window whose timeline entry was written within the window's length of",
        "being sent, per second. Processed: upstream events of any window (earlier ones queue ahead",
        "once the pipeline falls behind) whose timeline entry was written during the window, per second:",
        "what the pipeline handles at that load. Far above it, this can read 0 while the timeline works: it",
        "merges its inputs by write time, so the state machines' records written before the window (their",
        "backlog) come first, and their entries, caused by derived records, are not counted. All five",
        "processors, the broker and the load share the machine; the timeline reads every topic (about",
        "four messages per upstream event), so it is the first to fall behind.", "",
        "Where the CPU went, per upstream event offered (from the window's first send until the timeline had them",
        "all, or the wait for them ended): meaningful where the pipeline kept up; above that, the machine's CPU",
        "spread over events it did not get to.", "",
        "| offered events/s | " + " | ".join(f"{name} CPU ms" for name in _components(results)) + " | total CPU ms |"
        " machine busy |", "|---|" + "---|" * (len(_components(results)) + 2),
        *(f"| {r['offered']:,} | " + " | ".join(f"{r['cpu_ms'].get(name, float('nan')):.2f}" for name in _components(results))
          + f" | {sum(r['cpu_ms'].values()):.2f} | {r['cpu_share']:.0%} |" for r in results.pipeline), "",
        *_soak_section(results),
        "## Replay (offline rebuild, `orderops replay rebuild`)", "",
        f"The rebuild shares the orders among {results.replay_workers} process(es), one per CPU (the processor is "
        "stopped while it is rebuilt); one process is the rate per core. Each rebuilds its inputs in this run and "
        "copies of them, each copy's orders renamed (new orders, the same bytes otherwise), to the size below.", "",
        "| processor | messages | orders | copies | messages/s | seconds | messages/s, one process |",
        "|---|---|---|---|---|---|---|",
        *(f"| {n} | {m:,} | {o:,} | {c} | {results.replay[n]:,.0f} | {m / results.replay[n]:,.0f} | "
          f"{results.replay_one.get(n, float('nan')):,.0f} |" for n, (m, o, c) in results.replayed.items()), "",
        *ceiling(results),
        "## Against the targets", "",
        *targets(results), ""]
    return "\n".join(lines)


def _topics_read(results: Results) -> list[str]:
    """The topics the processors read, in the catalog's order."""
    read = {topic for figures in results.processors.values() for topic in figures.get("by_topic", {})}
    return [t.name for t in catalog.ALL_TOPICS if t.name in read]


def _by_topic(results: Results) -> list[str]:
    topics = _topics_read(results)
    if not topics:
        return []
    return ["What each reads, by topic, per upstream event:", "",
            "| topic | " + " | ".join(PIPELINE) + " |", "|---|" + "---|" * len(PIPELINE),
            *(f"| {topic} | " + " | ".join(_per_event(results, name, topic) for name in PIPELINE) + " |"
              for topic in topics), ""]


def _per_event(results: Results, processor: str, topic: str) -> str:
    messages = results.processors[processor].get("by_topic", {}).get(topic)
    return "" if messages is None else f"{messages / results.events:.2f}"


def ceiling(results: Results) -> list[str]:
    """The most the whole pipeline could take on this machine, from this run's own figures: how many
    messages each processor reads per upstream event, and what each costs alone. Not a measurement of
    the pipeline (above), a bound on it: what the targets ask, set against what the machine allows."""
    passthrough = results.baselines.get("passthrough")
    if not passthrough or not results.events or set(PIPELINE) - set(results.processors):
        return []
    cores = int(results.machine.get("cores") or 1)
    read = {name: results.processors[name]["events"] / results.events for name in PIPELINE}
    cpu_ms = {name: read[name] * results.processors[name]["cpu_per_1000"] for name in PIPELINE}
    messages, ms = sum(read.values()), sum(cpu_ms.values())
    at_passthrough = cores * passthrough / messages
    return [
        "## What this machine allows the whole pipeline", "",
        "Per upstream event, each processor reads the messages below (its inputs in this run, divided by the",
        "upstream events) and spends, alone, that many times its CPU per message:", "",
        "| processor | messages read per upstream event | CPU ms per upstream event (alone) |", "|---|---|---|",
        *(f"| {name} | {read[name]:.2f} | {cpu_ms[name]:.2f} |" for name in PIPELINE),
        f"| all five | {messages:.2f} | {ms:.2f} |", "",
        *_by_topic(results),
        f"- At their cost alone, with all {cores} cores theirs and none for the broker or the load: at most "
        f"**{cores * 1000 / ms:,.0f} upstream events/s** (in the pipeline a processor costs more per message than alone).",
        f"- Were every processor as fast as the passthrough ({passthrough:,.0f} messages/s, no domain logic), one per "
        f"core: at most **{at_passthrough:,.0f}/s**; at {TARGETS['processor_ratio']:.0%} of it (the target for each processor), "
        f"{at_passthrough * TARGETS['processor_ratio']:,.0f}/s.",
        f"- {TARGETS['shop']:,} upstream events/s would take every processor at "
        f"**{TARGETS['shop'] / at_passthrough:.0%} of the passthrough**, the broker's work not counted.", "",
        *sizing(results, cpu_ms)]


# A machine is sized to be this busy at the peak: the rest is for rebalances, a worker taking over
# a lost one's partitions, and bursts above the peak.
PEAK_BUSY = 0.6


def sizing(results: Results, cpu_ms: dict[str, float]) -> list[str]:
    """Machines and partitions for a shop's peak (TARGETS["shop"] upstream events/s), from this run's
    CPU per upstream event: each processor's alone, the broker's where the pipeline kept up."""
    shop, cores = TARGETS["shop"], int(results.machine.get("cores") or 1)
    kept_up = [row for row in results.pipeline if row["achieved"] >= 0.95 * row["offered"]]
    broker_ms = kept_up[-1]["cpu_ms"].get("broker") if kept_up else None
    # A worker is one Python process: one core at most. Each processor needs this many at the peak.
    workers = {name: math.ceil(shop * ms / 1000 / PEAK_BUSY) for name, ms in cpu_ms.items()}
    broker_cores = shop * broker_ms / 1000 / PEAK_BUSY if broker_ms is not None else None
    total = sum(workers.values()) + (broker_cores or 0)
    machines = math.ceil(total / cores)
    partitions = 8 * math.ceil(max(workers.values()) / 8)
    return [
        f"### Sizing a shop's peak: {shop:,} upstream events/s (700 orders a second, about ten events an order)", "",
        f"From this run's CPU per upstream event, with every core at most {PEAK_BUSY:.0%} busy at the peak (the rest "
        "for rebalances, a worker taking over a lost one's partitions, and bursts). A worker is one Python "
        "process and uses one core at most.", "",
        "| component | CPU ms per upstream event | cores at the peak | workers |", "|---|---|---|---|",
        *(f"| {name} | {cpu_ms[name]:.2f} | {shop * cpu_ms[name] / 1000 / PEAK_BUSY:,.1f} | {workers[name]} |"
          for name in cpu_ms),
        *([f"| broker (in the pipeline at {kept_up[-1]['offered']:,}/s, replication not counted) | {broker_ms:.2f} | "
           f"{broker_cores:,.1f} | |"] if broker_cores is not None else []), "",
        f"- **{machines} machines of {cores} cores** like this one"
        + ("" if broker_cores is not None else " for the processors (the broker's share was not measured in this run)")
        + f"; each order-scoped topic needs at least **{partitions} partitions** (a partition is read by one worker "
        f"of a processor at a time, so the processor that needs the most workers, "
        f"{max(workers, key=lambda n: workers[n])} with {max(workers.values())}, sets it; rounded up to a multiple of 8).",
        "- The processors' cost here is each one's alone; in the pipeline a processor costs more per message "
        "(\"Where the CPU went\" above), so these are the least a shop needs.", ""]


def _soak_section(results: Results) -> list[str]:
    if not results.soak:
        return []
    k = results.soak
    minute = _rss_at(k["samples"], 60)
    stores, outside = _second_half(k, "rocksdb"), _outside_rocksdb(k)
    return [
        "## Memory over time (a steady load the pipeline sustains)", "",
        f"{k['rate']} upstream events/s for {k['seconds']:.0f} s ({k['orders']:,} new orders; lag at the end "
        f"{k['lag']:,}), after the warm-up and before the rates above; resident memory sampled every "
        f"{SOAK_SAMPLE_SECONDS} s.", "",
        "| component | RSS MB after 1 min | at half time | at the end | growth in the second half "
        "| RocksDB's memtables and cache | growth outside RocksDB |",
        "|---|---|---|---|---|---|---|",
        *(f"| {name} | {minute[name]:,.0f} | {half:,.0f} | {end:,.0f} | {end - half:+,.0f} MB ({growth:+.1%}) | "
          + (f"{stores[name][0]:,.0f} → {stores[name][1]:,.0f} MB | {outside[name]:+,.0f} MB |" if name in stores else "| |")
          for name, (half, end, growth) in _second_half(k).items()), "",
        "A processor keeps the parsed state of the orders it wrote last (`ORDEROPS_STATE_CACHE_ORDERS`, 10,000",
        "by default): until that many orders were seen, its memory grows with every new order by design. So do",
        "RocksDB's memtables and block cache, up to `ORDEROPS_ROCKSDB_WRITE_BUFFER_MB` and",
        "`ORDEROPS_ROCKSDB_CACHE_MB` (64 MB each by default), read from each processor's",
        "`orderops_rocksdb_memory_bytes`. RSS mostly falls with them when a memtable is flushed, not always at",
        "once: the growth outside RocksDB is good to about the size of their swings.", ""]


def _outside_summary(soak: dict) -> str:
    outside = _outside_rocksdb(soak)
    if not outside:
        return ""
    grown = max(outside, key=outside.get)
    return f"; outside RocksDB's bounded memtables and cache, {grown}'s, {outside[grown]:+,.0f} MB"


def _components(results: Results) -> list[str]:
    return list(results.pipeline[0]["cpu_ms"]) if results.pipeline else []


def _floors_section(results: Results) -> list[str]:
    if not results.floors:
        return []
    return ["## Runtime overhead: each processor alone against its domain floor", "",
            "| processor | domain floor, CPU µs a message | live, CPU µs a message | live ÷ floor |", "|---|---|---|---|",
            *(f"| {name} | {floor:,.0f} | {results.processors[name]['cpu_per_1000'] * 1000:,.0f} | "
              f"{results.processors[name]['cpu_per_1000'] * 1000 / floor:.2f}× |" for name, floor in results.floors.items()),
            "", "The floor: the processor's own work on the same input messages, in this process, in write order, "
            "state in a dict (decode and checks, apply or expire, publish, encode every record, serialize each new "
            "state, the next deadline; the garbage collector paused, as the rebuild runs). Live: the CPU of the "
            "processor alone above, per message it processed.", ""]


def targets(results: Results) -> list[str]:
    out = []
    for name, floor in results.floors.items():
        ratio = results.processors[name]["cpu_per_1000"] * 1000 / floor
        out.append(f"- {name}: live CPU a message ≤ {TARGETS['floor_ratio']}× its domain floor: "
                   f"**{'met' if ratio <= TARGETS['floor_ratio'] else 'not met'}** ({ratio:.2f}×).")
    best = max((r["achieved"] for r in results.pipeline), default=0)
    if results.pipeline:
        out.append(f"- Pipeline sustains {TARGETS['pipeline']:,} upstream events/s: "
                   f"**{'met' if best >= TARGETS['pipeline'] else 'not met'}** (best achieved {best:,.0f}/s).")
    at = next((r for r in results.pipeline if r["offered"] == TARGETS["p99_at"]), None)
    if at:
        p99 = at["p99_ms"]
        out.append(f"- p99 end-to-end latency under {TARGETS['p99_ms']} ms at {TARGETS['p99_at']} events/s: "
                   f"**{'met' if p99 < TARGETS['p99_ms'] else 'not met'}** "
                   + (f"({p99:,.0f} ms)." if not math.isnan(p99) else
                      "(none of the window's events reached the timeline before the wait after the window ended)."))
    idle = next((r for r in results.pipeline if r["offered"] == TARGETS["idle_at"]), None)
    if idle:
        spent = sum(ms for name, ms in idle["cpu_ms"].items() if name in PIPELINE)
        out.append(f"- The processors' CPU per upstream event at {TARGETS['idle_at']} events/s ≤ {TARGETS['idle_ms']} ms: "
                   f"**{'met' if spent <= TARGETS['idle_ms'] else 'not met'}** ({spent:.1f} ms).")
    for name, p in results.processors.items():
        out.append(f"- {name} drains at ≥ 25% of the passthrough: **{'met' if p['ratio'] >= 0.25 else 'not met'}** "
                   f"({p['ratio']:.0%}).")
    for name, r in results.replay.items():
        messages = results.replayed.get(name, (0,))[0]
        out.append(f"- {name} rebuild ≥ 20,000 events/s: **{'met' if r >= 20000 else 'not met'}** ({r:,.0f}/s with "
                   f"{results.replay_workers} process(es); {results.replay_one.get(name, float('nan')):,.0f}/s in one; "
                   f"{messages:,} messages).")
    if results.soak:
        k, growths = results.soak, {name: growth for name, (_, _, growth) in _second_half(results.soak).items()}
        grown = max(growths, key=growths.get)
        out.append(f"- Memory flat over a 10-minute run at 3,000 events/s: **not measured** at that rate (the pipeline "
                   f"does not sustain it); at {k['rate']}/s for {k['seconds']:.0f} s, the most growth in the second "
                   f"half was {grown}'s, {growths[grown]:+.1%}" + _outside_summary(k) + " (see \"Memory over time\").")
    else:
        out.append("- Memory flat over a 10-minute run at 3,000 events/s: not measured by this run.")
    return out


def draw(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [r["offered"] for r in results.pipeline]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        axis.plot(offered, [r[key] for r in results.pipeline], marker="o", label=label)
    axis.set_xlabel("offered upstream events/s")
    axis.set_ylabel("end-to-end latency (ms)")
    axis.set_yscale("log")
    axis.set_title(f"orderops pipeline, {results.machine['cores']} cores, {results.machine['date']}")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


# -- running it -----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from aiosmtpd.controller import Controller

    from orderops_tools.testing import PrivateBroker, free_port

    class Discard:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    unknown = set(args.processors) - set(PIPELINE)
    if unknown:
        print(f"bench: no processor {', '.join(sorted(unknown))}; known: {', '.join(PIPELINE)}", file=sys.stderr)
        return 2

    results = Results(machine=machine())
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="orderops-bench-") as tmp:
        workdir = Path(tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        smtp = Controller(Discard(), hostname="127.0.0.1", port=free_port())
        smtp.start()
        broker = PrivateBroker(workdir / "broker")
        BOOTSTRAP[0] = broker.start()
        try:
            subprocess.run([sys.executable, "-m", "orderops.ops.cli", "policies", "publish"], check=True,
                           env={**os.environ, "KAFKA_BOOTSTRAP": BOOTSTRAP[0]}, capture_output=True)
            sends, results.orders = workload(args.events, seed=1)
            results.events = len(sends)
            log(f"workload: {len(sends):,} upstream events of {results.orders:,} orders")
            baselines(sends, results)
            processors_alone(results, workdir / "alone", smtp.port, tuple(args.processors),
                             Path(args.profile).resolve() if args.profile else None)
            floors(results)
            replays(results, args.replay_events)
        finally:
            broker.stop()
        if args.rates:
            broker = PrivateBroker(workdir / "broker-pipeline")
            BOOTSTRAP[0] = broker.start()
            try:
                subprocess.run([sys.executable, "-m", "orderops.ops.cli", "policies", "publish"], check=True,
                               env={**os.environ, "KAFKA_BOOTSTRAP": BOOTSTRAP[0]}, capture_output=True)
                pipeline(results, workdir / "pipeline", smtp.port, args.rates, args.seconds,
                         int(broker.pid_file.read_text().split()[0]) if broker.pid_file.is_file() else None,
                         args.warmup, args.soak_rate, args.soak)
                results.warmup_seconds = args.warmup
            finally:
                broker.stop()
        smtp.stop()
    out = Path(args.out)
    plot = out.with_name("benchmarks-latency.png")
    if results.pipeline:
        draw(results, plot)
    out.write_text(report(results, plot))
    log(f"wrote {out} and {plot}")
    return 0


def register(groups) -> None:
    parser = groups.add_parser("bench", help="benchmark every processor against baselines (make bench)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", "200000")),
                        help="upstream events preloaded for each processor (BENCH_EVENTS, default 200000)")
    parser.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[int(x) for x in os.environ.get("BENCH_RATES", "50,200,600,1000").split(",") if x],
                        help="offered rates for the pipeline, events/s (BENCH_RATES, default 50,200,600,1000: the "
                             "idle cost's rate, the latency target's, the throughput target, and one above it)")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_RATE_SECONDS", "60")),
                        help="seconds at each rate (BENCH_RATE_SECONDS, default 60)")
    parser.add_argument("--warmup", type=float, default=float(os.environ.get("BENCH_WARMUP_SECONDS", "30")),
                        help="seconds of unmeasured load before the pipeline's rates (BENCH_WARMUP_SECONDS, default 30)")
    parser.add_argument("--soak", type=float, default=float(os.environ.get("BENCH_SOAK_SECONDS", "600")),
                        help="seconds of steady load, memory sampled, before the rates (BENCH_SOAK_SECONDS, default "
                             "600; 0: none)")
    parser.add_argument("--soak-rate", type=int, default=int(os.environ.get("BENCH_SOAK_RATE", "50")),
                        help="upstream events/s of that load: one the pipeline sustains (BENCH_SOAK_RATE, default 50)")
    parser.add_argument("--replay-events", type=int, default=int(os.environ.get("BENCH_REPLAY_EVENTS", "1000000")),
                        help="messages each state machine is rebuilt from: its inputs and renamed copies of them "
                             "(BENCH_REPLAY_EVENTS, default 1000000)")
    parser.add_argument("--processors", type=lambda s: [x for x in s.split(",") if x], default=list(PIPELINE),
                        help=f"the processors measured alone (default: all: {','.join(PIPELINE)})")
    parser.add_argument("--profile", metavar="DIR", help="sample each processor alone with py-spy; folded stacks in DIR")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it: the brokers' data and each processor's "
                                                      "log and state (default: a temporary folder, removed)")
    parser.set_defaults(run=run)


