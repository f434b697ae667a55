"""The topic catalog: every topic orderops reads or writes, declared once.

Services, tests and admin tools take topic names, schemas and partitioning from here; a topic
name written as a literal anywhere else is a bug (a contract test looks for them). The security
work generates ACLs from ``writers``/``readers``, so these declarations must be true.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

# Processors: the services of this repository. Each consumes as its own group and owns one DLQ.
ORDER_STATE = "order-state"
FULFILLMENT = "fulfillment"
RETURNS = "returns"
NOTIFIER = "notifier"
TIMELINE = "timeline"
PROCESSORS = (ORDER_STATE, FULFILLMENT, RETURNS, NOTIFIER, TIMELINE)
# The processors whose derived records name their cause's topic (Service.settle; orderops.model.workflow.cause_pending).
STATE_MACHINES = (ORDER_STATE, FULFILLMENT, RETURNS)
# Default web port of each processor (/healthz, /metrics, its HTTP API); WEB_PORT overrides.
WEB_PORTS = {ORDER_STATE: 6101, FULFILLMENT: 6102, RETURNS: 6103, NOTIFIER: 6104, TIMELINE: 6105}
INGEST_PORT = 6107  # `orderops ingest`: upstream events over HTTP

# Upstream systems (the simulator stands in for them in `make run` and tests).
STOREFRONT = "storefront"
WAREHOUSE = "warehouse"
PAYMENT_PROVIDER = "payment-provider"
SUPPORT_DESK = "support-desk"
POLICY_ADMIN = "policy-admin"
ON_CALL = "on-call"  # the engineers' tools (orderops replay): not a processor, not a shop system
UPSTREAM_SYSTEMS = (STOREFRONT, WAREHOUSE, PAYMENT_PROVIDER, SUPPORT_DESK, POLICY_ADMIN, ON_CALL)

DAY_MS = 24 * 3600 * 1000
NAME_PATTERN = re.compile(r"^[a-z]+(-[a-z]+)*(\.[a-z]+(-[a-z]+)*)+$")


def order_partitions() -> int:
    """Partition count shared by every order-scoped topic (``ORDEROPS_PARTITIONS``, default 8).

    Co-partitioning by order id is what lets each processor join an order's events locally,
    so the count must be the same on all of them, and changing it means re-keying everything.
    """
    return int(os.environ.get("ORDEROPS_PARTITIONS", "8"))


@dataclass(frozen=True)
class Topic:
    name: str
    value_schema: str | None  # full name of the record every message holds; None: raw bytes
    key: str  # what the message key is
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    description: str
    order_scoped: bool = True
    compacted: bool = False
    retention_ms: int = 30 * DAY_MS
    partitions_override: int | None = field(default=None, compare=False)
    # Records of what people did (agents' actions), stamped by their writer from the clock it runs
    # by: in event-time mode they never move a reader's event clock (see orderops.model.clock).
    moves_event_clock: bool = True

    @property
    def partitions(self) -> int:
        return self.partitions_override or order_partitions()

    @property
    def merged_by_time(self) -> bool:
        """An order's log on one topic, which processors merge with its other topics by broker
        timestamp (``ordering``), and replays merge the same way (``rebuild``)."""
        return self.order_scoped and not self.compacted

    @property
    def config(self) -> dict[str, str]:
        if self.compacted:
            return {"cleanup.policy": "compact", "retention.ms": "-1", "min.compaction.lag.ms": "0"}
        config = {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}
        if self.merged_by_time:
            # The broker stamps each record as it appends it. A producer-set time is when a client
            # called send: two producers writing to one partition (the storefront and a retrying
            # one, say) append records out of that order, and a record held back in a producer
            # during an outage is appended minutes after newer ones. Merged by such times, a replay
            # met the records in another order than the live processor had (hostile-input test).
            config["message.timestamp.type"] = "LogAppendTime"
        return config


ORDER_KEY = "order_id (UTF-8)"

STOREFRONT_ORDERS = Topic(
    "storefront.orders", "orderops.storefront.OrderEvent", ORDER_KEY, (STOREFRONT,),
    (ORDER_STATE, FULFILLMENT, RETURNS, TIMELINE),
    "Order placed (lines, prices, payment instruments, customer, delivery promise); order or line cancelled.",
)
STOREFRONT_RETURNS = Topic(
    "storefront.returns", "orderops.storefront.ReturnEvent", ORDER_KEY, (STOREFRONT,), (RETURNS, TIMELINE),
    "Customer return requests: lines, quantities, reasons.",
)
PAYMENTS_EVENTS = Topic(
    "payments.events", "orderops.payments.PaymentEvent", ORDER_KEY, (PAYMENT_PROVIDER,), (ORDER_STATE, RETURNS, TIMELINE),
    "Authorizations, captures, voids, refund results and chargebacks, per instrument.",
)
WAREHOUSE_FULFILLMENT = Topic(
    "warehouse.fulfillment", "orderops.warehouse.FulfillmentEvent", ORDER_KEY, (WAREHOUSE,), (FULFILLMENT, TIMELINE),
    "Shipments created, dispatched, tracked, delivered or failed; backorders, ETA changes, short shipments, line cancellations.",
)
WAREHOUSE_RETURNS = Topic(
    "warehouse.returns", "orderops.warehouse.ReturnParcelEvent", ORDER_KEY, (WAREHOUSE,), (RETURNS, TIMELINE),
    "Return parcels received and inspected.",
)
SUPPORT_CONTACTS = Topic(
    "support.contacts", "orderops.support.ContactEvent", ORDER_KEY, (SUPPORT_DESK,), (TIMELINE,),
    "Customer contacts opened and resolved at the support desk.",
)
SUPPORT_ACTIONS = Topic(
    "support.actions", "orderops.support.SupportActionEvent", ORDER_KEY, (TIMELINE,), (RETURNS, TIMELINE),
    "What agents do in the console (written by the timeline's support API), each with the acting user.",
    moves_event_clock=False,
)
RETURNS_POLICIES = Topic(
    "returns.policies", "orderops.returns.ReturnPolicy", "policy_id@version (UTF-8)", (POLICY_ADMIN,), (RETURNS,),
    "Immutable return-policy versions; every returns worker reads all of it as a global table.",
    order_scoped=False, compacted=True, partitions_override=1,
)
# The timeline reads a state machine's records of one cause as one message: the records themselves
# (transitions, the fulfillment status, notification requests, refund commands) were a message
# each, the timeline's reads per upstream event were four, and a message's cost on the batch path
# is mostly per message. The public topics keep every record, for every other reader.
TIMELINE_DIGESTS = Topic(
    "timeline.digests", "orderops.common.DigestEvent", ORDER_KEY, (ORDER_STATE, FULFILLMENT, RETURNS), (TIMELINE,),
    "What a state machine made of one cause, for the timeline: its records on orders.state-changes, "
    "fulfillment.state-changes, fulfillment.status, returns.state-changes, payments.refund-requests and "
    "notifications.requests, the same bytes, in one message.",
)
ORDERS_STATE_CHANGES = Topic(
    "orders.state-changes", "orderops.orderstate.OrderStateChange", ORDER_KEY, (ORDER_STATE,), (),
    "Order and payment transitions; parked and rejected events with their reasons.",
)
FULFILLMENT_STATE_CHANGES = Topic(
    "fulfillment.state-changes", "orderops.fulfillment.FulfillmentStateChange", ORDER_KEY, (FULFILLMENT,), (),
    "Line and shipment transitions; parked and rejected events with their reasons.",
)
# Apart from the transitions: order-state and returns read only the status, and 55% of what they
# read of fulfillment when both shared a topic was transitions and audit records they passed over,
# each one still fetched, decoded and acknowledged.
FULFILLMENT_STATUS = Topic(
    "fulfillment.status", "orderops.fulfillment.FulfillmentStatusEvent", ORDER_KEY, (FULFILLMENT,),
    (ORDER_STATE, RETURNS),
    "The order-level fulfillment status derived from the lines, with each line's quantities and words, "
    "published when what it says changes.",
)
RETURNS_STATE_CHANGES = Topic(
    "returns.state-changes", "orderops.returns.ReturnStateChange", ORDER_KEY, (RETURNS,), (),
    "Return and refund transitions; authorization decisions with policy id@version and rule trace.",
)
PAYMENTS_REFUND_REQUESTS = Topic(
    "payments.refund-requests", "orderops.returns.RefundCommand", ORDER_KEY, (RETURNS,), (PAYMENT_PROVIDER,),
    "Refund commands for the payment provider, idempotent by refund id.",
)
NOTIFICATIONS_REQUESTS = Topic(
    "notifications.requests", "orderops.notifications.NotificationRequestEvent", ORDER_KEY,
    (ORDER_STATE, FULFILLMENT, RETURNS), (NOTIFIER,),
    "The notifier's inbox: what to tell the customer, with the item-level facts it claims.",
)
NOTIFICATIONS_DELIVERIES = Topic(
    "notifications.deliveries", "orderops.notifications.DeliveryEvent", ORDER_KEY, (NOTIFIER,), (TIMELINE,),
    "Notifications sent, failed or suppressed, with rendered content and claims.",
)
# The topics whose records reach the timeline in digests (TIMELINE_DIGESTS), not one message each.
DIGESTED_TOPICS = frozenset(t.name for t in (ORDERS_STATE_CHANGES, FULFILLMENT_STATE_CHANGES, FULFILLMENT_STATUS,
                                             RETURNS_STATE_CHANGES, PAYMENTS_REFUND_REQUESTS, NOTIFICATIONS_REQUESTS))
SUPPORT_TIMELINE = Topic(
    "support.timeline", "orderops.timeline.TimelineEvent", ORDER_KEY, (TIMELINE,), (),
    "One entry per thing that happened to an order, all domains, in event-time order.",
)
SUPPORT_ORDER_VIEWS = Topic(
    "support.order-views", "orderops.timeline.OrderViewEvent", ORDER_KEY, (TIMELINE,), (),
    "Latest unified view of each order.", compacted=True,
)
SUPPORT_ESCALATIONS = Topic(
    "support.escalations", "orderops.timeline.EscalationEvent", ORDER_KEY, (TIMELINE,), (),
    "Escalations opened, updated and resolved, with rule and reason.",
)


def dead_letter_topic(processor: str) -> Topic:
    """``<processor>.dlq``: input that processor could not decode or process, bytes untouched."""
    return Topic(
        f"{processor}.dlq", None, "the original message key", (processor,), (),
        f"Messages {processor} could not decode or process: original key, value and headers, plus origin "
        "topic/partition/offset, error, service and time in headers.",
        retention_ms=90 * DAY_MS,
    )


DEAD_LETTER_TOPICS = {p: dead_letter_topic(p) for p in PROCESSORS}


def timer_topic(processor: str) -> Topic:
    """``<processor>.timers``: the processor's own timer ticks, keyed by order id.

    A deadline (a parked event's, an escalation's age) becomes an event: a periodic sweep writes a
    tick here and the processor's batch path applies it like any other input, on the order's own
    partition, in write order, once (and a rebuild replays it).
    """
    return Topic(
        f"{processor}.timers", "orderops.common.TimerEvent", ORDER_KEY, (processor,), (processor,),
        f"Timer ticks {processor} writes to itself for orders with a pending deadline.",
        retention_ms=DAY_MS,
    )


TIMER_TOPICS = {p: timer_topic(p) for p in PROCESSORS}


def redrive_topic(processor: str) -> Topic:
    """``<processor>.redrives``: which of the processor's dead letters were sent back, once each."""
    return Topic(
        f"{processor}.redrives", None, "<dlq partition>:<dlq offset>", (ON_CALL,), (ON_CALL,),
        f"Ledger of `orderops replay redrive {processor}`: dead letters re-driven to their origin topic (JSON).",
        order_scoped=False, compacted=True, partitions_override=1,
    )


