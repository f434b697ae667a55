"""A state-machine processor's offline replay.

``replay`` runs a ``MachineProcessor`` (orderops.model.processor) over messages already read,
through the live path's own work on a record (``orderops.runtime.machine.MachineRecords``),
in the order they were written, into fresh in-memory state — the engine of ``orderops replay
rebuild`` (compare with what the processor produced) and of the returns policy what-if.

Pure: no Kafka here. Reading topics is the caller's business.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import json
import multiprocessing
import os
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import orjson

from orderops.codec.avro import Codec, DecodeError
from orderops.codec.privacy import read_event
from orderops.model import catalog
from orderops.model.catalog import Topic
from orderops.model.envelope import Envelope
from orderops.model.processor import MachineProcessor
from orderops.runtime.machine import APPLIED, DUPLICATE, PASSED_OVER, MachineRecords


@dataclass(frozen=True)
class Message:
    """One input message as read from Kafka: where it was, when it was written, its bytes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Rebuilt:
    states: dict[str, Any] = field(default_factory=dict)  # order id -> state
    # event id -> (topic, record) as the replay makes them: a dict, or a ComparedOutputs (the ids only)
    outputs: dict[str, tuple[str, dict[str, Any]]] | ComparedOutputs = field(default_factory=dict)
    applied: int = 0
    skipped: int = 0  # passed over: see MachineProcessor.skips
    duplicates: int = 0
    timer_ticks: int = 0
    dead_letters: list[tuple[Message, str]] = field(default_factory=list)  # what live would dead-letter, and why
    made_twice: list[str] = field(default_factory=list)  # ids of records made twice (a bug: readers keep one)


def write_order(messages: Iterable[Message]) -> list[Message]:
    """The order a live processor met them in (``ordering.write_order``): partitions merged by broker
    timestamp, ties by the catalog's rank, topic, partition and offset, each partition's records in offset order even
    where its timestamps go back (producer-set times on a topic created before the catalog asked
    for the broker's)."""
    partitions: dict[tuple[str, int], list[Message]] = {}
    for message in messages:
        partitions.setdefault((message.topic, message.partition), []).append(message)
    in_offset_order = (sorted(batch, key=lambda m: m.offset) for batch in partitions.values())
    return list(heapq.merge(*in_offset_order, key=_written))


# Makes, for a share of the orders (0 in one pass), what receives each record a replay would write.
Outputs = Callable[[int], "dict[str, tuple[str, dict[str, Any]]] | ComparedOutputs"]


