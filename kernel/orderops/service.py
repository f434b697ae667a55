"""The service factory: one processor, built the same way for every one.

A processor declares its tables (``Service.table``), its global views, its HTTP pages, and its one
record handler on the batch path (``Service.batches``, ``Service.state_machine_batches``); Faust is
its engine (orderops.runtime.engine). A record that cannot be decoded or applied goes to the
processor's dead-letter topic with its original bytes (``Service.dead_letter_in``), and the
processor goes on.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import faust
from faust.serializers import codecs
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from orderops.codec.avro import Codec, DecodeError, Envelope
from orderops.codec.privacy import read_event
from orderops.http.app import EngineApp, hardened, signs_in
from orderops.http.auth import Users, bearer_token
from orderops.model import catalog
from orderops.model.catalog import Topic
from orderops.model.clock import clock_from_env
from orderops.model.processor import MachineProcessor
from orderops.model.workflow import Outcome
from orderops.ops.logs import logging_config
from orderops.ops.security import KafkaSecurity
from orderops.ops.settings import DEFAULT_LINGER_MS, ServiceSettings, key_partition
from orderops.runtime.batch import Batch, BatchRunner, RecordHandler
from orderops.runtime.deadletter import dead_letter_headers, error_class
from orderops.runtime.engine import FetchPolicy, run_batches, start_failure
from orderops.runtime.globalview import GlobalView
from orderops.runtime.machine import MachineRecords
from orderops.runtime.metrics import (
    CARD_NUMBERS_MASKED,
    DEAD_LETTERED,
    EVENTS_PROCESSED,
    PRODUCER_CLIENTS_REPLACED,
    GaugeAtScrape,
)
from orderops.runtime.producer import BatchProducer, batch_producer_config
from orderops.runtime.store import install as install_store_memory
from orderops.runtime.store import shared as shared_store_memory
from orderops.runtime.timers import CLOCK_PREFIX, PartitionClocks

NOT_AUTHENTICATED = "not authenticated: send 'Authorization: Bearer <token>' (tokens: orderops users add)"
DEAD_LETTERS_REMEMBERED = 100_000  # (origin, reason) a worker will not dead-letter twice
# A web view's method (self, request, **path parameters) -> response, as Faust calls it.
ViewMethod = Callable[..., Awaitable[Any]]
log = logging.getLogger("orderops.service")


class DeliveryError(Exception):
    """An effect outside Kafka failed for good (after its retries): data, not a bug."""

    reason = "delivery-failed"


class ContractViolation(Exception):
    """A service tried to write a topic the catalog does not list it as a writer of."""


class RightSizedJson(codecs.json):
    """Faust's JSON for table keys, each key's bytes of its own size. orjson returns a bytes object
    with room for 4 KB or more, and Faust keeps the last 1,000 keys of each table it read or wrote
    (its key index): 4 MB per table, the most memory any Python object of the notifier held after
    its RocksDB caches in a soak's native heap profile. The bytes are the same."""

    def _dumps(self, s: Any) -> bytes:
        return bytes(memoryview(super()._dumps(s)))


TABLE_KEY_CODEC = "orderops-json-key"
codecs.register(TABLE_KEY_CODEC, RightSizedJson())


class PreEncodedJson(codecs.json):
    """Faust's JSON for table values; a value given as bytes is JSON already
    (``envelope.to_json_bytes``, the same bytes this codec would write of its parsed form) and is
    stored as it is. Read, every value is parsed, as before."""

    def _dumps(self, s: Any) -> bytes:
        return s if isinstance(s, bytes) else super()._dumps(s)


TABLE_VALUE_CODEC = "orderops-json-value"
codecs.register(TABLE_VALUE_CODEC, PreEncodedJson())


