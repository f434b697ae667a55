"""``orderops ingest``: upstream events over HTTP, for systems that send webhooks instead of producing.

``POST /topics/{topic}/events`` with ``{"events": [event, ...]}`` (JSON in the shape of the topic's
schema: orderops.ingest.jsonevents) and a bearer token. Each token belongs to one principal of one
upstream system (``orderops ingest principals add``), and a principal writes only the topics its
system writes in the catalog. Every event of the request is checked first — its schema, then the
named checks every processor runs (orderops.model.contract) — and one that fails answers 400 with
the path of the value at fault: nothing of the request is written. Then each new event is written
keyed by its order id, and the answer, 202, comes once the broker has acknowledged all of them,
with the topic, partition and offset of each. An event id the ingest wrote before (same topic,
same content) is not written again: its answer is the first one, ``duplicate: true``; the same id
with other content is 409.

Limits: ``ORDEROPS_INGEST_MAX_BODY_BYTES`` (413), ``ORDEROPS_INGEST_MAX_EVENTS`` a request (413),
``ORDEROPS_INGEST_REQUESTS_PER_MINUTE`` per principal (429 with Retry-After). ``GET /healthz`` (open)
and ``GET /openapi.json`` (open) describe it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaError, Producer

from orderops.codec.avro import Codec
from orderops.http.app import SECURITY_HEADERS
from orderops.http.auth import Users, bearer_token
from orderops.http.limits import PerCallerLimit
from orderops.ingest.accepted import Accepted, Written
from orderops.ingest.jsonevents import EventProblem, envelope_record
from orderops.model import catalog, contract
from orderops.model.envelope import Envelope
from orderops.ops.security import client_config
from orderops.ops.settings import PRODUCER_DEFAULTS, default_run_dir

log = logging.getLogger("orderops.ingest")

# The upstream systems that may send events here (a principal's "role"), and the topics they write.
SYSTEMS = catalog.INGESTED_SYSTEMS
TOPICS = {t.name: t for t in catalog.INGESTED_TOPICS}
PRINCIPALS_HEADER = ("# orderops ingest principals: <principal id> <upstream system> sha256(token). "
                     "Written by `orderops ingest principals`.")
WAITING_FOR_THE_BROKER_SECONDS = 30


@dataclass(frozen=True)
class IngestSettings:
    bootstrap: str
    bind: str
    port: int
    principals_file: Path
    data_dir: Path
    max_body_bytes: int
    max_events: int
    requests_per_minute: float
    remember_days: float

    @classmethod
    def from_env(cls) -> IngestSettings:
        env, run_dir = os.environ, Path(os.environ.get("ORDEROPS_RUN_DIR", default_run_dir()))
        return cls(
            bootstrap=env.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            bind=env.get("ORDEROPS_INGEST_BIND", "127.0.0.1"),
            port=int(env.get("ORDEROPS_INGEST_PORT", str(catalog.INGEST_PORT))),
            principals_file=Path(env.get("ORDEROPS_INGEST_PRINCIPALS_FILE", run_dir / "secrets" / "ingest-principals")),
            data_dir=Path(env.get("ORDEROPS_INGEST_DATA_DIR", run_dir / "ingest")),
            max_body_bytes=int(env.get("ORDEROPS_INGEST_MAX_BODY_BYTES", str(1024 * 1024))),
            max_events=int(env.get("ORDEROPS_INGEST_MAX_EVENTS", "100")),
            requests_per_minute=float(env.get("ORDEROPS_INGEST_REQUESTS_PER_MINUTE", "600")),
            remember_days=float(env.get("ORDEROPS_INGEST_REMEMBER_DAYS", "7")),
        )


class Refused(Exception):
    def __init__(self, status: int, error: str, **more: Any) -> None:
        super().__init__(error)
        self.status, self.answer = status, {"error": error, **more}


def digest_of(event: dict[str, Any]) -> str:
    """The event as sent, whatever the order of its keys: a repeat and a changed event told apart."""
    return hashlib.sha256(json.dumps(event, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Ingest:
    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.principals = Users(settings.principals_file, SYSTEMS, "ORDEROPS_INGEST_PRINCIPALS_FILE")
        self.codec = Codec()
        self.accepted = Accepted(settings.data_dir / "accepted.sqlite3", settings.remember_days)
        self.limit = PerCallerLimit(settings.requests_per_minute)
        self._inflight: dict[tuple[str, str], asyncio.Future[Written]] = {}
        # orderops' partitioner (murmur2, as every producer here): an order's events on one partition.
        self._producer = Producer(client_config(settings.bootstrap, **{
            **PRODUCER_DEFAULTS, "linger.ms": 2, "message.timeout.ms": WAITING_FOR_THE_BROKER_SECONDS * 1000}))
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="ingest-producer-poll", daemon=True)

    # -- the producer ---------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    def _send(self, loop: asyncio.AbstractEventLoop, topic: str, key: bytes, value: bytes) -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = loop.create_future()

        def delivered(error: KafkaError | None, message: Any) -> None:
            def settle() -> None:
                if done.done():
                    return
                if error is not None:
                    done.set_exception(RuntimeError(f"{error.name()}: {error.str()}"))
                else:
                    done.set_result((message.partition(), message.offset()))
            loop.call_soon_threadsafe(settle)

        self._producer.produce(topic, value=value, key=key, on_delivery=delivered)
        return done

    # -- a request ------------------------------------------------------------------------------

    async def post_events(self, request: web.Request) -> web.Response:
        try:
            principal = self.principals.authenticate(bearer_token(request.headers.get("Authorization")))
            if principal is None:
                raise Refused(401, "send Authorization: Bearer <the token of your upstream principal> "
                                   "(orderops ingest principals add <id> <system>)")
            topic = TOPICS.get(request.match_info["topic"])
            if topic is None:
                raise Refused(404, f"{request.match_info['topic'][:80]!r} is not a topic events are sent to; "
                                   f"topics: {', '.join(sorted(TOPICS))}")
            if principal.role not in topic.writers:
                raise Refused(403, f"{principal.user_id} sends for {principal.role}; {topic.name} is written by "
                                   f"{', '.join(topic.writers)}")
            wait = self.limit.take(principal.user_id)
            if wait is not None:
                raise Refused(429, f"{principal.user_id} sent more than {self.limit.per_minute:g} requests a minute: "
                                   f"wait {wait:.0f} s", retry_after_seconds=round(wait, 1))
            events = await self._events(request)
            records = self._checked(topic, principal.role, events)
            answers = await self._write(topic, events, records)
            return _json({"topic": topic.name, "accepted": answers}, 202)
        except Refused as refused:
            headers = {"Retry-After": str(max(1, round(refused.answer["retry_after_seconds"])))} \
                if refused.status == 429 else None
            return _json(refused.answer, refused.status, headers)

    async def _events(self, request: web.Request) -> list[Any]:
        if request.content_type != "application/json":
            raise Refused(415, "send the events as application/json")
        try:
            body = await request.json(loads=json.loads)
        except web.HTTPRequestEntityTooLarge as exc:
            raise Refused(413, f"the body is larger than {self.settings.max_body_bytes} bytes "
                               "(ORDEROPS_INGEST_MAX_BODY_BYTES): send fewer events a request") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(400, f"the body is not JSON: {str(exc)[:200]}") from exc
        except RecursionError as exc:
            raise Refused(400, "the body nests too deeply to be events") from exc
        if not isinstance(body, dict) or set(body) != {"events"} or not isinstance(body["events"], list):
            raise Refused(400, 'the body is {"events": [event, ...]}')
        events = body["events"]
        if not events:
            raise Refused(400, "events is empty: send at least one")
        if len(events) > self.settings.max_events:
            raise Refused(413, f"{len(events)} events in one request; at most {self.settings.max_events} "
                               "(ORDEROPS_INGEST_MAX_EVENTS)")
        return events

    def _checked(self, topic: catalog.Topic, system: str, events: list[Any]) -> list[dict[str, Any]]:
        """Every event's record, or 400 naming each event that does not fit and where."""
        schema = self.codec.registry.get(topic.value_schema or "")
        records, problems = [], []
        for n, event in enumerate(events):
            try:
                record = envelope_record(schema, event, system)
                found = contract.violation(Envelope.from_record(record), datetime.now(UTC))
                if found is not None:
                    raise EventProblem("payload", f"{found[1]} ({found[0]})")
            except EventProblem as problem:
                where = f"events[{n}]" + (f".{problem.path}" if problem.path else "")
                problems.append({"index": n, "path": where, "message": problem.message})
                continue
            records.append(record)
        if problems:
            raise Refused(400, f"{len(problems)} of {len(events)} events do not fit {topic.name}'s contract; "
                               f"nothing was written: {problems[0]['path']}: {problems[0]['message']}",
                          problems=problems[:20])
        ids = [r["event_id"] for r in records]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise Refused(400, f"event id {twice[0]} appears twice in one request; nothing was written")
        return records

    async def _write(self, topic: catalog.Topic, events: list[Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        digests = [digest_of(e) for e in events]
        for record, digest in zip(records, digests, strict=True):
            known = self.accepted.get(topic.name, record["event_id"])
            if known is not None and known.digest != digest:
                raise Refused(409, f"event id {record['event_id']} was accepted before with other content; an event "
                                   "id names one event: give a changed event a new id. Nothing was written")
        answers: list[dict[str, Any] | None] = [None] * len(records)
        sends: list[tuple[int, asyncio.Future[Any]]] = []
        # This request's events on their way: a concurrent request with one of their ids waits for
        # its answer instead of writing it again.
        mine: dict[tuple[str, str], asyncio.Future[Written]] = {}
        for n, record in enumerate(records):
            key = (topic.name, record["event_id"])
            known = self.accepted.get(*key)
            if known is None and key in self._inflight:
                try:
                    known = await asyncio.shield(self._inflight[key])
                except asyncio.CancelledError as exc:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise
                    raise Refused(503, f"a request sending event {key[1]} at the same time failed; send this one "
                                       "again") from exc
            if known is not None:
                answers[n] = _answer(record["event_id"], known, duplicate=True)
                continue
            sends.append((n, self._send(loop, topic.name, record["order_id"].encode(),
                                        self.codec.encode(topic.value_schema or "", record))))
            mine[key] = self._inflight[key] = loop.create_future()
        try:
            for n, sent in sends:
                try:
                    partition, offset = await sent
                except RuntimeError as exc:
                    log.error("ingest: the broker did not take %s event %s of order %s: %s", topic.name,
                              records[n]["event_id"], records[n]["order_id"], exc)
                    raise Refused(503, f"the broker did not take event {records[n]['event_id']} ({exc}); send the "
                                       "request again: events it took already are answered as duplicates") from exc
                written = Written(digests[n], topic.name, partition, offset)
                self.accepted.put(records[n]["event_id"], written)
                answers[n] = _answer(records[n]["event_id"], written, duplicate=False)
                mine[(topic.name, records[n]["event_id"])].set_result(written)
        finally:
            for key, pending in mine.items():
                if not pending.done():
                    pending.cancel()
                self._inflight.pop(key, None)
        return [a for a in answers if a is not None]

    # -- the process ----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return _json({"service": "ingest", "ready": True, "principals": len(self.principals),
                      "problem": self.principals.problem})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi(self.settings))

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_post("/topics/{topic}/events", self.post_events)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/openapi.json", self.openapi)
        app.on_startup.append(self._started)
        app.on_cleanup.append(self._stopped)
        return app

    async def _started(self, app: web.Application) -> None:
        self._poller.start()
        app["forget"] = asyncio.get_running_loop().create_task(self._forget_old())

    async def _stopped(self, app: web.Application) -> None:
        app["forget"].cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, 10)
        self._stopping.set()
        self.accepted.close()

    async def _forget_old(self) -> None:
        while True:
            self.accepted.forget_old()
            await asyncio.sleep(3600)


