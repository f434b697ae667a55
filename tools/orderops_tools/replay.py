"""``orderops replay``: the on-call engineer's tools.

    inspect TOPIC     print a topic's messages decoded from Avro (dead letters with their headers),
                      by order, partition, offset range or time range
    reset PROCESSOR   move a processor's consumer group to the start, a time or an offset of its
                      inputs; refused while any worker of it is running
    redrive PROCESSOR send the processor's dead letters back to their origin topic, once each,
                      recorded in <processor>.redrives
    rebuild PROCESSOR rebuild a state-machine processor's state from its input topics into fresh
                      state (offline, the processor's own pure functions) and compare it, and the
                      records it would write, with what the processor holds and wrote
    what-if POLICY    judge the return requests of a time range by a draft return policy and report,
                      decision by decision, what would change (nothing is published)

Every command that changes something has --dry-run. See docs/operations.md for when to use which.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from orderops.codec.avro import Codec, DecodeError
from orderops.codec.privacy import read_event
from orderops.model import catalog
from orderops.model.envelope import to_json
from orderops.ops.security import client_config
from orderops.ops.settings import PRODUCER_DEFAULTS, KafkaSettings
from orderops.replay.rebuild import Message
from orderops.replay.topicreader import consumer_for, read, read_messages
from orderops.runtime import deadletter
from orderops.runtime.globalview import read_compacted

REDRIVEN_FROM = "redriven-from"


def describe(topic: catalog.Topic, message: Any, codec: Codec) -> dict:
    headers = {k: v.decode(errors="replace") for k, v in (message.headers() or [])}
    out: dict[str, Any] = {"topic": topic.name, "partition": message.partition(), "offset": message.offset(),
                           "timestamp": message.timestamp()[1], "key": (message.key() or b"").decode(errors="replace")}
    if headers:
        out["headers"] = headers
    if topic.value_schema is None:
        value = message.value() or b""
        out["value"] = value.decode(errors="replace") if value.isascii() else value.hex()
        return out
    try:
        record = codec.decode(message.value(), topic.value_schema).record
        if "payload" in record:
            out["type"] = record["payload"][0].rsplit(".", 1)[-1]
            record = {**record, "payload": record["payload"][1]}
        out["event"] = to_json(record)
    except DecodeError as exc:
        out["undecodable"] = f"{exc.reason}: {exc}"
    return out


def _inspect(args: argparse.Namespace) -> int:
    bootstrap, codec = KafkaSettings.from_env().bootstrap, Codec()
    topic = catalog.topic(args.topic)
    start: dict[int, int] | None = None
    partitions = [args.partition] if args.partition is not None else None
    if args.since:
        consumer = consumer_for(bootstrap)
        moment = int(datetime.fromisoformat(args.since).timestamp() * 1000)
        wanted = [TopicPartition(topic.name, p, moment) for p in (partitions or range(topic.partitions))]
        start = {tp.partition: tp.offset for tp in consumer.offsets_for_times(wanted, timeout=30) if tp.offset >= 0}
        partitions = list(start)
        consumer.close()
    elif args.from_offset is not None:
        start = {p: args.from_offset for p in (partitions or range(topic.partitions))}
    stop = {p: args.to_offset + 1 for p in (partitions or range(topic.partitions))} if args.to_offset is not None else None
    until = datetime.fromisoformat(args.until).timestamp() * 1000 if args.until else None
    shown = 0
    for message in read(bootstrap, topic, partitions, start, stop):
        if args.order and message.key() != args.order.encode():
            continue
        if until is not None and message.timestamp()[1] > until:
            continue
        print(json.dumps(describe(topic, message, codec), default=str, ensure_ascii=False))
        shown += 1
        if args.limit and shown >= args.limit:
            break
    print(f"inspect: {shown} message(s) of {topic.name}", file=sys.stderr)
    return 0


def group_of(processor: str, instance: str | None) -> str:
    return f"{processor}-{instance}" if instance else processor


def _reset(args: argparse.Namespace) -> int:
    bootstrap = KafkaSettings.from_env().bootstrap
    if args.processor not in catalog.PROCESSORS:
        print(f"reset: {args.processor!r} is not a processor ({', '.join(catalog.PROCESSORS)})", file=sys.stderr)
        return 2
    group = group_of(args.processor, args.instance)
    admin = AdminClient(client_config(bootstrap))
    described = admin.describe_consumer_groups([group])[group].result()
    if described.members:
        print(f"reset: refused: {len(described.members)} worker(s) of {group} are running "
              f"({', '.join(m.client_id for m in described.members)}). Stop them (make stop), then retry.",
              file=sys.stderr)
        return 1
    topics = [*catalog.inputs_of(args.processor), catalog.TIMER_TOPICS[args.processor]]
    consumer = consumer_for(bootstrap)
    plan = []
    for topic in topics:
        for p in range(topic.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic.name, p), timeout=30)
            if args.to_earliest:
                offset = low
            elif args.to_offset is not None:
                offset = min(max(args.to_offset, low), high)
            else:
                moment = int(datetime.fromisoformat(args.to_datetime).timestamp() * 1000)
                found = consumer.offsets_for_times([TopicPartition(topic.name, p, moment)], timeout=30)[0].offset
                offset = found if found >= 0 else high
            plan.append(TopicPartition(topic.name, p, offset))
    consumer.close()
    for tp in plan:
        print(f"  {tp.topic}[{tp.partition}] -> {tp.offset}")
    if args.dry_run:
        print(f"reset: dry run, {group} unchanged ({len(plan)} partitions planned)")
        return 0
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, plan)])[group].result()
    print(f"reset: {group} moved on {len(plan)} partitions; start the processor to replay from there")
    return 0


def _redrive(args: argparse.Namespace) -> int:
    bootstrap, codec = KafkaSettings.from_env().bootstrap, Codec()
    if args.processor not in catalog.PROCESSORS:
        print(f"redrive: {args.processor!r} is not a processor ({', '.join(catalog.PROCESSORS)})", file=sys.stderr)
        return 2
    dlq, ledger = catalog.DEAD_LETTER_TOPICS[args.processor], catalog.REDRIVE_TOPICS[args.processor]
    found = read_compacted(bootstrap, ledger, reader=deadletter.read_redrive_entry)
    for bad in found.unreadable.values():  # offered again below: safe, processors know what they applied
        print(f"redrive: {bad.describe()}; left out, so the dead letter it names, if any, is offered again. Remove it: "
              f"orderops topics drop-unreadable {ledger.name}", file=sys.stderr)
    done = {key for key, entry in found.entries.items() if entry["dlq"] == dlq.name}
    producer = Producer(client_config(bootstrap, **PRODUCER_DEFAULTS))
    counts = {"redriven": 0, "already": 0, "skipped": 0}
    for message in read(bootstrap, dlq):
        key = f"{message.partition()}:{message.offset()}"
        if args.order and message.key() != args.order.encode():
            counts["skipped"] += 1
            continue
        if key in done:
            counts["already"] += 1
            continue
        headers = dict(message.headers() or [])
        origin = headers.get(deadletter.ORIGIN_TOPIC, b"").decode()
        if origin not in catalog.BY_NAME:
            print(f"redrive: {dlq.name}[{key}] names no catalog origin topic ({origin!r}); left alone", file=sys.stderr)
            counts["skipped"] += 1
            continue
        verdict = _decodes(codec, origin, message.key(), message.value())
        print(f"  {dlq.name}[{key}] -> {origin} (order {(message.key() or b'').decode()}; {verdict}; was: "
              f"{headers.get(deadletter.ERROR, b'').decode()[:100]})")
        if args.dry_run:
            continue
        original = [(k, v) for k, v in (message.headers() or []) if k not in deadletter.ADDED_HEADERS]
        producer.produce(origin, key=message.key(), value=message.value(),
                         headers=[*original, (REDRIVEN_FROM, f"{dlq.name}:{key}".encode())])
        if producer.flush(30):
            print("redrive: the broker did not acknowledge; stopped (run again: nothing is sent twice)", file=sys.stderr)
            return 1
        entry_key, entry = deadletter.redrive_entry(dlq.name, message.partition(), message.offset(), origin,
                                                    datetime.now().astimezone())
        producer.produce(ledger.name, key=entry_key, value=entry)
        producer.flush(30)
        counts["redriven"] += 1
    mode = "dry run: would re-drive" if args.dry_run else "re-drove"
    print(f"redrive: {mode} {counts['redriven'] if not args.dry_run else 'the messages above'}; "
          f"{counts['already']} already re-driven, {counts['skipped']} skipped")
    return 0


def machine_processor(name: str, bootstrap: str):
    """The processor's MachineProcessor, from the installed service (entry point group
    ``orderops.machines``): the same pure functions its live agent runs."""
    from importlib.metadata import entry_points

    from orderops.ops.settings import ServiceSettings

    found = {e.name: e for e in entry_points(group="orderops.machines")}
    if name not in found:
        raise SystemExit(f"rebuild: {name} is not a state-machine processor ({', '.join(sorted(found)) or 'none installed'});"
                         f" rebuild it by `orderops replay reset {name} --to-earliest` after deleting its local state"
                         " (docs/operations.md)")
    return found[name].load()(ServiceSettings.from_env(name, 0), bootstrap)


def latest_by_key(bootstrap: str, topic_name: str, decode: Callable[[bytes], Any] = json.loads) -> dict[str, Any]:
    """A changelog's latest value per key (JSON key and value, as Faust writes them; ``decode`` reads
    each value); deletions drop the key."""
    topic = catalog.Topic(topic_name, None, "order id (JSON)", (), (), "changelog", compacted=True)
    latest: dict[str, Any] = {}
    for m in read(bootstrap, topic):
        try:
            key = json.loads(m.key())
        except (TypeError, ValueError):
            print(f"{topic_name}[{m.partition()}] offset {m.offset()}: a key that is no JSON; left out (the processor "
                  "did not write it: its state for that key cannot be compared)", file=sys.stderr)
            continue
        if m.value() is None:
            latest.pop(key, None)
        else:
            latest[key] = decode(m.value())
    return latest


def written_values(bootstrap: str, topics: list[catalog.Topic]) -> Iterator[tuple[str, bytes]]:
    """Every (topic, value) on these topics (several processors write notifications.requests: the
    rebuild keeps its processor's, ``rebuild.produced_by_share``)."""
    for topic in topics:
        for m in read(bootstrap, topic):
            yield topic.name, m.value()


def _rebuild(args: argparse.Namespace) -> int:
    import time

    from orderops.replay.rebuild import ComparedOutputs, produced_by_share, replay_in_shares, replay_workers, shares_for

    bootstrap, codec = KafkaSettings.from_env().bootstrap, Codec()
    processor = machine_processor(args.processor, bootstrap)
    group = group_of(processor.name, args.instance)
    started = time.monotonic()
    messages = read_messages(bootstrap, [*processor.inputs, processor.timers])
    keep = _orders_to_rebuild(messages, args)
    workers = args.workers or replay_workers()
    shares = shares_for(workers, args.clock, len(messages))
    stored, produced = {}, [None] * shares
    if not args.dry_run:  # read before the replay: each share's process compares its own orders' with them
        stored = latest_by_key(bootstrap, f"{group}-{processor.table}-changelog", decode=bytes)
        produced = produced_by_share(written_values(bootstrap, [t for t in catalog.DATA_TOPICS if processor.name in t.writers]),
                                     codec, processor.name, shares)
    results = replay_in_shares(processor, messages, functools.partial(_compared, processor, stored, not args.dry_run),
                               workers, clock=args.clock, codec=codec, keep=keep,
                               progress=lambda n: print(f"  replayed {n:,} of {len(messages):,}", file=sys.stderr, flush=True),
                               outputs=lambda share: ComparedOutputs(produced[share], codec))
    took = time.monotonic() - started
    total = Compared.together(results)
    differences = total.differences
    print(f"rebuild: {processor.name}: {total.orders:,} orders from {len(messages):,} messages "
          f"({total.applied:,} applied, {total.duplicates:,} duplicates, {total.timer_ticks:,} timer ticks, "
          f"{total.dead_letters:,} that live would dead-letter) in {took:.1f} s "
          f"({len(messages) / max(took, 1e-9):,.0f} messages/s, {len(results)} process(es))")
    if args.dry_run:
        return 0
    print(f"rebuild: compared {total.orders:,} orders' state and {total.compared:,} records with what {group} holds and "
          f"wrote; {total.written_again:,} records it wrote again byte for byte (at least once: after a crash a worker "
          f"sends again what it sent before its commit; readers drop them by id); {total.parked_written:,} EventParked "
          f"records it wrote and {total.parked_made:,} the rebuild makes, not compared: live records a park only "
          "once the event has waited, on its own clock")
    if not total.orders:
        print(f"rebuild: nothing to compare: no order in {processor.name}'s inputs"
              f"{' (--order, --since)' if args.order or args.since else ''}. A check that compared nothing proves "
              "nothing: is KAFKA_BOOTSTRAP the system's broker?")
        return 1
    for d in differences[:args.show]:
        print(f"  DIFFERENT  order {d.order_id}: {d.what}: {d.detail}")
    if len(differences) > args.show:
        print(f"  ... and {len(differences) - args.show} more (--show N)")
    if differences:
        print(f"rebuild: {len(differences)} difference(s) from what {group} holds and wrote "
              f"({len({d.order_id for d in differences})} order(s)). Not changed: nothing was written.")
        return 1
    print(f"rebuild: identical: the state of {total.orders:,} orders and {total.compared:,} records match "
          f"what {group} holds and wrote")
    return 0


@dataclass(frozen=True)
class Compared:
    """What a share of a rebuild found: counts, and where it differs from the processor."""

    orders: int
    applied: int
    duplicates: int
    timer_ticks: int
    dead_letters: int
    records: int
    compared: int = 0  # records made and compared with the processor's
    written_again: int = 0  # copies the processor wrote again byte for byte
    parked_written: int = 0
    parked_made: int = 0
    differences: tuple = ()

    @classmethod
    def together(cls, shares: list[Compared]) -> Compared:
        """The shares' counts added, their differences states first, by order."""
        counts = {f.name: sum(getattr(share, f.name) for share in shares) for f in fields(cls) if f.name != "differences"}
        return cls(**counts, differences=tuple(sorted((d for share in shares for d in share.differences),
                                                      key=lambda d: (d.what != "state", d.order_id))))


def _compared(processor, stored: dict[str, bytes], compare: bool, rebuilt) -> Compared:
    from orderops.replay.rebuild import compare_states

    differences: tuple = ()
    outputs, orders = rebuilt.outputs, set(rebuilt.states)
    again = parked = 0
    if compare:  # the records were compared as the replay made them (rebuild.ComparedOutputs)
        differences = (*compare_states(rebuilt.states, stored, processor.stored_as), *outputs.differences(orders))
        again, parked = outputs.written(orders)
    return Compared(len(rebuilt.states), rebuilt.applied, rebuilt.duplicates, rebuilt.timer_ticks,
                    len(rebuilt.dead_letters), len(outputs), outputs.compared, again, parked, outputs.parked_made,
                    differences)


def _orders_to_rebuild(messages: list[Message], args: argparse.Namespace):
    if args.order:
        return lambda order_id: order_id == args.order
    if not args.since:
        return lambda order_id: True
    since = int(datetime.fromisoformat(args.since).timestamp() * 1000)
    first: dict[str, int] = {}
    for m in messages:
        order_id = (m.key or b"").decode(errors="replace")
        first[order_id] = min(first.get(order_id, m.timestamp_ms), m.timestamp_ms)
    fresh = {order_id for order_id, at in first.items() if at >= since}
    return fresh.__contains__


def _decodes(codec: Codec, origin: str, key: bytes | None, value: bytes) -> str:
    topic = catalog.topic(origin)
    if topic.value_schema is None:  # no schema in the catalog: nothing to check
        return "decodes"
    try:
        if topic.order_scoped:  # as the processor reads it: an order's event keyed by its order id
            read_event(codec, key, value, topic)
        else:
            codec.decode(value, topic.value_schema)
        return "decodes now"
    except DecodeError as exc:
        return f"STILL UNDECODABLE ({exc.reason}): it will land in the dead letters again"


def register(groups) -> None:
    commands = groups.add_parser("replay", help="on-call tools: inspect, reset, redrive", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter).add_subparsers(
        dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print a topic's messages decoded (JSON lines)")
    inspect.add_argument("topic", help="a catalog topic, e.g. payments.events or order-state.dlq")
    inspect.add_argument("--order", help="only this order id (the message key)")
    inspect.add_argument("--partition", type=int)
    inspect.add_argument("--from-offset", type=int)
    inspect.add_argument("--to-offset", type=int)
    inspect.add_argument("--since", help="from this broker timestamp (ISO 8601)")
    inspect.add_argument("--until", help="up to this broker timestamp (ISO 8601)")
    inspect.add_argument("--limit", type=int)
    inspect.set_defaults(run=_inspect)
    reset = commands.add_parser("reset", help="move a processor's consumer group (refused while it runs)")
    reset.add_argument("processor", choices=catalog.PROCESSORS)
    where = reset.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-earliest", action="store_true", help="the start of every input")
    where.add_argument("--to-datetime", help="the first message at or after this time (ISO 8601)")
    where.add_argument("--to-offset", type=int, help="this offset on every input partition")
    reset.add_argument("--instance", help="the ORDEROPS_INSTANCE of the processor, if any")
    reset.add_argument("--dry-run", action="store_true")
    reset.set_defaults(run=_reset)
    redrive = commands.add_parser("redrive", help="send dead letters back to their origin topic, once each")
    redrive.add_argument("processor", choices=catalog.PROCESSORS)
    redrive.add_argument("--order", help="only this order's dead letters")
    redrive.add_argument("--dry-run", action="store_true")
    redrive.set_defaults(run=_redrive)
    rebuild = commands.add_parser(
        "rebuild", help="rebuild a processor's state offline from its inputs and compare with what it holds and wrote",
        description="Reads the processor's input topics and its timer topic from the beginning, applies them in the "
                    "order they were written to fresh in-memory state with the processor's own pure functions, and "
                    "compares each order's state with the processor's table (its changelog) and every record it "
                    "would write with what is on its output topics (derived ids are deterministic). Writes nothing. "
                    "Exit 0: identical; 1: differences, listed.")
    rebuild.add_argument("processor", choices=("order-state", "fulfillment", "returns"))
    rebuild.add_argument("--since", help="only orders whose first input message was written at or after this time")
    rebuild.add_argument("--order", help="only this order")
    rebuild.add_argument("--clock", choices=("wall", "event"), default=os.environ.get("ORDEROPS_CLOCK", "wall"),
                         help="the clock the processor ran with (ORDEROPS_CLOCK; make run uses event)")
    rebuild.add_argument("--instance", help="the ORDEROPS_INSTANCE of the processor, if any")
    rebuild.add_argument("--show", type=int, default=20, help="differences to list (default 20)")
    rebuild.add_argument("--workers", type=int, default=0,
                         help="processes sharing the orders (default $ORDEROPS_REPLAY_WORKERS, else one per CPU; "
                              "the event clock always replays in one)")
    rebuild.add_argument("--dry-run", action="store_true", help="replay and report figures; compare nothing")
    rebuild.set_defaults(run=_rebuild)
    try:
        from returns.policy_cli import add_what_if  # the returns service owns policy decisions
    except ImportError:
        return
    add_what_if(commands)