class Service:
    """One processor: its Faust app, codec, dead-letter topic, health check and metrics."""

    def __init__(self, name: str, *, default_web_port: int, settings: ServiceSettings | None = None,
                 default_linger_ms: float = DEFAULT_LINGER_MS, default_timer_interval_seconds: float = 10.0) -> None:
        """``default_linger_ms``: ``ORDEROPS_PRODUCER_LINGER_MS`` unless set. A processor whose
        batches wait for acks before and after effects outside Kafka (the notifier) takes 0: each
        wait would be the linger longer. ``default_timer_interval_seconds``:
        ``ORDEROPS_TIMER_INTERVAL_SECONDS`` unless set (how often due deadlines are swept)."""
        self.name = name
        self.settings = settings or ServiceSettings.from_env(name, default_web_port, default_linger_ms,
                                                             default_timer_interval_seconds)
        self.codec = Codec()
        self.app = _faust_app(self.settings)
        self.metrics_registry = CollectorRegistry()
        self.metrics_registry.register(GaugeAtScrape(
            "orderops_consumer_lag_messages", "Messages in the processor's input partitions not yet committed as processed",
            ("processor", "topic"), self.consumer_lag))
        self.metrics_registry.register(GaugeAtScrape(
            "orderops_rocksdb_memory_bytes", "Memory of the processor's RocksDB tables, shared by all of them: "
            "memtables (bounded by ORDEROPS_ROCKSDB_WRITE_BUFFER_MB) and block cache (ORDEROPS_ROCKSDB_CACHE_MB)",
            ("processor", "part"), self.store_memory))
        self._dead_letter_topic = catalog.DEAD_LETTER_TOPICS.get(name) or catalog.dead_letter_topic(name)
        self._channels: dict[tuple[str, ...], faust.TopicT] = {}
        self.clock = clock_from_env(self.settings.clock)
        self._deadlines: faust.TableT | None = None
        self.partition_clocks: PartitionClocks | None = None  # enable_timers(partition_clocks=True)
        self._read_pages: dict[str, str] = {}  # order_page's path -> its summary (the /openapi.json)
        self._global_views: list[GlobalView] = []
        self._table_names: list[str] = []
        self._input_names = frozenset(t.name for t in catalog.inputs_of(name))
        self.users = Users(self.settings.support_users_file)
        self._told_problem: str | None = None
        if self.users.problem:
            log.warning("%s: %s. Every API call but /healthz and /metrics answers 401; add users with "
                        "`orderops users add <user id> <role>`.", name, self.users.problem)
        self._batches: BatchRunner | None = None  # the batch path, once batches() set it up
        self._dead_lettered: dict[tuple[Any, ...], None] = {}  # the last messages dead-lettered, oldest first
        self._mount_pages()

    # -- topics ---------------------------------------------------------------------------------

    def topic(self, *topics: Topic) -> faust.TopicT:
        """A Faust channel over catalog topics, carrying raw bytes (decoding is ours, see read)."""
        names = tuple(t.name for t in topics)
        if names not in self._channels:
            self._channels[names] = self.app.topic(
                *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                partitions=topics[0].partitions,
            )
        return self._channels[names]

    def table(self, name: str, *, default: Any = None, **kwargs: Any) -> faust.TableT:
        """A table keyed by order id (str) holding JSON values, co-partitioned with the order-scoped
        topics; Faust names its changelog ``{service}-{name}-changelog``."""
        # No key_type/value_type: with value_type=dict Faust's changelog recovery calls
        # dict.from_data(), logs a warning per record and never completes (found on Kafka 4.4).
        schema = faust.Schema(key_serializer=TABLE_KEY_CODEC, value_serializer=TABLE_VALUE_CODEC)
        self._table_names.append(name)
        table = self.app.Table(name, default=default, schema=schema, partitions=catalog.order_partitions(), **kwargs)
        # Faust takes a table's own serializers from its key and value types, not from the schema.
        table.key_serializer, table.value_serializer = TABLE_KEY_CODEC, TABLE_VALUE_CODEC
        return table

    def changelog_topics(self) -> tuple[Topic, ...]:
        """The changelog of each table, as Faust names it, declared like catalog topics."""
        return tuple(catalog.Topic(f"{self.settings.app_id}-{name}-changelog", None, "order id (JSON)", (self.name,),
                                   (self.name,), f"changelog of {self.name}'s {name} table", compacted=True)
                     for name in self._table_names)

    def prepare_topics(self) -> None:
        """Create the tables' changelogs before Faust starts, and wait for their partition leaders.

        Left to Faust, a changelog is created while the worker starts and the producer's metadata
        may not know its partitions yet: the first table write then fails with PartitionsMismatch
        ("changelog has 0 partitions"), which would dead-letter a good event (seen on Kafka 4.4).
        """
        from orderops.ops.admin import create_topics

        create_topics(self.changelog_topics(), self.settings.kafka)

    # -- records ------------------------------------------------------------------------------

    def read(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             headers: Any) -> Envelope:
        """A fetched record's envelope; the clock learns its event time (it matters in event-time mode)."""
        envelope, masked = read_event(self.codec, key, value, catalog.topic(topic), headers, self._input_names)
        if masked:
            CARD_NUMBERS_MASKED.labels(self.name, topic).inc(len(masked))
            log.warning("%s[%d]@%d (event %s): a card number in %s was masked before processing; it stays only "
                        "on that topic. Upstream systems must send a provider token and the last four digits, never "
                        "the number: tell the owners of %s.", topic, partition, offset,
                        envelope.event_id, ", ".join(masked), topic)
        if catalog.topic(topic).moves_event_clock:
            self.clock.observe(envelope.occurred_at)
        return envelope

    async def emit(self, topic: Topic, key: str, record: dict[str, Any],
                   headers: list[tuple[str, bytes]] | None = None) -> Any:
        """Encode with the topic's schema and send with Faust's producer, outside the batch path (a
        timer tick, an HTTP action); returns the future of the broker's ack. Only a declared writer
        may write a topic."""
        value = self.encode(topic, record)
        return await self.topic(topic).send(key=key.encode(), value=value, headers=headers)

    def encode(self, topic: Topic, record: dict[str, Any]) -> bytes:
        """A record in ``topic``'s schema. Only a declared writer may write a topic."""
        if self.name not in topic.writers:
            raise ContractViolation(f"{self.name} is not a writer of {topic.name} (writers: {topic.writers})")
        return self.codec.encode(topic.value_schema or "", record)

    @staticmethod
    def table_value(value: Any) -> bytes:
        """What a table keeps of a value (and its changelog carries)."""
        return bytes(codecs.dumps(TABLE_VALUE_CODEC, value))

    async def emit_all(self, key: str, outputs: Iterable[tuple[Topic, dict[str, Any]]]) -> None:
        """Send every output and wait until the broker acknowledged all of them (an HTTP action)."""
        pending = [await self.emit(topic, key, record) for topic, record in outputs]
        for future in pending:
            await future

    def dead_letter_record(self, key: bytes | None, value: bytes | None, headers: Any, *, topic: str, partition: int,
                           offset: int, error: BaseException
                           ) -> tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]] | None:
        """The dead letter of a message (its topic, key, value and headers), counted and told in the
        log, for the caller to send; None for a message this worker dead-lettered already."""
        said = (topic, partition, offset, str(error))
        if said in self._dead_lettered:
            return None
        self._dead_lettered[said] = None
        if len(self._dead_lettered) > DEAD_LETTERS_REMEMBERED:
            del self._dead_lettered[next(iter(self._dead_lettered))]
        letter_headers = dead_letter_headers(headers, topic=topic, partition=partition, offset=offset, error=error,
                                             service=self.name)
        DEAD_LETTERED.labels(self.name, topic, error_class(error)).inc()
        log.error(
            "%s: dead-lettered %s[%d]@%d to %s: %s: %s. The original bytes and headers are kept there; fix the "
            "cause, then re-drive it with the replay tools.",
            self.name, topic, partition, offset, self._dead_letter_topic.name,
            type(error).__name__, error, exc_info=not isinstance(error, (DecodeError, DeliveryError)),
        )
        return self._dead_letter_topic.name, key, value, letter_headers

    def state_machine_batches(self, processor: MachineProcessor, table: faust.TableT,
                              observe: Callable[[Outcome], None] | None = None) -> BatchRunner:
        """A state-machine processor on the batch path (``orderops.runtime``): each fetched batch of
        its inputs and timer ticks is applied record by record (``MachineRecords``: the same pure
        functions the offline replay runs), each changed order's state written once, then the
        batch's records flushed and its offsets committed. Faust fetches, assigns and recovers."""
        self.enable_timers()
        return self.batches(MachineRecords(self, processor, table, observe), (*processor.inputs, processor.timers))

    def batches(self, handler: RecordHandler, inputs: Iterable[Topic], concurrency: int = 1) -> BatchRunner:
        """This processor on the batch path (``orderops.runtime``): every fetched batch of ``inputs``
        through ``handler``, record by record, then its records flushed, its state written and its
        offsets committed; ``concurrency``: keys whose effects outside Kafka run at once. Faust
        fetches, assigns and recovers. Call once, before the worker starts."""
        names = tuple(t.name for t in inputs)
        channel = self.app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                                 value_serializer="raw", partitions=catalog.order_partitions(), acks=False)
        producer = BatchProducer(batch_producer_config(self.settings), self.name, self._producer_retired)
        self._batches = BatchRunner(self.name, frozenset(names), handler, producer, self._count_processed,
                                    self.settings.state_cache_orders, self.settings.batch_max_records,
                                    self._global_views_loaded, concurrency, self.settings.commit_interval_seconds,
                                    self.settings.task_idle_limit_seconds)
        run_batches(self.app, self.name, self._batches, channel, self._batches.revoked,
                    FetchPolicy(self.settings.fetch_min_bytes, self.settings.fetch_max_wait_ms))
        return self._batches

    def schedule_in(self, batch: Batch, key: str, due: datetime | None, partition: int) -> None:
        """Set (or clear, with None) the key's next deadline, as part of a batch (``enable_timers``)."""
        wanted = due.isoformat() if due is not None else None
        assert self._deadlines is not None, "enable_timers comes first"
        if batch.load(self._deadlines, key, _as_stored, partition) != wanted:
            batch.put(self._deadlines, key, None if wanted is None else self.table_value(wanted), wanted, partition)
            if self.partition_clocks is not None:
                self.partition_clocks.schedule(key, due, partition)

    async def _partition_clocks_recovered(self) -> None:
        if self.partition_clocks is not None:
            self.partition_clocks.forget()

    def dead_letter_in(self, batch: Batch, record: Any, error: BaseException) -> None:
        """Dead-letter a fetched record as part of a batch: sent with the batch's records."""
        letter = self.dead_letter_record(record.key, record.value, record.headers, topic=record.topic,
                                         partition=record.partition, offset=record.offset, error=error)
        if letter is not None:
            topic, key, value, headers = letter
            batch.send(topic, key, value, headers, None)

    async def _global_views_loaded(self) -> None:
        """Until every global view (returns: the policies) has read its topic to the end, nothing is
        applied: an inspection decided without its policy would park, or worse."""
        for view in self._global_views:
            if not view.caught_up.is_set():
                log.info("%s: waiting for %s to be read to its end before applying anything", self.name, view.topic.name)
                await view.caught_up.wait()

    def _count_processed(self, counts: dict[str, int]) -> None:
        for topic, n in counts.items():
            EVENTS_PROCESSED.labels(self.name, topic).inc(n)

    def _producer_retired(self, records: int, because: str, code: str) -> None:
        PRODUCER_CLIENTS_REPLACED.labels(self.name, code).inc()
        log.warning("%s: librdkafka's producer was retired (%s); a new one sends the %d record(s) not acknowledged "
                    "again, in their order (readers recognise a record they have). Check the broker if this repeats.",
                    self.name, because, records)

    # -- timers -------------------------------------------------------------------------------

    def enable_timers(self, sweep: bool = True, partition_clocks: bool = False) -> faust.TopicT:
        """Deadlines per order, and a sweep that turns due ones into ``TimerFired`` events.

        Returns the channel of this processor's timer topic: its batch path must read it (alongside
        its inputs) and apply each tick as of ``fired_at``. Call ``schedule_in`` while applying a
        record to set or clear an order's next deadline. ``partition_clocks``: deadlines also come
        due on their partition's event clock, inline (``self.partition_clocks``,
        orderops.runtime.timers), instead of by a sweep.
        """
        timers = catalog.TIMER_TOPICS[self.name]
        self._deadlines = self.table("deadlines", default=None)
        deadlines = self._deadlines
        if partition_clocks:
            partitions = catalog.order_partitions()
            self.partition_clocks = PartitionClocks(deadlines, self.table_value,
                                                    lambda key: key_partition(key.encode(), partitions))
            deadlines.on_recover(self._partition_clocks_recovered)

        async def sweep_deadlines() -> None:
            now = self.clock.now()
            for order_id, due in list(deadlines.items()):
                if due is not None and not order_id.startswith(CLOCK_PREFIX) and datetime.fromisoformat(due) <= now:
                    await self.emit(timers, order_id, Envelope(
                        event_id=f"{self.name}:timer:{order_id}:{due}:{now.isoformat()}", order_id=order_id,
                        occurred_at=now, source=self.name, type="orderops.common.TimerFired",
                        payload={"due_at": datetime.fromisoformat(due), "fired_at": now}).to_record())

        if sweep:
            self.app.timer(interval=self.settings.timer_interval_seconds)(sweep_deadlines)
        return self.topic(timers)

    # -- global views ---------------------------------------------------------------------------

    def global_view(self, topic: Topic, convert: Callable[[dict[str, Any]], Any], remedy: str = "") -> GlobalView:
        """All of a compacted topic on every worker (see orderops.runtime.globalview); /healthz waits for it
        and lists the records it could not read. ``remedy``: the command that removes such a record."""
        view = GlobalView(self.settings.kafka.bootstrap, topic, self.codec, convert, remedy)
        self._global_views.append(view)
        self.app.task(view.run)
        return view

    # -- HTTP --------------------------------------------------------------------------------

    def routed_by_order(self, match_info: str = "order_id") -> Callable[[ViewMethod], ViewMethod]:
        """Decorate a view method so that the worker owning the order answers it (others forward).

        Not Faust's ``table_route``: it hashes the table's JSON-serialized key (``"o-1"`` with the
        quotes), while the order's partition — of every input topic and so of every table — comes
        from the raw order id the producers key by. With one worker the two never disagree; with
        two, ``table_route`` sent reads to the wrong worker and it answered 404 (found by the
        two-worker test). This routes by an input topic's raw key, as the data is partitioned."""
        order_scoped = catalog.order_inputs(self.name)[0]
        forward = self.app.topic_route(topic=self.topic(order_scoped), match_info=match_info)
        service = self

        def decorate(handler: ViewMethod) -> ViewMethod:
            forwarded = forward(handler)

            @functools.wraps(handler)
            async def routed(view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
                # Answered here when this worker holds the order's partition, without asking the
                # assignor's routing map: after a broker restart that map was found empty on a lone
                # worker (every read "Service unavailable") while the partitions were its own.
                if service.holds(request.match_info[match_info], order_scoped):
                    return await handler(view, request, *args, **kwargs)
                return await forwarded(view, request, *args, **kwargs)

            return routed

        return decorate

    def holds(self, order_id: str, topic: Topic) -> bool:
        """Whether this worker is assigned the order's partition (murmur2 of the raw order id, as
        every producer here partitions)."""
        consumer = self.app._consumer
        if consumer is None:
            return False
        partition = key_partition(order_id.encode(), topic.partitions)
        return any(tp.topic == topic.name and tp.partition == partition for tp in consumer.assignment())

    def requires(self, role: str) -> Callable[[ViewMethod], ViewMethod]:
        """Decorate a view method: only a user with ``role`` (or a higher one) gets in. No or an
        unknown token: 401, saying only how to sign in (what is wrong with the users file, and where
        it is, goes to the log); a known user without the role: 403. The user is ``signed_in(request)``."""
        users, service = self.users, self

        def decorate(handler: ViewMethod) -> ViewMethod:
            @functools.wraps(handler)
            async def guarded(view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
                user = users.authenticate(bearer_token(request.headers.get("Authorization")))
                if user is None:
                    service._tell_users_problem()
                    return view.json({"error": NOT_AUTHENTICATED}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="orderops"'})
                if not user.may(role):
                    return view.json({"error": f"{user.user_id} is {user.role}; this needs the {role} role"}, status=403)
                signs_in(request, user)
                return await handler(view, request, *args, **kwargs)

            return guarded

        return decorate

    def _tell_users_problem(self) -> None:
        """A refusal because nobody can sign in (no users file, or a broken one) is logged, once per
        problem: the caller is told only to sign in."""
        problem = self.users.problem
        if problem and problem != self._told_problem:
            self._told_problem = problem
            log.warning("%s: a request was refused: %s. Fix the users file or add users with "
                        "`orderops users add <user id> <role>`.", self.name, problem)

    def order_page(self, path: str, table: faust.TableT, describe: Callable[[dict[str, Any]], dict[str, Any]],
                   summary: str) -> None:
        """``GET path`` (with ``{order_id}``): the order's state as ``describe`` renders it, answered
        by the worker that owns the order (see ``routed_by_order``); 404 when unknown. ``summary``:
        what it answers, for the processor's ``/openapi.json``."""
        service = self
        if not self._read_pages:
            self._serve_openapi()
        self._read_pages[path] = summary

        class OrderPage(faust.web.View):
            @self.requires("agent")
            @self.routed_by_order("order_id")
            async def get(self, request: faust.web.Request, order_id: str) -> faust.web.Response:
                stored = table.get(order_id)
                if stored is None:
                    return self.json({"error": f"order {order_id} is unknown to {service.name}"}, status=404)
                return self.json(describe(stored))

        self.app.page(path, name=f"{self.name}{path}")(OrderPage)

    def openapi(self) -> dict[str, Any]:
        """The processor's read API, as OpenAPI 3 (the timeline describes its own, richer API)."""
        paths = {path: {"get": {
            "summary": f"{summary} (agent or above)",
            "parameters": [{"name": "order_id", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
            "responses": {"200": {"description": summary}, "401": {"description": "no token, or one nobody holds"},
                          "403": {"description": "the signed-in user's role is below agent"},
                          "404": {"description": f"an order {self.name} has not seen"}},
            "security": [{"bearer": []}]}} for path, summary in self._read_pages.items()}
        return {"openapi": "3.0.3",
                "info": {"title": f"orderops {self.name} read API", "version": "1",
                         "description": f"What {self.name} holds of an order, answered by the worker that owns it. "
                                        "/healthz and /metrics answer without a token."},
                "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
                "paths": paths}

    def _serve_openapi(self) -> None:
        service = self

        class OpenApi(faust.web.View):
            async def get(self, request: faust.web.Request) -> faust.web.Response:
                return self.json(service.openapi())

        self.app.page("/openapi.json", name=f"{self.name}/openapi.json")(OpenApi)

    # -- health and metrics ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        app = self.app
        consumer = app._consumer  # the property would create one; health must not
        assigned = consumer.assignment() if consumer is not None else set()
        recovered = app.tables.recovery.completed.is_set()
        views_caught_up = all(v.caught_up.is_set() for v in self._global_views)
        ready = bool(assigned) and recovered and not app.rebalancing and views_caught_up
        return {"service": self.name, "ready": ready, "recovered": recovered, "rebalancing": app.rebalancing,
                "assigned_partitions": len(assigned),
                "global_views": {v.topic.name: {"caught_up": v.caught_up.is_set(), "entries": len(v.items),
                                                "unreadable": [bad.describe() for bad in v.unreadable.values()]}
                                 for v in self._global_views}}

    def store_memory(self) -> dict[tuple[str, str], float]:
        memory = shared_store_memory()
        return {(self.name, part): float(used) for part, used in memory.usage().items()} if memory else {}

    def consumer_lag(self) -> dict[tuple[str, str], float]:
        """Per input topic: the partitions' end offsets less the group's committed offsets (the
        lag Kafka's own tools report), over the partitions this worker holds."""
        consumer = self.app._consumer
        lag: dict[tuple[str, str], float] = {}
        if consumer is None:
            return lag
        for tp in consumer.assignment():
            if tp.topic.endswith("-changelog"):
                continue
            try:
                end = consumer.highwater(tp)
            except Exception:  # no fetch yet for this partition: nothing to say
                continue
            committed = consumer._committed_offset.get(tp)
            if end is None or committed is None:
                continue
            key = (self.name, tp.topic)
            lag[key] = lag.get(key, 0) + max(0, end - committed)
        return lag

    def _mount_pages(self) -> None:
        service = self

        @self.app.page("/healthz")
        async def healthz(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            status = service.health()
            return view.json(status, status=200 if status["ready"] else 503)

        @self.app.page("/metrics")
        async def metrics(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            body = generate_latest(REGISTRY) + generate_latest(service.metrics_registry)
            return view.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    # -- running ------------------------------------------------------------------------------

    def run(self) -> None:
        """Run the worker until SIGTERM/SIGINT (used by every service's ``__main__``). A worker
        started while the broker is away waits for it, and one whose start the broker's going away
        interrupted starts again: it does not exit (found: a fulfillment worker started as the
        broker was killed exited, and the partitions it was to take over stalled). mode's worker
        turns the start's error into ``SystemExit(1)``; ``start_failure`` tells what it was."""
        from aiokafka.errors import KafkaConnectionError

        from orderops.ops.admin import wait_for_broker

        bootstrap = self.settings.kafka.bootstrap
        while True:
            try:
                wait_for_broker(bootstrap, timeout=30)
                break
            except TimeoutError:
                log.warning("%s: no broker answers at %s; waiting (check the broker, KAFKA_BOOTSTRAP and the "
                            "network).", self.name, bootstrap)
        self.prepare_topics()
        collect_garbage_seldom(self.settings.gc_threshold)
        logs = logging_config(self.name, self.settings.log_level, self.settings.log_format)
        # quiet: Faust's start-up banner is not a log line; in JSON, every line must be one.
        worker = faust.Worker(self.app, loglevel=self.settings.log_level, logging_config=logs, quiet=logs is not None)
        # Faust's terminal spinner lowers the root logger to DEBUG so that every log call spins it:
        # every aiokafka debug line then became a LogRecord (6% of a processor's CPU).
        worker.spinner = None
        try:
            worker.execute_from_commandline()
        except SystemExit:
            failure = start_failure(worker)
            if not isinstance(failure, KafkaConnectionError):
                raise
            log.warning("%s: the broker at %s went away while this worker started (%s): starting again in 5 s.",
                        self.name, bootstrap, failure)
            time.sleep(5)
            os.execv(sys.executable, sys.orig_argv)


def _as_stored(value: Any) -> Any:
    return value


def collect_garbage_seldom(threshold: int) -> None:
    """The cyclic garbage collector runs after ``threshold`` allocations (Python's default, 700, ran
    it about once per record, and each older generation's walk took in every state the batch path
    keeps: two fifths of order-state's CPU), and leaves out of its walks what exists before the
    worker starts (modules, schemas, the app: ``gc.freeze``). Plain reference counting frees all
    the rest; cycles wait longer for their collection."""
    if threshold > 0:
        gc.freeze()
        gc.set_threshold(threshold, 20, 100)


def _faust_app(settings: ServiceSettings) -> faust.App:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    install_store_memory(settings.rocksdb_cache_mb, settings.rocksdb_write_buffer_mb)
    brokers = [f"kafka://{host.strip()}" for host in settings.kafka.bootstrap.split(",") if host.strip()]
    app = EngineApp(
        settings.app_id,
        broker=brokers,
        broker_credentials=KafkaSecurity.from_env().faust_credentials(),
        store=settings.store,
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=True,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_application_options={"middlewares": [hardened], "client_max_size": settings.http_max_body_bytes},
        # Faust's own pages answer without a token: /table/<table>/<key>/ served an order's view with
        # the customer's e-mail and phone. Every built-in page that shows state is off; forwarding a
        # read to the worker that owns the order (routed_by_order) uses Faust's router object, not
        # its /router pages. What stays open is listed in docs/security.md and checked against each
        # processor's own routes (tests/integration/test_routes_guarded.py).
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        topic_partitions=catalog.order_partitions(),
        topic_replication_factor=settings.kafka.replication_factor,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Faust's default, 0, sent a produce request for every few records: a sixth of a state
        # machine's CPU went to socket writes. 5 ms lets records and changelog writes share requests
        # (order-state alone used a fifth less CPU per message).
        producer_linger=settings.producer_linger_ms / 1000,
        # Faust's 20 minutes held a stuck client's records (and so every commit) that long before
        # anything was tried again; librdkafka's client is now replaced and the records sent again.
        producer_request_timeout=settings.producer_message_timeout_seconds,
        broker_session_timeout=settings.session_timeout_seconds,
        # How long a consumer's request to a broker that stopped answering (frozen, cut off) waits.
        broker_request_timeout=settings.request_timeout_seconds,
        # A worker that joined its group while a restarted broker still answered metadata without
        # the topics was assigned nothing, and stayed so until the next metadata refresh (aiokafka's
        # default: 5 minutes): found by the broker-kill test. A refresh that shows them rejoins.
        consumer_metadata_max_age_ms=10_000,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        key_serializer="raw",
        value_serializer="raw",
    )
    return app