def _answer(event_id: str, written: Written, duplicate: bool) -> dict[str, Any]:
    return {"event_id": event_id, "partition": written.partition, "offset": written.offset, "duplicate": duplicate}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers={**SECURITY_HEADERS, **(headers or {})})


def openapi(settings: IngestSettings) -> dict[str, Any]:
    event = {"type": "object", "required": ["event_id", "order_id", "occurred_at", "type", "payload"],
             "additionalProperties": False, "properties": {
                 "event_id": {"type": "string", "description": "unique per event; a repeat is not written twice"},
                 "order_id": {"type": "string", "description": "the key: every event of an order on one partition"},
                 "occurred_at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}],
                                 "description": "when it happened: ISO 8601 with its offset, or epoch milliseconds"},
                 "type": {"type": "string", "description": "the payload's record name, e.g. OrderPlaced"},
                 "payload": {"type": "object", "description": "the record's fields, as its Avro schema has them "
                                                              "(schemas/; amounts as strings)"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "orderops ingest", "version": "1",
                 "description": "Upstream events over HTTP. docs/producing.md says what each topic takes."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {"/topics/{topic}/events": {"post": {
            "summary": "Write events to a topic your system writes",
            "parameters": [{"name": "topic", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": sorted(TOPICS)}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["events"], "additionalProperties": False,
                "properties": {"events": {"type": "array", "minItems": 1, "maxItems": settings.max_events,
                                          "items": event}}}}}},
            "responses": {
                "202": {"description": "every event written and acknowledged by the broker: each one's partition and "
                                       "offset, duplicate true for one written before"},
                "400": {"description": "an event does not fit: problems name each one's path; nothing was written"},
                "401": {"description": "no token, or one no principal holds"},
                "403": {"description": "the principal's system does not write this topic"},
                "404": {"description": "not a topic events are sent to"},
                "409": {"description": "an event id accepted before with other content; nothing was written"},
                "413": {"description": f"a body over {settings.max_body_bytes} bytes or over {settings.max_events} events"},
                "415": {"description": "not application/json"},
                "429": {"description": f"over {settings.requests_per_minute:g} requests a minute (Retry-After)"},
                "503": {"description": "the broker did not take an event in time; send the request again"}},
            "security": [{"bearer": []}]}}},
    }


def main() -> None:
    settings = IngestSettings.from_env()
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ingest = Ingest(settings)
    if ingest.principals.problem:
        log.warning("ingest: %s; add principals with `orderops ingest principals add <id> <system>`",
                    ingest.principals.problem)
    log.info("ingest: serving http://%s:%d/topics/{topic}/events for %s", settings.bind, settings.port,
             ", ".join(sorted(TOPICS)))
    web.run_app(ingest.web_app(), host=settings.bind, port=settings.port, print=None)