REDRIVE_TOPICS = {p: redrive_topic(p) for p in PROCESSORS}

DATA_TOPICS: tuple[Topic, ...] = (
    STOREFRONT_ORDERS, STOREFRONT_RETURNS, PAYMENTS_EVENTS, WAREHOUSE_FULFILLMENT, WAREHOUSE_RETURNS,
    SUPPORT_CONTACTS, SUPPORT_ACTIONS, RETURNS_POLICIES, TIMELINE_DIGESTS, ORDERS_STATE_CHANGES, FULFILLMENT_STATE_CHANGES,
    FULFILLMENT_STATUS,
    RETURNS_STATE_CHANGES, PAYMENTS_REFUND_REQUESTS, NOTIFICATIONS_REQUESTS, NOTIFICATIONS_DELIVERIES,
    SUPPORT_TIMELINE, SUPPORT_ORDER_VIEWS, SUPPORT_ESCALATIONS,
)
ALL_TOPICS: tuple[Topic, ...] = (DATA_TOPICS + tuple(TIMER_TOPICS.values()) + tuple(DEAD_LETTER_TOPICS.values())
                                  + tuple(REDRIVE_TOPICS.values()))
BY_NAME = {t.name: t for t in ALL_TOPICS}
# Records appended in the same millisecond (one producer flush: an order and its authorization)
# are met in this order, live and in replays: the catalog's, in which an order is placed before
# anything is paid, shipped or returned for it, and upstream facts come before what is derived.
WRITE_RANK = {t.name: n for n, t in enumerate(ALL_TOPICS)}