def kept(share: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every record the replay would write, kept by event id."""
    return {}


def replay(processor: MachineProcessor, messages: Iterable[Message], clock: str = "wall",
           codec: Codec | None = None, keep: Callable[[str], bool] = lambda order_id: True,
           progress: Callable[[int], None] | None = None, outputs: Outputs = kept) -> Rebuilt:
    """Apply every message (in write order) to fresh state, as the live processor does.

    ``clock``: the live processor's ``ORDEROPS_CLOCK``. ``wall`` — the moment a message was
    processed is taken as the moment it was written; ``event`` — the latest event time seen.
    Timer ticks are the ones the live processor wrote to its timer topic, so expiries replay too.
    ``outputs`` makes what receives each record the replay would write, by event id: ``kept``, a
    dict, keeps them all; a ``ComparedOutputs`` compares each as it is made and keeps its id. Each
    record is encoded and each new state serialized as its table keeps it, as live: all the work
    a live processor does of its own (the benchmark's floor).
    """
    return _replay(processor, messages, clock, codec or Codec(), keep, progress, outputs(0))


R = TypeVar("R")
PARALLEL_FROM = 20_000  # messages
_SHARES: tuple[Any, ...] | None = None  # what forked workers read: set just before they start


def replay_in_shares(processor: MachineProcessor, messages: list[Message], summarize: Callable[[Rebuilt], R],
                     workers: int, clock: str = "wall", codec: Codec | None = None,
                     keep: Callable[[str], bool] = lambda order_id: True,
                     progress: Callable[[int], None] | None = None, parallel_from: int = PARALLEL_FROM,
                     outputs: Outputs = kept) -> list[R]:
    """``replay`` with the orders shared out among ``workers`` processes, each share's result
    summarized where it was built (what the caller wants of it: counts, differences from the
    processor's table): handing whole states and records back cost as much as the replay saved.

    Each order's state depends on its own messages only, in their write order, and a share keeps
    them in that order, so the shares' results are one pass's, split by order. With the event clock
    every order's event times count: one pass. So with few messages, where starting processes costs
    more than it saves, and with one worker (``shares_for``). ``outputs(share)`` is called in the
    share's process: what it reads of the parent's memory should be that share's (``share_of``)."""
    codec = codec or Codec()
    workers = shares_for(workers, clock, len(messages), parallel_from)
    if workers == 1:
        return [summarize(_replay(processor, messages, clock, codec, keep, progress, outputs(0)))]
    global _SHARES
    context = multiprocessing.get_context("fork")  # the workers inherit messages and closures unpickled
    shares: list[list[Message]] = [[] for _ in range(workers)]
    for message in messages:
        shares[share_of(message.key, workers)].append(message)
    done = context.Value("q", 0)
    _SHARES = (processor, shares, codec, keep, summarize, done, outputs)
    running = []
    try:
        for share in range(workers):
            receiving, sending = context.Pipe(duplex=False)
            worker = context.Process(target=_replay_share, args=(share, sending), name=f"rebuild-share-{share}",
                                     daemon=True)
            worker.start()
            sending.close()
            running.append((worker, receiving))
    finally:
        _SHARES = None
    told = [0]

    def tell() -> None:  # the messages the shares have replayed, when that changed
        if progress is not None and done.value != told[0]:
            told[0] = done.value
            progress(told[0])

    try:
        return [_result_of(share, worker, receiving, tell) for share, (worker, receiving) in enumerate(running)]
    finally:
        for worker, _ in running:
            if worker.is_alive():
                worker.kill()
            worker.join()


def shares_for(workers: int, clock: str, messages: int, parallel_from: int = PARALLEL_FROM) -> int:
    """How many processes ``replay_in_shares`` replays ``messages`` in."""
    return 1 if workers <= 1 or clock == "event" or messages < parallel_from else workers


def share_of(order_id: bytes | None, shares: int) -> int:
    """The share an order's messages and records go to (a message's key is its order id: catalog)."""
    return zlib.crc32(order_id or b"") % shares


def _result_of(share: int, worker: Any, receiving: Any, tell: Callable[[], None]) -> Any:
    """A share's summary, or why there is none: its process raised (its traceback) or died (a kill, memory)."""
    while not receiving.poll(1):  # the result, or the end of the pipe when the process ended without one
        tell()
    try:
        outcome, value = receiving.recv()
    except EOFError:
        worker.join()
        raise RuntimeError(f"rebuild: the process replaying share {share} ended (exit code {worker.exitcode}) "
                           "without a result; rerun with --workers 1 to replay in this process") from None
    if outcome == "failed":
        raise RuntimeError(f"rebuild: share {share} failed in its process:\n{value}")
    return value


def replay_workers() -> int:
    """Processes for an offline replay: ORDEROPS_REPLAY_WORKERS, default the CPUs this process may
    use (a processor is stopped while it is rebuilt: its machine is the rebuild's)."""
    configured = os.environ.get("ORDEROPS_REPLAY_WORKERS", "").strip()
    if not configured:
        return len(os.sched_getaffinity(0))
    if not configured.isdigit() or int(configured) < 1:
        raise ValueError(f"ORDEROPS_REPLAY_WORKERS={configured!r}: a number of processes, 1 or more (unset: one per CPU)")
    return int(configured)


def _replay_share(share: int, sending: Any) -> None:
    assert _SHARES is not None, "set by replay_in_shares before it forks"
    processor, shares, codec, keep, summarize, done, outputs = _SHARES

    def counted(n: int) -> None:
        if n:
            with done.get_lock():
                done.value += 10_000

    gc.disable()  # for good: the worker ends with its share, and a collection would walk all it built, for nothing
    try:
        sending.send(("summarized", summarize(_replay(processor, shares[share], "wall", codec, keep, counted, outputs(share)))))
    except BaseException:
        sending.send(("failed", traceback.format_exc()))
    finally:
        sending.close()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """A replay builds one large structure (every order's state and record) and leaves no reference
    cycles behind (tests/unit/test_replay_shares.py): the cyclic garbage collector, run by the count
    of objects allocated, only walked that growing heap again and again, a third of a fulfillment
    replay's time. It runs again when the replay is done, with what is alive then frozen
    (``gc.freeze``: left out of its later walks): re-enabled, it would otherwise walk all the
    replay built at the next allocation, a tenth of a fulfillment replay in one process. Freezing is
    for good: cyclic garbage that existed before would never be collected. The callers are commands
    that end (rebuild, what-if, the benchmark); a long-running server should not call a replay."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.freeze()
            gc.enable()


class ReplayClock:
    """The clock a replay gives ``MachineRecords``. ``wall``: the moment a message was processed is
    taken as the moment it was written; ``event``: the latest event time seen, of every order
    (as the live event clock sees every order of its partitions)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.latest = self.written = datetime.fromtimestamp(0, UTC)

    def observe(self, occurred_at: datetime) -> None:
        if occurred_at > self.latest:
            self.latest = occurred_at

    def now(self) -> datetime:
        return self.latest if self.mode == "event" else self.written


class ReplayContext:
    """What ``MachineRecords`` asks of its surroundings, offline: reading and encoding as live, no
    deadlines (the timer ticks the live processor wrote are replayed instead), dead letters kept
    with their reason."""

    def __init__(self, processor: MachineProcessor, codec: Codec, clock: ReplayClock, rebuilt: Rebuilt) -> None:
        self.name, self.codec, self.clock, self.rebuilt = processor.name, codec, clock, rebuilt
        self._inputs = frozenset(t.name for t in processor.inputs)

    def read(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             headers: Any) -> Envelope:
        envelope, _ = read_event(self.codec, key, value, catalog.topic(topic), headers, self._inputs)
        if catalog.topic(topic).moves_event_clock:  # as live (Service.read)
            self.clock.observe(envelope.occurred_at)
        return envelope

    def encode(self, topic: Topic, record: dict[str, Any]) -> bytes:
        return self.codec.encode(topic.value_schema or "", record)

    def schedule_in(self, batch: Any, key: str, due: datetime | None, partition: int) -> None:
        pass

    def dead_letter_in(self, batch: Any, record: Any, error: BaseException) -> None:
        reason = f"{error.reason}: {error}" if isinstance(error, DecodeError) else f"{type(error).__name__}: {error}"
        self.rebuilt.dead_letters.append((record, reason))


class OfflineBatch:
    """The ``Batch`` of a replay: the state ``MachineRecords`` keeps, in ``Rebuilt.states``; the
    records it sends, to ``Rebuilt.outputs`` by event id. One for the whole replay."""

    def __init__(self, rebuilt: Rebuilt, codec: Codec, keep_records: bool) -> None:
        self.rebuilt, self.codec, self.keep_records = rebuilt, codec, keep_records
        self.tally: Counter[str] = Counter()

    def load(self, table: Any, key: str, load: Callable[[Any], Any], partition: int) -> Any:
        return self.rebuilt.states.get(key)

    def put(self, table: Any, key: str, stored: bytes | None, loaded: Any, partition: int, **_: Any) -> None:
        self.rebuilt.states[key] = loaded

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any, cause: Any) -> None:
        outputs = self.rebuilt.outputs
        if isinstance(outputs, dict):  # keep_records: the records themselves, decoded again
            record = self.codec.decode(value, catalog.topic(topic).value_schema or "").record
            if record["event_id"] in outputs and record_type(record) not in ARRIVAL_ORDER_RECORDS:
                self.rebuilt.made_twice.append(record["event_id"])
            outputs[record["event_id"]] = (topic, record)
        elif value is not None:
            outputs.made(topic, value)

    def then(self, follow_up: Callable[[], None]) -> None:
        pass


class MachineTable(NamedTuple):
    name: str


@_collector_paused()
def _replay(processor: MachineProcessor, messages: Iterable[Message], clock: str, codec: Codec,
            keep: Callable[[str], bool], progress: Callable[[int], None] | None,
            outputs: dict[str, tuple[str, dict[str, Any]]] | ComparedOutputs) -> Rebuilt:
    """Every message through ``MachineRecords.apply``, the live path's own work on a record."""
    rebuilt, replay_clock = Rebuilt(outputs=outputs), ReplayClock(clock)
    context = ReplayContext(processor, codec, replay_clock, rebuilt)
    batch = OfflineBatch(rebuilt, codec, keep_records=not isinstance(outputs, ComparedOutputs))
    records = MachineRecords(context, processor, MachineTable(processor.table))
    timers = processor.timers.name
    for n, message in enumerate(write_order(messages)):
        if progress is not None and n % 10_000 == 0:
            progress(n)
        if not keep((message.key or b"").decode(errors="replace")):
            if clock == "event":  # the event clock sees every order's events, as live
                with contextlib.suppress(DecodeError):
                    context.read(message.topic, message.partition, message.offset, message.key, message.value,
                                 message.headers)
            continue
        replay_clock.written = datetime.fromtimestamp(message.timestamp_ms / 1000, UTC)
        became = records.apply(batch, message)
        if became == PASSED_OVER:
            rebuilt.skipped += 1
        elif became in (APPLIED, DUPLICATE) and message.topic == timers:
            rebuilt.timer_ticks += 1
        if became == APPLIED:
            rebuilt.applied += 1
        elif became == DUPLICATE:
            rebuilt.duplicates += 1
    return rebuilt


def _written(message: Message) -> tuple[int, int, str, int, int]:
    return message.timestamp_ms, catalog.write_rank(message.topic), message.topic, message.partition, message.offset


# -- comparing with what the processor produced ---------------------------------------------------

@dataclass(frozen=True)
class Difference:
    order_id: str
    what: str  # "state", "output missing", "output extra", "output differs"
    detail: str


def plain(value: Any) -> Any:
    """A value as JSON would carry it (what a changelog or a decoded record holds)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def canonical(state: dict[str, Any]) -> dict[str, Any]:
    """A stored state as far as a replay can know it: the history entries of one event time in a
    fixed order (events written within the same moment on different topics reach the processor in
    an order no log records; both orders lead to the same state — the domain's property tests prove
    that — but list the history differently), and parked events without their deadline and when
    their audit record is due (whether it was written yet is an arrival-order fact, as the record is)."""
    state = plain(state)
    for parked in state.get("parked") or ():
        # Counted from when the worker parked it, on its own clock: no log holds that moment.
        if isinstance(parked, dict):
            parked.pop("deadline", None)
            parked.pop("announce_at", None)
    if isinstance(state.get("history"), list):
        state["history"] = sorted(state["history"], key=lambda e: (json.dumps(e.get("at"), sort_keys=True),
                                                                   json.dumps(e, sort_keys=True)))
    return state


def compare_states(rebuilt: dict[str, Any], stored: dict[str, bytes], stored_as: Callable[[Any], bytes]) -> Iterator[Difference]:
    """Rebuilt state of each order against the processor's table (its changelog's latest bytes per
    order). The bytes the table would keep of the rebuilt state are compared first; only where they
    differ are both sides read and compared as ``canonical`` states (a million fulfillment messages
    leave 120,000 states: reading and canonicalizing each was a third of what the comparing rebuild
    spent beyond the replay)."""
    for order_id, state in sorted(rebuilt.items()):
        ours, theirs = stored_as(state), stored.get(order_id)
        if theirs is None:
            yield Difference(order_id, "state", "the processor's table has no state for this order")
        elif ours != theirs:
            mine, other = canonical(orjson.loads(ours)), canonical(orjson.loads(theirs))
            if mine != other:
                keys = sorted(str(k) for k in set(mine) | set(other) if mine.get(k) != other.get(k))
                yield Difference(order_id, "state", f"fields differ: {', '.join(keys)}")


# Records of the order in which events arrived, not of what they did: an event that came before its
# prerequisite (on another topic) is parked, then applied with the same derived records as if it
# had come in order. Arrival order between topics is not in any log, so a rebuild cannot reproduce
# these; it reports them apart and compares everything else.
ARRIVAL_ORDER_RECORDS = ("orderops.common.EventParked",)
# The timeline's digests are not compared: each record in one is compared on its public topic, and
# which cause's digest carries the records of a parked event (the cause that let it go, live; the
# event itself, in write order) is arrival order too.
DIGESTS_NOT_COMPARED = catalog.TIMELINE_DIGESTS


def comparable(output: tuple[str, dict[str, Any]]) -> Any:
    """A record as a replay can know it: a park's deadline counts from when the worker parked the
    event, on its own clock, so a rejection at that deadline is compared without its reason text
    (which names the deadline); its code, machine and cause are compared."""
    topic, record = plain(output)
    payload = record.get("payload")
    if isinstance(payload, list) and payload[0] == "orderops.common.EventRejected" \
            and payload[1].get("reason_code") == "park_deadline_passed":
        record = {**record, "payload": [payload[0], {**payload[1], "reason": ""}]}
    return topic, record


def differing_fields(ours: Any, theirs: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """Where two plain values differ: each differing leaf's path with both values (shortened), so
    an operator reading a rebuild report sees what differs, not only that something does."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            yield from differing_fields(ours.get(key), theirs.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        for n, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            yield from differing_fields(mine, other, f"{path}[{n}]")
    elif ours != theirs:
        yield path or "(value)", _short(ours), _short(theirs)


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record_type(record: dict[str, Any]) -> str:
    payload = record.get("payload")
    return payload[0] if isinstance(payload, list | tuple) else ""


class Produced(NamedTuple):
    """A record a processor wrote, as a rebuild keeps it to compare: its bytes, and what of its
    head the comparison needs (``Codec.head``), not the decoded record (millions of them); how
    many times it was written under its id, and the first later copy that said something else."""

    topic: str
    order_id: str
    type: str
    value: bytes
    copies: int = 1
    other: tuple[str, bytes] | None = None  # (topic, value) of a copy that differs from the first


class ComparedOutputs:
    """What a replay would write, compared with what the processor wrote (``produced``, by event id:
    derived ids are deterministic) as each record is made; it keeps the ids it was given and the
    differences, not the records. Kept, a million-message fulfillment replay's records were two of
    each process's three GB, and their page faults a fifth of its time. A record's bytes are
    compared with the topic's; only bytes that differ are decoded (both) and compared field by
    field, as far as a replay can know them (``comparable``).

    ``produced`` None: nothing to compare with (a dry run, the benchmark): counted only."""

    def __init__(self, produced: dict[str, Produced] | None, codec: Codec | None = None) -> None:
        self.produced, self.codec = produced, codec or Codec()
        self.made_ids: set[str] = set()
        self.count = 0  # records made, each time one is
        self.compared = 0  # records made and compared with the topic's
        self.parked_made = 0  # EventParked records made (not compared: see ARRIVAL_ORDER_RECORDS)
        self.found: list[tuple[str, Difference]] = []  # (event id, difference)

    def made(self, topic: str, ours: bytes) -> None:
        """A record the replay made (its bytes), compared with the processor's; with nothing to
        compare with, only counted (its head is not even read: the benchmark's floor is this)."""
        self.count += 1
        if self.produced is None:
            return
        head = self.codec.head(ours)
        event_id = head.event_id
        if topic == DIGESTS_NOT_COMPARED.name:
            self.made_ids.add(event_id)
            return
        if head.type in ARRIVAL_ORDER_RECORDS:
            self.made_ids.add(event_id)
            self.parked_made += 1
            return
        if event_id in self.made_ids:  # a cause is applied once: two records of it under one id are a bug
            self.found.append((event_id, Difference(head.order_id, "output made twice", (
                f"{event_id} on {topic}: the rebuild makes two records with this id (a reader that dedupes "
                "by id keeps one of them)"))))
            return
        self.made_ids.add(event_id)
        stored = self.produced.get(event_id)
        if stored is None or stored.type in ARRIVAL_ORDER_RECORDS:
            missing = f"{event_id} on {topic}: the rebuild produces it, the topic does not have it"
            self.found.append((event_id, Difference(head.order_id, "output missing", missing)))
            return
        self.compared += 1
        if ours == stored.value and topic == stored.topic:
            return
        fields = differing(self.codec, (topic, ours), (stored.topic, stored.value))
        if fields:
            self.found.append((event_id, Difference(head.order_id, "output differs", f"{event_id} on {topic} ({fields})")))

    def __len__(self) -> int:
        return self.count

    def differences(self, orders: set[str]) -> list[Difference]:
        """By event id: the records found missing or different as they were made; the processor's
        records for ``orders`` (the rebuilt ones) the replay did not make (arrival-order records left
        out); and those it wrote twice under one id saying different things (a reader that dedupes by
        id keeps whichever it met first)."""
        found = list(self.found)
        for event_id, stored in (self.produced or {}).items():
            if stored.order_id not in orders or stored.type in ARRIVAL_ORDER_RECORDS:
                continue
            if event_id not in self.made_ids:
                extra = f"{event_id} on {stored.topic}: in the topic, the rebuild does not produce it"
                found.append((event_id, Difference(stored.order_id, "output extra", extra)))
            if stored.other is not None:
                fields = differing(self.codec, stored.other, (stored.topic, stored.value), ("later copy", "first"))
                found.append((event_id, Difference(stored.order_id, "output written twice, differently",
                                                   f"{event_id} on {stored.topic} ({fields})")))
        return [difference for _, difference in sorted(found, key=lambda each: each[0])]

    def written(self, orders: set[str]) -> tuple[int, int]:
        """Of the processor's records for ``orders``: the copies written again byte for byte (at least
        once: a worker that crashed after sending and before committing sends the same again,
        and readers drop it by id), and the EventParked records, which are not compared."""
        again = parked = 0
        for stored in (self.produced or {}).values():
            if stored.order_id in orders:
                again += stored.copies - 1
                parked += stored.type in ARRIVAL_ORDER_RECORDS
        return again, parked


def differing(codec: Codec, ours: tuple[str, bytes], theirs: tuple[str, bytes],
              names: tuple[str, str] = ("rebuild", "topic")) -> str:
    """The fields in which two encoded records (topic, value) differ, as far as a replay can know
    them (``comparable``), each with both values named by ``names``; empty when they do not."""
    mine = comparable((ours[0], codec.decode(ours[1], catalog.topic(ours[0]).value_schema or "").record))
    other = comparable((theirs[0], codec.decode(theirs[1], catalog.topic(theirs[0]).value_schema or "").record))
    if mine == other:
        return ""
    return "; ".join(f"{path}: {names[0]} {a} / {names[1]} {b}" for path, a, b in differing_fields(
        {"topic": mine[0], **mine[1]}, {"topic": other[0], **other[1]}))


def produced_by_share(records: Iterable[tuple[str, bytes]], codec: Codec, source: str,
                      shares: int) -> list[dict[str, Produced]]:
    """What ``source`` wrote, from (topic, value) pairs, by event id, split as ``replay_in_shares``
    splits the orders (a share's process then reads only its own). Bytes that are no envelope are
    passed over: no processor wrote them."""
    split: list[dict[str, Produced]] = [{} for _ in range(shares)]
    for topic, value in records:
        try:
            head = codec.head(value)
        except DecodeError:
            continue
        if head.source != source or topic == DIGESTS_NOT_COMPARED.name:
            continue
        share = split[share_of(head.order_id.encode(), shares)]
        first = share.get(head.event_id)
        if first is None:
            share[head.event_id] = Produced(topic, head.order_id, head.type, value)
        elif (topic, value) == (first.topic, first.value) or first.other is not None \
                or head.type in ARRIVAL_ORDER_RECORDS or not differing(codec, (topic, value), (first.topic, first.value)):
            share[head.event_id] = first._replace(copies=first.copies + 1)
        else:
            share[head.event_id] = first._replace(copies=first.copies + 1, other=(topic, value))
    return split
