"""What every state-machine processor shares, pure (no Kafka): machines as tables, applying an
event once, parking what arrived early, rejecting with an audit record, deadlines, and the
audit records with ids derived from their cause.

A processor's state is an immutable dataclass with (at least) ``seen: frozenset[str]``,
``parked: tuple[Parked, ...]`` and ``history: tuple[HistoryEntry, ...]``. Its handlers get a
``Step`` and raise ``Park`` or ``Reject`` when the event cannot be applied now or ever.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from orderops.model import contract
from orderops.model.envelope import Envelope, StoredAsJson, as_record, from_json

V = TypeVar("V")


def known(value: V | None, what: str) -> V:
    """``value``, which the handler's own checks made sure the state holds: a ``LookupError``
    naming ``what`` if it does not (a defect, dead-lettered like any handler's error)."""
    if value is None:
        raise LookupError(f"{what} is not in the order's state")
    return value


def evolve(value: V, **changes: Any) -> V:
    """``dataclasses.replace`` for the frozen values states are made of, a fifth of its cost: a state
    changes several times per event, and ``replace`` (which calls ``__init__`` anew) was a tenth of
    a fulfillment replay. A class it cannot copy that way (``__post_init__``, slots,
    non-init fields, cached properties) and a name that is not a field go through ``replace``."""
    names = _copyable_fields(type(value))  # type: ignore[arg-type]  # a class is hashable
    if names is None or not changes.keys() <= names:
        return replace(value, **changes)  # type: ignore[type-var]  # a dataclass: _copyable_fields said
    copied = object.__new__(type(value))
    attributes = copied.__dict__
    attributes.update(value.__dict__)
    attributes.update(changes)
    return copied


@functools.cache
def _copyable_fields(cls: Any) -> frozenset[str] | None:
    if not is_dataclass(cls) or hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        return None
    classes = cls.__mro__  # type: ignore[union-attr]  # a class: is_dataclass said
    if any(isinstance(attr, functools.cached_property) for klass in classes for attr in vars(klass).values()):
        return None
    found = fields(cls)
    if any(not f.init for f in found):
        return None
    return frozenset(f.name for f in found)


ANY = "*"
CONTRACT = "event"  # the "machine" of a rejection by orderops.model.contract: the event itself is meaningless
COMMON = "orderops.common."


@dataclass(frozen=True)
class Machine:
    """A state machine as one table. Rows are transitions; a target in parentheses is a marker the
    processor resolves (e.g. "(by amounts)"). Park rules say what an early trigger may wait for;
    everything else that has no row is rejected."""

    name: str
    initial: str
    terminal: frozenset[str]
    reversible: dict[str, str]  # state -> what reverses it
    rows: tuple[tuple[str, str, str], ...]  # (state, trigger, next state)
    parks: tuple[tuple[str, str, str], ...]  # (state or ANY, trigger or ANY, what it waits for)
    transitions: dict[tuple[str, str], str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transitions", {(s, t): n for s, t, n in self.rows})

    @property
    def states(self) -> list[str]:
        seen: dict[str, None] = {self.initial: None}
        for state, _, target in self.rows:
            seen.setdefault(state)
            if not target.startswith("("):
                seen.setdefault(target)
        return list(seen)

    @property
    def triggers(self) -> list[str]:
        return list(dict.fromkeys(t for _, t, _ in self.rows))

    def next(self, state: str, trigger: str) -> str | None:
        return self.transitions.get((state, trigger))

    def waits_for(self, state: str, trigger: str) -> str | None:
        """What a trigger that is not valid now waits for, or None when it can never be valid
        (or when it is valid now: a row of the table always wins over a park rule)."""
        if state in self.terminal or (state, trigger) in self.transitions:
            return None
        for park_state, park_trigger, waiting_for in self.parks:
            if park_state in (state, ANY) and park_trigger in (trigger, ANY):
                return waiting_for
        return None

    def require(self, state: str, trigger: str, entity_id: str, advice: str = "") -> str:
        """The next state, or raise Park/Reject as the table says."""
        target = self.next(state, trigger)
        if target is not None:
            return target
        waiting_for = self.waits_for(state, trigger)
        if waiting_for:
            raise Park(self.name, entity_id, state, waiting_for)
        raise Reject(self.name, entity_id, state, "invalid_transition",
                     f"{self.name} is {state}: {trigger.replace('_', ' ')} is not possible{advice}")

    def as_markdown(self) -> str:
        """The table as the service docs (docs/services/) show it (tests keep the two identical)."""
        rows = [f"| {s} | {t} | {n} |" for s, t, n in self.rows]
        parks = [f"| {s} | {t} | {w} |" for s, t, w in self.parks]
        reversible = "; ".join(f"{s} ({how})" for s, how in self.reversible.items()) or "none"
        return "\n".join([
            f"**{self.name}** — initial `{self.initial}`; terminal: {', '.join(sorted(self.terminal)) or 'none'}; "
            f"reversible: {reversible}",
            "", "| state | trigger | next state |", "|---|---|---|", *rows,
            "", "| state | trigger | parked until |", "|---|---|---|", *parks,
        ])


# -- what outcomes say ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Parked(StoredAsJson):
    """An event that waits. Its ``EventParked`` audit record is written only once it really waits
    (``announce``): when the order's next input leaves it waiting, or ``ANNOUNCE_AFTER`` after it
    parked (a timer tick). Written together, an authorization is often appended a millisecond
    before its order; recorded at once, every such pair left a false "waits for the order"."""

    event: Envelope
    topic: str
    machine: str
    entity_id: str
    waiting_for: str
    deadline: datetime
    current_state: str = ""  # the machine's state when the event parked, as its audit record says
    announce_at: datetime | None = None  # when its audit record is due; None: written

    def json_value(self) -> dict[str, Any]:
        return {**vars(self), "event": self.event.json_value()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Parked:
        return cls(**{**from_json(data), "event": Envelope.from_json(data["event"])})


@dataclass(frozen=True)
class HistoryEntry:
    machine: str
    entity_id: str
    from_state: str
    to_state: str
    cause_event_id: str
    cause_type: str
    at: datetime
    reason: str


@dataclass(frozen=True)
class Transitioned:
    machine: str
    entity_id: str
    from_state: str
    to_state: str
    reason: str
    detail: Any = None  # processor-specific facts published with the transition


@dataclass(frozen=True)
class ParkedRecord:
    parked: Parked
    current_state: str


@dataclass(frozen=True)
class Rejected:
    machine: str
    entity_id: str
    current_state: str
    reason_code: str
    reason: str


@dataclass(frozen=True)
class Record:
    """One output and the event that caused it (for ids, audit and the timeline's links)."""

    cause: Envelope
    cause_topic: str
    what: Any


S = TypeVar("S")


@dataclass(frozen=True)
class Outcome:
    state: Any
    records: tuple[Record, ...] = ()
    duplicate: bool = False
    waiting: Parked | None = None  # the event itself parked

    def of(self, kind: type) -> list[Any]:
        return [r.what for r in self.records if isinstance(r.what, kind)]


class Park(Exception):
    def __init__(self, machine: str, entity_id: str, current: str, waiting_for: str) -> None:
        super().__init__(waiting_for)
        self.machine, self.entity_id, self.current, self.waiting_for = machine, entity_id, current, waiting_for


class Reject(Exception):
    def __init__(self, machine: str, entity_id: str, current: str, code: str, reason: str) -> None:
        super().__init__(reason)
        self.rejected = Rejected(machine, entity_id, current, code, reason)


# -- applying one event ---------------------------------------------------------------------------

class Step:
    """What one event does: the state as it changes, and the records it produces."""

    def __init__(self, state: Any, event: Envelope, topic: str, context: Any = None) -> None:
        self.state, self.event, self.topic = state, event, topic
        self.context = context  # what handlers may read besides the state (e.g. published policies)
        self.records: list[Record] = []

    def emit(self, what: Any) -> None:
        self.records.append(Record(self.event, self.topic, what))

    def finished(self, before: Any) -> None:
        """Called after the event was applied (parked events too, when they finally apply):
        a processor may add what it derives from the change, per event, e.g. a status snapshot."""

    def move(self, machine: str, entity_id: str, from_state: str, to_state: str, reason: str,
             detail: Any = None, always: bool = False) -> None:
        """Record a transition (and its history entry); a non-move is recorded only if ``always``."""
        if from_state == to_state and not always:
            return
        self.emit(Transitioned(machine, entity_id, from_state, to_state, reason, detail))
        entry = HistoryEntry(machine, entity_id, from_state, to_state, self.event.event_id, self.event.type,
                             self.event.occurred_at, reason)
        self.state = evolve(self.state, history=(*self.state.history, entry))


Handler = Callable[[Any], None]  # called with a step of the step_class given (a subclass of Step)


def apply(state: Any, event: Envelope, topic: str, now: datetime, park_for: timedelta,
          handlers: Mapping[str, Handler], step_class: type[Step] = Step, context: Any = None) -> Outcome:
    """Apply one event once: duplicates change nothing; an upstream event that is meaningless in any
    state (``orderops.model.contract``) is rejected before any handler sees it; early events park
    (deadline = ``now`` + ``park_for``); impossible ones are rejected; after a change, parked events
    are retried."""
    if event.event_id in state.seen:
        return Outcome(state, duplicate=True)
    state = evolve(state, seen=state.seen | {event.event_id})
    if contract.checks_topic(topic):
        meaningless = contract.violation(event, state.history[0].at if state.history else now)
        if meaningless is not None:
            step = step_class(state, event, topic, context)
            step.emit(Rejected(CONTRACT, event.event_id, "received", *meaningless))
            return Outcome(step.state, tuple(step.records))
    outcome = _apply_once(state, event, topic, now, park_for, handlers, step_class, context)
    # A derived record parked for this event as its cause may go on now, even if this event changed
    # nothing here (found: returns has nothing to do for an OrderCancelled, so fulfillment's snapshot
    # of the cancellation, read first after a restart, stayed parked for a day).
    awaited = bool(state.parked) and any(p.machine == CAUSE and p.entity_id == event.event_id for p in state.parked)
    if awaited or _moved(state, outcome):
        outcome = _drain_parked(outcome, now, park_for, handlers, step_class, context)
    return announce(outcome, lambda parked: parked.event.event_id != event.event_id)


ANNOUNCE_AFTER = timedelta(seconds=1)


def announce(outcome: Outcome, due: Callable[[Parked], bool]) -> Outcome:
    """Write the audit record of every parked event not yet recorded that ``due`` says really waits.
    The record is the one its park would have written then (its cause, its id, the state it
    parked in), whenever it is written: live and replay write the same bytes."""
    state = outcome.state
    pending = [p for p in state.parked if p.announce_at is not None and due(p)]
    if not pending:
        return outcome
    records, written = list(outcome.records), {}
    for parked in pending:
        written[id(parked)] = evolve(parked, announce_at=None)
        records.append(Record(parked.event, parked.topic, ParkedRecord(written[id(parked)], parked.current_state)))
    state = evolve(state, parked=tuple(written.get(id(p), p) for p in state.parked))
    return Outcome(state, tuple(records), outcome.duplicate, outcome.waiting)


def _moved(state: Any, outcome: Outcome) -> bool:
    """Whether an event changed what a parked event's handler sees. One that was rejected, parked
    itself, or had no handler did not: every parked event was last tried against this very state (a
    drain ends only when none of them can go on; a change of context, such as a published policy,
    is retried on timer ticks by ``retry_parked``), and handlers do not read ``parked``. Retrying
    them all anyway made a backlog quadratic: an order's warehouse events, read before its
    ``OrderPlaced``, were each tried again at every later one (three futile tries per
    fulfillment message)."""
    return outcome.state is not state and outcome.waiting is None


CAUSE_HEADER = "orderops-cause-topic"
CAUSE = "cause"  # the "machine" of a park for a record's cause (its entity: the cause's event id)


def cause_pending(state: Any, event: Envelope) -> None:
    """A record derived from an event on a topic this processor also reads waits for that event.

    Written after its cause, it can still be read before it (another topic, a lagging partition
    after a restart): order-state once took a cancellation from fulfillment's snapshot of it, and
    rejected the storefront's own OrderCancelled that came next — the opposite of what any replay
    does. ``event.cause_topic`` is set by the reader only when the cause's topic is one of its inputs."""
    if event.cause_topic and event.cause_id and event.cause_id not in state.seen:
        raise Park(CAUSE, event.cause_id, "unseen", f"its cause {event.cause_id} on {event.cause_topic}")


def retry_parked(state: Any, now: datetime, park_for: timedelta, handlers: Mapping[str, Handler],
                 step_class: type[Step] = Step, context: Any = None) -> Outcome:
    """Try parked events again although no event changed the state (the context did: e.g. a policy
    was published). Run on timer ticks before deadlines are enforced."""
    return _drain_parked(Outcome(state), now, park_for, handlers, step_class, context)


def _apply_once(state: Any, event: Envelope, topic: str, now: datetime, park_for: timedelta,
                handlers: Mapping[str, Handler], step_class: type[Step], context: Any) -> Outcome:
    handler = handlers.get(event.short_type)
    if handler is None:
        return Outcome(state)  # a fact for other processors: nothing to do here
    step = step_class(state, event, topic, context)
    try:
        cause_pending(state, event)
        handler(step)
        step.finished(state)
    except Park as park:
        parked = Parked(event, topic, park.machine, park.entity_id, park.waiting_for, now + park_for, park.current,
                        now + ANNOUNCE_AFTER)
        return Outcome(evolve(state, parked=(*state.parked, parked)), waiting=parked)
    except Reject as reject:
        step = step_class(state, event, topic, context)
        step.emit(reject.rejected)
    return Outcome(step.state, tuple(step.records))


def _drain_parked(outcome: Outcome, now: datetime, park_for: timedelta, handlers: Mapping[str, Handler],
                  step_class: type[Step], context: Any = None) -> Outcome:
    """Re-apply parked events, in arrival order, while any of them can now be applied."""
    state, records = outcome.state, list(outcome.records)
    progressed = True
    while progressed and state.parked:
        progressed = False
        for parked in state.parked:
            remaining = evolve(state, parked=tuple(p for p in state.parked if p is not parked))
            retry = _apply_once(remaining, parked.event, parked.topic, now, park_for, handlers, step_class, context)
            if retry.waiting is None:
                state, progressed = retry.state, True
                records.extend(retry.records)
                break
            # Still early, maybe for another reason now: say what (and whose state) it waits for
            # today, and keep its original deadline and whether its audit record was written.
            updated = evolve(retry.waiting, deadline=parked.deadline, announce_at=parked.announce_at)
            if updated != parked:
                state = evolve(state, parked=tuple(updated if p is parked else p for p in state.parked))
    return Outcome(state, tuple(records))


def expire_parked(state: Any, now: datetime, current_state: Callable[[Any, str, str], str]) -> Outcome:
    """On a timer tick: record what has waited ``ANNOUNCE_AFTER`` (``announce``); reject every
    parked event whose deadline has passed, with an audit record."""
    announced = announce(Outcome(state), lambda p: p.announce_at is not None and p.announce_at <= now < p.deadline)
    state, records, keep = announced.state, list(announced.records), []
    for parked in state.parked:
        if parked.deadline <= now:
            records.append(Record(parked.event, parked.topic, Rejected(
                parked.machine, parked.entity_id, current_state(state, parked.machine, parked.entity_id),
                "park_deadline_passed",
                f"waited until {parked.deadline.isoformat()} for {parked.waiting_for}; it never came")))
        else:
            keep.append(parked)
    return Outcome(evolve(state, parked=tuple(keep)), tuple(records))


def describe_history_and_parked(state: Any) -> dict[str, Any]:
    """History and parked events as the processors' HTTP views show them."""
    return {
        "parked": [{"event_id": p.event.event_id, "type": p.event.short_type, "topic": p.topic, "machine": p.machine,
                    "entity_id": p.entity_id, "waiting_for": p.waiting_for, "deadline": p.deadline.isoformat()}
                   for p in state.parked],
        "history": [{"machine": h.machine, "entity_id": h.entity_id, "from": h.from_state, "to": h.to_state,
                     "cause_event_id": h.cause_event_id, "at": h.at.isoformat(), "reason": h.reason}
                    for h in state.history],
    }


def earliest_park_deadline(state: Any) -> datetime | None:
    """The next moment a parked event needs a timer tick: its audit record due, or its deadline."""
    return min((p.announce_at or p.deadline for p in state.parked), default=None)


# -- audit records of the contract ----------------------------------------------------------------

def with_ids(outcome: Outcome, source: str) -> Iterator[tuple[Record, str]]:
    """Each record with its id, derived from its cause and its writer: ``<cause id>:<source>:<kind>:<n>``.

    Deterministic, so reprocessing a cause yields the same ids. The writer is part of it because
    several processors react to the same upstream event: without it, order-state's and returns'
    transitions for one refund result had the same id, and the timeline (which dedupes by event
    id across all its inputs) dropped one of them as a duplicate."""
    counts: dict[str, int] = {}
    for record in outcome.records:
        prefix = f"{record.cause.event_id}:{source}:{_kind(type(record.what))}"  # type: ignore[arg-type]
        n = counts.get(prefix, 0)
        counts[prefix] = n + 1
        yield record, f"{prefix}:{n}"


@functools.cache
def _kind(what: Any) -> str:
    return str(what.__name__).lower()


def transition_payload(record: Record) -> dict[str, Any]:
    what, cause = record.what, record.cause
    return {"machine": what.machine, "entity_id": what.entity_id, "from_state": what.from_state,
            "to_state": what.to_state, "cause_event_id": cause.event_id, "cause_type": cause.type,
            "reason": what.reason}


def audit(record: Record) -> tuple[str, dict[str, Any]] | None:
    """The contract record for a park or rejection (``None`` for anything else)."""
    what, cause = record.what, record.cause
    common = {"cause_event_id": cause.event_id, "cause_type": cause.type, "cause_topic": record.cause_topic}
    if isinstance(what, ParkedRecord):
        p = what.parked
        return COMMON + "EventParked", {**common, "machine": p.machine, "entity_id": p.entity_id,
                                        "current_state": what.current_state, "waiting_for": p.waiting_for,
                                        "deadline": p.deadline}
    if isinstance(what, Rejected):
        return COMMON + "EventRejected", {**common, "machine": what.machine, "entity_id": what.entity_id,
                                          "current_state": what.current_state, "reason_code": what.reason_code,
                                          "reason": what.reason}
    return None


def envelope(record: Record, event_id: str, source: str, type_name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An output record: the cause's order and event time, its own derived id."""
    return as_record(event_id, record.cause.order_id, record.cause.occurred_at, source, type_name, payload)


@dataclass(frozen=True)
class CustomerNotice:
    """A message to the customer an order-level machine asks for (order-state, returns): its type,
    the facts its template reads, and the amounts it names (instrument, channel, amount, currency)."""

    type: str
    facts: dict[str, str]
    amounts: tuple[tuple[str, str, Decimal, str], ...] = ()


def notification_request(record: Record, notice: CustomerNotice, customer: dict[str, Any], order_id: str,
                         source: str) -> dict[str, Any]:
    """The ``NotificationRequested`` record of ``notice``, derived from ``record``'s cause (its id:
    ``<cause id>:notify:<type>``, so a cause read again asks for the same message)."""
    notification_id = f"{record.cause.event_id}:notify:{notice.type}"
    payload = {
        "notification_id": notification_id, "type": notice.type, "customer": customer,
        "cause_event_id": record.cause.event_id, "lines": [],
        "amounts": [{"instrument_id": i, "channel": channel, "amount": {"amount": amount, "currency": currency}}
                    for i, channel, amount, currency in notice.amounts],
        "shipment_id": None, "tracking_url": None, "facts": {"order_id": order_id, **notice.facts},
    }
    return envelope(record, notification_id, source, "orderops.notifications.NotificationRequested", payload)
