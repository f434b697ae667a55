"""The delivery ledger of one order and the machine every delivery follows (pure: no I/O).

A request becomes one delivery per enabled channel. The ledger lives in a table keyed by order and
is made durable *before* the far end is contacted, so that a crash between "sending" and "sent" is
found again: such a delivery is re-sent with the same idempotency key and recorded as in doubt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from orderops.model.envelope import from_json, to_json, to_json_bytes
from orderops.model.workflow import Machine

DELIVERY = Machine(
    name="delivery",
    initial="received",
    terminal=frozenset({"sent", "failed", "suppressed"}),
    reversible={"retrying": "the next attempt"},
    rows=(
        # state         trigger           next state
        ("received",    "suppress",       "suppressed"),
        ("received",    "hold",           "held"),        # coalescing: wait for more of the same kind
        ("received",    "attempt",        "attempting"),
        ("held",        "merge",          "held"),
        ("held",        "attempt",        "attempting"),
        ("attempting",  "accepted",       "sent"),
        ("attempting",  "failed",         "retrying"),
        ("attempting",  "gave_up",        "failed"),      # last attempt failed, or it can never work
        ("attempting",  "deferred",       "retrying"),    # circuit open: not attempted, not counted (a doubt is kept)
        ("attempting",  "attempt",        "attempting"),  # found mid-attempt after a crash: in doubt
        ("retrying",    "attempt",        "attempting"),
    ),
    parks=(),
)


# A request's deliveries are attempted one after the other, the ledger written before each: after a
# crash, one may be mid-attempt and the next not attempted at all. Both are attempted again.
UNFINISHED = ("received", "attempting")


@dataclass(frozen=True)
class Delivery:
    delivery_id: str  # <first notification id>/<channel>: the idempotency key receivers see
    channel: str
    type: str
    requests: tuple[dict[str, Any], ...]  # the requests (JSON form of the payload + origin), merged when coalesced
    status: str = DELIVERY.initial
    attempts: int = 0
    in_doubt: int = 0
    # The last attempt's outcome is unknown (no answer after the message left, or found mid-attempt
    # and then deferred by an open circuit): the next attempt is announced IN_DOUBT.
    doubtful: bool = False
    due_at: datetime | None = None  # end of the coalescing window, or the next retry
    last_error: str = ""
    # Until then (wall clock) a request of an earlier cause may still come from another processor:
    # the request's Kafka timestamp plus the settle window. None: nothing to wait for.
    settles_at: datetime | None = None

    @property
    def notification_ids(self) -> tuple[str, ...]:
        return tuple(r["notification_id"] for r in self.requests)


@dataclass(frozen=True)
class Ledger:
    order_id: str
    deliveries: tuple[Delivery, ...] = ()

    def holding(self, notification_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if notification_id in d.notification_ids]

    def delivery(self, delivery_id: str) -> Delivery:
        return next(d for d in self.deliveries if d.delivery_id == delivery_id)

    def put(self, updated: Delivery) -> Ledger:
        others = tuple(d for d in self.deliveries if d.delivery_id != updated.delivery_id)
        return replace(self, deliveries=(*others, updated))

    def due(self, now: datetime, wall: datetime | None = None) -> list[Delivery]:
        """Deliveries to attempt now, in the order their causes happened: windows closed, retries
        due, and any found mid-attempt or not yet attempted (a crash between a request's first and
        second delivery leaves one received).

        Several processors ask for an order's messages, each when it gets to its event, so the
        requests reach the notifier in the order the processors got to them, not the order things
        happened. A delivery not yet begun waits while its window is open (``settles_at`` on the
        ``wall`` clock, or coalescing), and any message waits while one of an earlier cause on its
        channel waits: "confirmed" goes before "backordered" whichever request came first."""
        wall = now if wall is None else wall
        waiting = [d for d in self.deliveries if _window_open(d, now, wall)]
        ready = [d for d in self.deliveries if d.status in UNFINISHED or
                 (d.status in ("held", "retrying") and d.due_at is not None and d.due_at <= now)]
        ready = [d for d in ready if d.status == "attempting" or not any(
            w.channel == d.channel and caused_at(w) <= caused_at(d) for w in waiting)]
        return sorted(ready, key=caused_at)

    def next_deadline(self) -> datetime | None:
        """The next retry or coalescing window's end (on the processor's clock)."""
        pending = [d.due_at for d in self.deliveries if d.status in ("held", "retrying") and d.due_at]
        return min(pending, default=None)

    def settling_until(self) -> datetime | None:
        """When the first settle window of a delivery not yet begun closes (wall clock), if one is open."""
        settling = [d.settles_at for d in self.deliveries if d.status in ("received", "held") and d.settles_at]
        return min(settling, default=None)

    def to_json(self) -> dict[str, Any]:
        return dict(to_json(self._fields()))

    def to_json_bytes(self) -> bytes:
        """The JSON text of ``to_json()``, as the ledger table stores it (one orjson pass)."""
        return to_json_bytes(self._fields())

    def _fields(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "deliveries": [vars(d) for d in self.deliveries]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        return cls(data["order_id"], tuple(_delivery(from_json(d)) for d in data["deliveries"]))


def _window_open(delivery: Delivery, now: datetime, wall: datetime) -> bool:
    """Not begun, and waiting for requests of earlier causes (settling) or more of its kind (coalescing)."""
    if delivery.status not in ("received", "held"):
        return False
    settling = delivery.settles_at is not None and delivery.settles_at > wall
    return settling or (delivery.status == "held" and delivery.due_at is not None and delivery.due_at > now)


def caused_at(delivery: Delivery) -> tuple[datetime, int]:
    """When the earliest cause of a delivery's requests happened (its request's event time), and
    the request's offset to break a tie (an order's requests share one partition)."""
    return min((r["event"]["occurred_at"], r["origin"][2]) for r in delivery.requests)


def _delivery(fields: dict[str, Any]) -> Delivery:
    return Delivery(**{**fields, "requests": tuple(fields["requests"])})


def move(delivery: Delivery, trigger: str, **changes: Any) -> Delivery:
    return replace(delivery, status=DELIVERY.require(delivery.status, trigger, delivery.delivery_id), **changes)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10  # with the default backoff, retries span 7 to 14 minutes: an outage delays, not loses
    base: timedelta = timedelta(seconds=2)
    cap: timedelta = timedelta(minutes=5)

    def next_attempt(self, delivery: Delivery, now: datetime) -> datetime:
        """Exponential backoff with equal jitter (half the delay fixed, half drawn at random: never
        a retry at once), seeded by the delivery so a replay waits alike."""
        ceiling = min(self.cap, self.base * (2 ** max(delivery.attempts - 1, 0)))
        jitter = random.Random(f"{delivery.delivery_id}:{delivery.attempts}").uniform(0.5, 1.0)
        moment: datetime = now + ceiling * jitter
        return moment


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    zone: str

    def covers(self, moment: datetime) -> bool:
        local = moment.astimezone(ZoneInfo(self.zone)).time()
        return self.start <= local < self.end if self.start < self.end else (local >= self.start or local < self.end)


@dataclass(frozen=True)
class Preference:
    opted_out: frozenset[str] = frozenset()
    quiet_hours: QuietHours | None = None


@dataclass(frozen=True)
class Preferences:
    """Customers' channel opt-outs and quiet hours (from ``ORDEROPS_NOTIFIER_PREFERENCES``)."""

    customers: dict[str, Preference] = field(default_factory=dict)

    def suppression(self, customer_id: str, channel: str, at: datetime) -> str | None:
        """Why this message must not be sent on this channel, or None."""
        preference = self.customers.get(customer_id)
        if preference is None:
            return None
        if channel in preference.opted_out:
            return f"customer opted out of {channel}"
        if preference.quiet_hours and preference.quiet_hours.covers(at):
            q = preference.quiet_hours
            return f"customer's quiet hours ({q.start:%H:%M}-{q.end:%H:%M} {q.zone})"
        return None

    @classmethod
    def from_document(cls, document: dict[str, Any] | None) -> Preferences:
        customers = {}
        for customer_id, spec in ((document or {}).get("customers") or {}).items():
            quiet = spec.get("quiet_hours")
            customers[str(customer_id)] = Preference(
                frozenset(spec.get("opt_out", [])),
                QuietHours(time.fromisoformat(quiet["start"]), time.fromisoformat(quiet["end"]),
                           quiet.get("timezone", "UTC")) if quiet else None)
        return cls(customers)
