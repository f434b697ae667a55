"""Hostile input interleaved with valid traffic, on every upstream topic, some keyed by real orders:

- undecodable: random bytes, truncated Avro, a wrong magic byte, unknown writer-schema
  fingerprints, empty values. Each is in the dead-letter topic of each processor that reads its
  topic — once, with its origin and a precise error class.
- schema-valid but meaningless: events of orders never placed (refund results included), negative
  and huge quantities, unknown line ids, currency mismatches, times decades ahead or in 1971, 10 kB
  strings. Each
  state machine that reads one accounts for it: rejected with an audit record and a code (at once,
  or parked and rejected when its deadline passed), or, for returns, a return decided REJECTED
  with the reason; a machine with nothing to do for that type stays silent. None applies one.

- a poison record on each compacted topic read whole (the return policies, every redrive ledger),
  written while the system runs: the returns view tells it on /healthz and goes on, each redrive
  tells it and runs, and `drop-unreadable` removes it.

No processor crashes or stalls; the valid traffic's results are what a clean replay gives. The
support API answers hostile requests with a 4xx, never a 5xx.

HOSTILE_MESSAGES and HOSTILE_EVENTS set how many of each (`make test`: 300 and 160;
`make test-faults`: 10,000 of each).
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import signal
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
from orderops_tools import faultreport
from orderops_tools.simulator import Config, play
from orderops_tools.testing import (
    Mailbox,
    PrivateBroker,
    ServiceProcess,
    orderops_cli,
    producer,
    rebuilt_identically,
    start_processors,
)

from fulfillment import domain as fulfillment_domain
from order_state import domain as order_state_domain
from orderops.codec.avro import Codec, DecodeError, EncodeError
from orderops.model import catalog
from orderops.model.envelope import Envelope
from orderops.replay.topicreader import read
from orderops.runtime import deadletter
from returns import domain as returns_domain

pytestmark = [pytest.mark.broker, pytest.mark.faults]
START = datetime(2026, 8, 3, 8, tzinfo=UTC)
HOSTILE = int(os.environ.get("HOSTILE_MESSAGES", "300"))
MEANINGLESS = int(os.environ.get("HOSTILE_EVENTS", "160"))
PARK_SECONDS = 30  # how long an event of an order never placed waits before it is rejected
UPSTREAM = [t for t in catalog.DATA_TOPICS if t.order_scoped and t.value_schema
            and not set(t.writers) & set(catalog.PROCESSORS)]


def hostile_value(kind: str, valid: bytes, rng: random.Random) -> bytes:
    if kind == "random-bytes":
        return b"\x00" + rng.randbytes(rng.randint(0, 300))
    if kind == "truncated-avro":
        return valid[: max(11, len(valid) // 2)]
    if kind == "wrong-magic":
        return b"\xc3\x02" + valid[2:]
    if kind == "unknown-fingerprint":
        return valid[:2] + rng.randbytes(8) + valid[10:]
    return b""  # empty


KINDS = ("random-bytes", "truncated-avro", "wrong-magic", "unknown-fingerprint", "empty")


MEANINGLESS_KINDS = ("order-never-placed", "negative-quantity", "huge-quantity", "unknown-line", "currency-mismatch",
                     "far-future", "far-past", "oversized-text")


def _fields(value, key: str):
    """Every dict (nested) holding ``key``."""
    if isinstance(value, dict):
        if key in value:
            yield value
        for item in value.values():
            yield from _fields(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from _fields(item, key)


def meaningless(kind: str, event: Envelope, event_id: str, order_id: str) -> Envelope | None:
    """``event`` (a valid one) made meaningless in the way ``kind`` says, or None if it cannot be."""
    payload, when = copy.deepcopy(event.payload), event.occurred_at
    if kind == "order-never-placed":
        if event.short_type == "OrderPlaced":
            return None
    elif kind in ("negative-quantity", "huge-quantity", "unknown-line"):
        key = "line_id" if kind == "unknown-line" else "quantity"
        spots = list(_fields(payload, key))
        if not spots or (kind == "unknown-line" and event.short_type == "OrderPlaced"):
            return None
        for spot in spots:
            spot[key] = {"negative-quantity": -3, "huge-quantity": 2**31 - 1, "unknown-line": "no-such-line"}[kind]
    elif kind == "currency-mismatch":
        amounts = list(_fields(payload, "currency"))
        if not amounts:
            return None
        amounts[0]["currency"] = "JPY" if amounts[0]["currency"] != "JPY" else "EUR"
    elif kind == "far-future":
        when += timedelta(days=3650)
    elif kind == "far-past":
        when = datetime(1971, 1, 1, tzinfo=UTC)
    elif kind == "oversized-text":
        texts = [(spot, "name") for spot in _fields(payload, "name")] + [(spot, "reason") for spot in _fields(payload, "reason")]
        texts += [(spot, "tracking_number") for spot in _fields(payload, "tracking_number")]
        texts = [(spot, key) for spot, key in texts if isinstance(spot[key], str)]
        if not texts:
            return None
        spot, key = texts[0]
        spot[key] = "x" * 10_000
    return Envelope(event_id, order_id, when, event.source, event.type, payload)


def accounting(records: list[tuple[str, dict]], handled: bool) -> str:
    """What a state machine did with one hostile event, from the records it derived from it."""
    types = [record["payload"][0].rsplit(".", 1)[-1] for _, record in records]
    if "EventRejected" in types:
        code = next(r["payload"][1]["reason_code"] for _, r in records if r["payload"][0].endswith("EventRejected"))
        return f"{'parked, then ' if 'EventParked' in types else ''}rejected: {code}"
    decided = [r["payload"][1] for _, r in records if r["payload"][0].endswith("ReturnAuthorizationDecided")]
    if decided and all(d["decision"] == "REJECTED" for d in decided):
        return "return rejected by policy: " + decided[0]["reason"][:60]
    if not records:
        return "silent" if not handled else "APPLIED WITHOUT A RECORD"
    return "APPLIED: " + ", ".join(types) if "EventParked" not in types else "STILL PARKED"


async def test_hostile_messages_are_each_dead_lettered_once_and_valid_traffic_is_unchanged(run_id, tmp_path):
    broker = PrivateBroker(tmp_path / "broker")
    bootstrap = broker.start()
    smtp = Mailbox().start()
    processes: dict[str, ServiceProcess] = {}
    try:
        assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
        deadlines = {"ORDEROPS_PARK_DEADLINE_SECONDS": str(PARK_SECONDS), "ORDEROPS_TIMER_INTERVAL_SECONDS": "3"}
        processes = start_processors(bootstrap, tmp_path, {"ORDEROPS_NOTIFIER_CHANNELS": "email",
                                                           "ORDEROPS_SMTP_PORT": str(smtp.port), **deadlines})
        await asyncio.gather(*(p.wait_ready(timeout=180) for p in processes.values()))

        config = Config(seed=int(run_id, 16) % 10**6, orders=12, rate=500, compression=10**9, start=START,
                        order_gap=1.0)
        player = threading.Thread(target=play, args=(config, bootstrap), daemon=True)
        player.start()

        # Hostile messages, interleaved with the valid traffic; a third keyed by real orders.
        rng, codec, kafka = random.Random(run_id), Codec(), producer(bootstrap)
        from orderops_tools.simulator import plan

        samples, _ = plan(Config(seed=7, orders=40, start=START), START)  # enough for refunds and returns
        valid_by_topic = {t.name: [s.value for s in samples if s.topic.name == t.name] for t in UPSTREAM}
        sent: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> expected error class
        kinds: Counter = Counter()

        def delivered(err, message, expected) -> None:
            assert err is None, err
            sent[(message.topic(), message.partition(), message.offset())] = expected

        for n in range(HOSTILE):
            topic = UPSTREAM[n % len(UPSTREAM)]
            kind = KINDS[(n // len(UPSTREAM)) % len(KINDS)]
            valid = rng.choice(valid_by_topic[topic.name] or [s.value for s in samples])
            value = hostile_value(kind, valid, rng)
            try:
                codec.decode(value, topic.value_schema)
                continue  # (vanishingly rare: the mutation happened to decode)
            except DecodeError as exc:
                expected = exc.reason
            key = f"sim-{config.seed}-{n % config.orders:06d}" if n % 3 == 0 else f"hostile-{run_id}-{n}"
            kafka.produce(topic.name, key=key.encode(), value=value,
                          on_delivery=lambda err, msg, expected=expected: delivered(err, msg, expected))
            kinds[kind] += 1
            if n % 50 == 0:
                kafka.poll(0)
                await asyncio.sleep(0.05)
        kafka.flush(60)

        # A poison record on each compacted topic a processor or a tool reads whole, while the system runs.
        poisoned = {catalog.RETURNS_POLICIES.name: f"poison-{run_id}@1",
                    **{t.name: f"poison-{run_id}" for t in catalog.REDRIVE_TOPICS.values()}}
        for topic_name, key in poisoned.items():
            kafka.produce(topic_name, key=key.encode(), value=b"\xc3\x01" + rng.randbytes(20))
        assert not kafka.flush(30)

        # Schema-valid but meaningless events, each made from a valid one; most about the run's real orders.
        judged = {t for m in ("order-state", "fulfillment", "returns") for t in catalog.inputs_of(m)}
        originals = [(s.topic, Envelope.from_record(codec.decode(s.value, s.topic.value_schema).record))
                     for s in samples if s.topic in UPSTREAM and s.topic in judged]
        # The provider's refund results are answers, not in a plan: one to stand for them (for orders
        # never placed, refunds never asked for, other currencies).
        originals.append((catalog.PAYMENTS_EVENTS, Envelope(
            "sample-refund", "sample", START, "payment-provider", "orderops.payments.RefundSucceeded",
            {"refund_id": "sample:return:r1:1:pay-1#1", "instrument_id": "pay-1",
             "amount": {"amount": Decimal("12.5000"), "currency": "EUR"}})))
        hostile_events: dict[str, tuple[str, str, str]] = {}  # event id -> (kind, topic, type)
        n = 0
        while len(hostile_events) < MEANINGLESS:
            kind = MEANINGLESS_KINDS[len(hostile_events) % len(MEANINGLESS_KINDS)]
            topic, original = rng.choice(originals)
            order_id = (f"ghost-{run_id}-{n}" if kind == "order-never-placed"
                        else f"sim-{config.seed}-{rng.randrange(config.orders):06d}")
            event = meaningless(kind, original, f"hostile-{run_id}-{n}", order_id)
            n += 1
            if event is None:
                continue
            try:
                value = codec.encode(topic.value_schema, event.to_record())
            except EncodeError:  # e.g. the field is an enum there: no way to send it, so not a test of ours
                continue
            kafka.produce(topic.name, key=order_id.encode(), value=value)
            hostile_events[event.event_id] = (kind, topic.name, event.short_type)
            if n % 20 == 0:
                kafka.poll(0)
                await asyncio.sleep(0.05)
        assert not kafka.flush(60)
        await asyncio.to_thread(player.join, 600)
        assert len(sent) >= HOSTILE * 0.99 and set(kinds) == set(KINDS), kinds
        assert {kind for kind, _, _ in hostile_events.values()} == set(MEANINGLESS_KINDS)

        # Every hostile message in the dead letters of each processor that reads its topic, once.
        dead_lettered: dict[str, int] = {}
        for name in catalog.PROCESSORS:
            mine = {k: v for k, v in sent.items() if catalog.topic(k[0]) in catalog.inputs_of(name)}
            found: dict[tuple[str, int, int], list[str]] = {}
            deadline = asyncio.get_running_loop().time() + 300
            while True:
                found = {}
                for message in read(bootstrap, catalog.DEAD_LETTER_TOPICS[name]):
                    headers = {k: v.decode() for k, v in message.headers() or []}
                    origin = (headers[deadletter.ORIGIN_TOPIC], int(headers[deadletter.ORIGIN_PARTITION]),
                              int(headers[deadletter.ORIGIN_OFFSET]))
                    found.setdefault(origin, []).append(headers[deadletter.ERROR_CLASS])
                if set(mine) <= set(found) or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(3)
            missing = set(mine) - set(found)
            assert not missing, f"{name}: {len(missing)} hostile message(s) not accounted for, e.g. {sorted(missing)[:3]}"
            assert all(found[k] == [v] for k, v in mine.items()), \
                f"{name}: dead-lettered twice or with another reason: " \
                f"{[(k, found[k], v) for k, v in mine.items() if found[k] != [v]][:3]}"
            assert not set(found) - set(mine), f"{name}: dead letters that were not hostile: {set(found) - set(mine)}"
            dead_lettered[name] = len(mine)
            status, health = await processes[name].get_json("/healthz")
            assert status == 200 and processes[name].process.poll() is None, (name, health)

        # The poisoned compacted topics: the returns view tells the bad policy and goes on; each tool
        # that reads a redrive ledger runs and tells it; both are removable.
        status, health = await processes["returns"].get_json("/healthz")
        told = health["global_views"][catalog.RETURNS_POLICIES.name]["unreadable"]
        assert status == 200 and health["ready"] and [f"(key {poisoned[catalog.RETURNS_POLICIES.name]})" in t
                                                      for t in told] == [True], health
        for name in catalog.PROCESSORS:
            ledger = catalog.REDRIVE_TOPICS[name].name
            ran = orderops_cli(bootstrap, "replay", "redrive", name, "--dry-run")
            assert ran.returncode == 0 and f"(key {poisoned[ledger]})" in ran.stderr, ran.stdout + ran.stderr
            dropped = orderops_cli(bootstrap, "topics", "drop-unreadable", ledger)
            assert dropped.returncode == 0 and "1 unreadable record(s)" in dropped.stdout, dropped.stdout + dropped.stderr
        dropped = orderops_cli(bootstrap, "policies", "drop-unreadable")
        assert dropped.returncode == 0 and poisoned[catalog.RETURNS_POLICIES.name] in dropped.stdout, dropped.stdout

        # Every meaningless event accounted for by each state machine that reads its topic; none applied.
        machines = {"order-state": order_state_domain.HANDLERS, "fulfillment": fulfillment_domain.HANDLERS,
                    "returns": returns_domain.HANDLERS}

        def account() -> tuple[Counter, list, Counter]:
            outcomes: Counter = Counter()
            wrong, rejected_by = [], Counter()
            for name, handlers in machines.items():
                derived: dict[str, list[tuple[str, dict]]] = {}
                for topic in catalog.outputs_of(name):
                    if not topic.value_schema or topic.name.endswith(".dlq") or topic.compacted:
                        continue
                    for message in read(bootstrap, topic):
                        record = codec.decode(message.value(), topic.value_schema).record
                        cause = record["event_id"].split(f":{name}:", 1)[0]
                        if cause in hostile_events:
                            derived.setdefault(cause, []).append((topic.name, record))
                for event_id, (kind, topic_name, type_name) in hostile_events.items():
                    if catalog.topic(topic_name) not in catalog.inputs_of(name):
                        continue
                    outcome = accounting(derived.get(event_id, []), type_name in handlers)
                    outcomes[(name, kind, outcome.split(":")[0])] += 1
                    rejected_by[event_id] += "rejected" in outcome
                    if outcome.startswith(("APPLIED", "STILL")):
                        wrong.append((name, kind, type_name, event_id, outcome))
            return outcomes, wrong, rejected_by

        # Events of orders never placed wait PARK_SECONDS, then are rejected (at the bigger size the
        # processors are still working through the input then): the verdicts are read until all are in.
        deadline = asyncio.get_running_loop().time() + PARK_SECONDS + 600
        while True:
            outcomes, wrong, rejected_by = account()
            done = all(rejected_by[e] for e in hostile_events) and not wrong
            applied = any(outcome.startswith("APPLIED") for *_, outcome in wrong)  # final: no waiting mends it
            if done or applied or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(5)
        assert all(rejected_by[e] for e in hostile_events), [e for e in hostile_events if not rejected_by[e]][:5]
        assert not wrong, f"meaningless events not rejected: {wrong[:5]} ({len(wrong)}); all outcomes: {dict(outcomes)}"
        print("meaningless events, by machine, kind and outcome:", dict(sorted(outcomes.items())))

        # The valid traffic: what a clean replay of the inputs gives (which also skips the hostile bytes).
        rebuilt: dict[str, str] = {}
        for processor in ("order-state", "fulfillment", "returns"):
            result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--clock", "wall", env=deadlines)
            for _ in range(40):
                if result.returncode == 0:
                    break
                await asyncio.sleep(3)
                result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--clock", "wall", env=deadlines)
            orders_compared, records_compared = rebuilt_identically(result)
            assert orders_compared > 0 and records_compared > 0, result.stdout
            rebuilt[processor] = f"{orders_compared:,} orders' state and {records_compared:,} records identical"

        # The support API: hostile requests get a 4xx, never a 5xx.
        timeline = processes["timeline"]
        order_id = f"sim-{config.seed}-000000"
        actor = {"user_id": "ann", "role": "agent"}
        requests = [
            ("GET", "/orders/" + "x" * 5000, None, None), ("GET", "/orders/%00%ff", None, None),
            ("GET", "/orders", None, None), ("GET", "/escalations?state=bogus", None, None),
            ("GET", "/escalations?rule=" + "r" * 3000, None, None),
            ("POST", f"/orders/{order_id}/tags", None, b"{not json"), ("POST", f"/orders/{order_id}/tags", [1, 2], None),
            ("POST", f"/orders/{order_id}/tags", {"actor": "ann", "tag": "x"}, None),
            ("POST", f"/orders/{order_id}/tags", {"actor": {"user_id": 5, "role": "god"}, "tag": "x"}, None),
            ("POST", f"/orders/{order_id}/tags", {"actor": actor, "tag": 123}, None),
            ("POST", f"/orders/{order_id}/tags", {"actor": actor, "tag": "t" * 10000}, None),
            ("POST", f"/orders/{order_id}/tags", None, b'{"actor": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
            ("POST", f"/orders/{order_id}/contacts", {"actor": actor, "reason": None, "channel": "EMAIL"}, None),
            ("POST", f"/orders/{order_id}/contacts", None, b"x" * (3 * 1024 * 1024)),
            ("POST", "/escalations/garbage/ack", {"actor": actor}, None),
            ("POST", f"/escalations/{order_id}:repeat-contact:c1/explode", {"actor": actor}, None),
            ("POST", "/returns/r-1/approve-exception", {"actor": {"user_id": "lee", "role": "lead"}}, None),
            ("DELETE", f"/orders/{order_id}", None, None),
        ]
        signed_in = {"Authorization": f"Bearer {os.environ['ORDEROPS_SUPPORT_TOKEN']}"}
        anonymous = [("GET", f"/orders/{order_id}", None, None, {}),
                     ("GET", f"/orders/{order_id}", None, None, {"Authorization": "Bearer " + "t" * 4000}),
                     ("GET", f"/orders/{order_id}", None, None, {"Authorization": "Basic YW5uOmFubg=="}),
                     ("POST", f"/orders/{order_id}/tags", {"tag": "x"}, None, {"Authorization": "Bearer"})]
        answered: Counter = Counter()
        async with aiohttp.ClientSession() as session:
            for method, path, body, raw, headers in [(*r, signed_in) for r in requests] + anonymous:
                async with session.request(method, f"{timeline.url}{path}", json=body if raw is None else None,
                                           data=raw, headers=headers) as response:
                    assert 400 <= response.status < 500, (method, path[:80], response.status, await response.text())
                    assert "Traceback" not in await response.text()
                    assert response.headers.get("X-Content-Type-Options") == "nosniff"
                    answered[response.status] += 1
        verdicts: Counter = Counter()
        for (_, _, outcome), count in outcomes.items():
            verdicts[outcome] += count
        faultreport.record("hostile input among valid traffic (tests/faults/test_hostile_input.py)", {
            "orders of valid traffic": config.orders,
            "undecodable messages, by kind": dict(sorted(kinds.items())),
            "dead-lettered once each, with the error class expected, by processor": dead_lettered,
            "meaningless events, by kind": dict(sorted(Counter(k for k, _, _ in hostile_events.values()).items())),
            "machine verdicts on them, by outcome": dict(sorted(verdicts.items())),
            "meaningless events applied": sum(c for (_, _, outcome), c in outcomes.items() if outcome.startswith("APPLIED")),
            "poison records on compacted topics, each told and removed": len(poisoned),
            "valid traffic against one clean replay": rebuilt,
            "hostile HTTP requests, by answer": {str(k): v for k, v in sorted(answered.items())}})
    finally:
        for process in processes.values():
            process.stop(signal.SIGKILL)
        smtp.stop()
        broker.stop()