# The upstream systems whose events `orderops ingest` takes over HTTP, and the topics it writes for
# them: each system's own order-scoped event topics.
INGESTED_SYSTEMS = (STOREFRONT, WAREHOUSE, PAYMENT_PROVIDER, SUPPORT_DESK)
INGESTED_TOPICS = tuple(t for t in ALL_TOPICS
                        if set(t.writers) & set(INGESTED_SYSTEMS) and t.order_scoped and t.value_schema)


def write_rank(name: str) -> int:
    return WRITE_RANK.get(name, len(WRITE_RANK))

# Only on the benchmark's own broker (make bench), never created by `orderops topics create`.
BENCH_PASSTHROUGH = Topic(
    "bench.passthrough", None, "order_id (UTF-8)", (ON_CALL,), (ON_CALL,),
    "The benchmark's passthrough baseline: upstream events decoded and re-encoded, no domain logic.",
    order_scoped=True)


def topic(name: str) -> Topic:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the topic catalog (orderops.model.catalog)") from None


def inputs_of(service: str) -> tuple[Topic, ...]:
    """The shared topics a service reads (its own timer topic is private: ``TIMER_TOPICS``)."""
    return tuple(t for t in DATA_TOPICS if service in t.readers)


def order_inputs(service: str) -> tuple[Topic, ...]:
    """The order-scoped topics a service reads: what its consumer group commits, its state machine
    applies and a replay reads (a global view, like returns.policies, is read apart)."""
    return tuple(t for t in inputs_of(service) if t.order_scoped)


def cause_topics(service: str) -> frozenset[str]:
    """Topics whose events may be the cause a record ``service`` reads waits for: the inputs of every
    other state machine that writes one of its inputs (``orderops.model.workflow.cause_pending``)."""
    writers = {w for t in inputs_of(service) for w in t.writers if w in STATE_MACHINES and w != service}
    return frozenset(t.name for writer in writers for t in inputs_of(writer))


def outputs_of(service: str) -> tuple[Topic, ...]:
    return tuple(t for t in ALL_TOPICS if service in t.writers)


def changelog_prefix(service: str) -> str:
    """Faust names a table's changelog ``{app id}-{table}-changelog``; app id = service name."""
    return f"{service}-"
