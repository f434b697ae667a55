"""``orderops replay``: the on-call engineer's tools.

    inspect TOPIC     print a topic's messages decoded from Avro (dead letters with their headers),
                      by order, partition, offset range or time range
    reset PROCESSOR   move a processor's consumer group to the start, a time or an offset of its
                      inputs; refused while any worker of it is running
    redrive PROCESSOR send the processor's dead letters back to their origin topic, once each,
                      recorded in <processor>.redrives

Every command that changes something has --dry-run. See docs/operations.md for when to use which.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from orderops import catalog, deadletter
from orderops.codec import Codec, DecodeError
from orderops.envelope import to_json
from orderops.settings import PRODUCER_DEFAULTS, KafkaSettings

REDRIVEN_FROM = "redriven-from"


def _consumer(bootstrap: str) -> Consumer:
    from orderops.admin import QuietLogger

    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"orderops-replay-{uuid.uuid4().hex}",
                     "enable.auto.commit": False, "logger": QuietLogger()})


def read(bootstrap: str, topic: catalog.Topic, partitions: list[int] | None = None, start: dict[int, int] | None = None,
         stop: dict[int, int] | None = None) -> list[Any]:
    """Every message of the topic's partitions from ``start`` (default: the beginning) up to the end
    as it was when reading began (or ``stop``), in partition and offset order."""
    consumer = _consumer(bootstrap)
    try:
        chosen = partitions if partitions is not None else list(range(topic.partitions))
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic.name, p), timeout=30)[1] for p in chosen}
        if stop:
            ends = {p: min(ends[p], stop.get(p, ends[p])) for p in chosen}
        first = {p: (start or {}).get(p, OFFSET_BEGINNING) for p in chosen}
        pending = {p for p in chosen if ends[p] > max(first[p], 0)}
        consumer.assign([TopicPartition(topic.name, p, first[p]) for p in pending])
        messages: list[Any] = []
        while pending:
            message = consumer.poll(10)
            if message is None:
                raise TimeoutError(f"{topic.name}: nothing arrived for 10 s while {sorted(pending)} were unread")
            if message.error():
                continue
            if message.partition() in pending and message.offset() < ends[message.partition()]:
                messages.append(message)
            if message.offset() + 1 >= ends[message.partition()]:
                pending.discard(message.partition())
        return sorted(messages, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


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
        consumer = _consumer(bootstrap)
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
    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.describe_consumer_groups([group])[group].result()
    if described.members:
        print(f"reset: refused: {len(described.members)} worker(s) of {group} are running "
              f"({', '.join(m.client_id for m in described.members)}). Stop them (make stop), then retry.",
              file=sys.stderr)
        return 1
    topics = [*catalog.inputs_of(args.processor), catalog.TIMER_TOPICS[args.processor]]
    consumer = _consumer(bootstrap)
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
    done = {m.key().decode() for m in read(bootstrap, ledger)}
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS})
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
        verdict = "decodes" if catalog.topic(origin).value_schema is None else _decodes(codec, origin, message.value())
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
        record = {"dlq": dlq.name, "partition": message.partition(), "offset": message.offset(), "origin": origin,
                  "at": datetime.now().astimezone().isoformat()}
        producer.produce(ledger.name, key=key.encode(), value=json.dumps(record).encode())
        producer.flush(30)
        counts["redriven"] += 1
    mode = "dry run: would re-drive" if args.dry_run else "re-drove"
    print(f"redrive: {mode} {counts['redriven'] if not args.dry_run else 'the messages above'}; "
          f"{counts['already']} already re-driven, {counts['skipped']} skipped")
    return 0


def _decodes(codec: Codec, origin: str, value: bytes) -> str:
    try:
        codec.decode(value, catalog.topic(origin).value_schema)
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
