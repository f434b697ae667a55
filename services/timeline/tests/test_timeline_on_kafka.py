"""The timeline as a real process on a real broker: the joined view and timeline of a story that
touches every domain, the support API (reads, writes that become support.actions, and 4xx), and
a replay of the same topics into fresh state producing identical timeline and escalation records."""

from __future__ import annotations

import random
import re
import signal
from collections import defaultdict
from datetime import timedelta

import aiohttp
import pytest
from orderops_tools.testing import (
    PrivateBroker,
    ServiceProcess,
    decode_all,
    free_port,
    poll_json,
    producer,
    read_topic,
)
from story import ETA, Feed, split_order_story

from orderops.codec.avro import Codec
from orderops.model.catalog import (
    DIGESTED_TOPICS,
    SUPPORT_ACTIONS,
    SUPPORT_ESCALATIONS,
    SUPPORT_ORDER_VIEWS,
    SUPPORT_TIMELINE,
    TIMELINE_DIGESTS,
    order_partitions,
)
from orderops.model.envelope import Envelope
from orderops.ops.admin import create_topics
from orderops.ops.settings import KafkaSettings, key_partition
from orderops.runtime.machine import digest

pytestmark = pytest.mark.broker
# Status snapshots and the notification request are facts for the view, not timeline entries.
ENTRYLESS = 3
CODEC = Codec()


def publish(bootstrap: str, order_id: str, shuffle_seed: int | None = None, story: Feed | None = None) -> int:
    """The story (the split order's unless given) for ``order_id``; with a seed, its topics
    interleaved at random (each topic's own events stay in order, as one writer writes them)."""
    story = story or split_order_story()
    kafka = producer(bootstrap)
    pairs = list(zip(story.topics, story.events, strict=True))
    if shuffle_seed is not None:
        rng, queues, pairs = random.Random(shuffle_seed), defaultdict(list), []
        for topic, item in zip(story.topics, story.events, strict=True):
            queues[topic.name].append((topic, item))
        while queues:
            name = rng.choice(sorted(queues))
            pairs.append(queues[name].pop(0))
            if not queues[name]:
                del queues[name]
    for topic, (_, event) in pairs:
        event = Envelope(event.event_id.replace("o-1", order_id), order_id, *list(vars(event).values())[2:])
        value = CODEC.encode(topic.value_schema, event.to_record())
        if topic.name in DIGESTED_TOPICS:  # as a state machine writes it for the timeline: in a digest
            topic, value = TIMELINE_DIGESTS, CODEC.encode(TIMELINE_DIGESTS.value_schema, digest(
                event, event.source, [{"topic": topic.name, "value": value}]))
        kafka.produce(topic.name, key=order_id.encode(), value=value)
    assert kafka.flush(30) == 0
    return len(story.events)


def start(bootstrap: str, instance: str, tmp_path, **settings: str) -> ServiceProcess:
    env = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": instance, "WEB_PORT": str(free_port()),
           "ORDEROPS_DATA_DIR": str(tmp_path / instance), "ORDEROPS_CLOCK": "event", **settings}
    return ServiceProcess(["-m", "timeline"], env, tmp_path / f"{instance}.log", int(env["WEB_PORT"])).start()


async def call(process: ServiceProcess, method: str, path: str, body=None, raw: bytes | None = None, token=None):
    return await process.call(method, path, body, raw, token=token)


def records(bootstrap: str, topic, order_id: str, until) -> dict[str, list[bytes]]:
    by_id = defaultdict(list)
    for message in read_topic(bootstrap, topic.name, keep=lambda m: m.key() == order_id.encode(), until=until):
        by_id[decode_all([message], topic)[0].event_id].append(message.value())
    return by_id


def _twice(messages, topic) -> bool:
    counts = defaultdict(int)
    for envelope in decode_all(messages, topic):
        counts[envelope.event_id] += 1
    return bool(counts) and all(n == 2 for n in counts.values())


@pytest.fixture
def own_topics(tmp_path):
    """A broker of this test's own, with every catalog topic: on event time an order is judged on
    its partition's clock, which the suite's broker moves with every other test's events."""
    broker = PrivateBroker(tmp_path / "broker")
    bootstrap = broker.start()
    try:
        create_topics(settings=KafkaSettings(bootstrap, 1))
        yield bootstrap
    finally:
        broker.stop()


def order_on(prefix: str, partition: int, same: bool) -> str:
    """An order id ``prefix``-n on ``partition`` (``same``) or on another one."""
    return next(f"{prefix}-{n}" for n in range(1000)
                if (key_partition(f"{prefix}-{n}".encode(), order_partitions()) == partition) == same)


async def test_view_api_and_replay(own_topics, run_id, tmp_path, support_users):
    bootstrap = own_topics
    order_id = f"tl-{run_id}"
    partition = key_partition(order_id.encode(), order_partitions())
    first = start(bootstrap, f"a{run_id}", tmp_path)
    second = None
    try:
        await first.wait_ready()
        sent = publish(bootstrap, order_id)
        view = await poll_json(first, f"/orders/{order_id}", lambda v: len(v["contacts"]) == 2, timeout=180)
        assert view["order"]["state"] == "confirmed" and view["fulfillment"]["status"] == "partially_shipped"
        assert view["lines"]["l2"]["backordered"] == 1 and view["notifications"][0]["accurate"] is True
        assert "backorder" in view["tags"]
        status, timeline = await call(first, "GET", f"/orders/{order_id}/timeline")
        times = [e["occurred_at"] for e in timeline["entries"]]
        by_rule = [e["summary"] for e in timeline["entries"] if e["domain"] == "escalation"]
        assert status == 200 and times == sorted(times) and len(times) - len(by_rule) == sent - ENTRYLESS
        assert len(by_rule) == 1 and by_rule[0].startswith("escalation opened: A second support contact")
        status, only = await call(first, "GET", f"/orders/{order_id}/timeline?domain=support")
        assert {e["domain"] for e in only["entries"]} == {"support"}
        status, found = await call(first, "GET", "/orders?customer=ada@example.com")
        assert order_id in [o["order_id"] for o in found["orders"]]
        status, queue = await call(first, "GET", "/escalations?state=open&rule=repeat-contact")
        [escalation] = [e for e in queue["escalations"] if e["order_id"] == order_id]

        # Who may do what: no or a wrong token 401, too low a role 403; bad bodies a precise 400.
        lead, agent, admin = (support_users.tokens[u] for u in ("lee", "ann", "root"))
        escalation_path = f"/escalations/{escalation['escalation_id']}"
        status, body = await call(first, "GET", f"/orders/{order_id}", token="")
        assert status == 401 and "Bearer" in body["error"]
        assert (await call(first, "GET", f"/orders/{order_id}", token=agent + "x"))[0] == 401
        assert (await call(first, "POST", f"/orders/{order_id}/tags", {"tag": "vip"}, token=""))[0] == 401
        assert (await call(first, "GET", "/session", token=lead)) == (200, {"user_id": "lee", "role": "lead"})
        assert (await call(first, "GET", "/orders/nobody"))[0] == 404
        assert (await call(first, "GET", "/orders"))[0] == 400
        assert (await call(first, "GET", "/escalations?rule=telepathy"))[0] == 400
        status, body = await call(first, "POST", f"/orders/{order_id}/tags", {"tag": "vip", "actor": "lee"})
        assert status == 400 and "actor" in body["error"], "the actor is the signed-in user, never the body's"
        assert (await call(first, "POST", f"/orders/{order_id}/tags", raw=b"{not json"))[0] == 400
        status, body = await call(first, "POST", f"/orders/{order_id}/contacts", {"reason": "x", "channel": "PIGEON"})
        assert status == 400 and "PIGEON" in body["error"]
        status, body = await call(first, "POST", f"{escalation_path}/resolve", {"note": "done"}, token=agent)
        assert status == 403 and "lead" in body["error"]
        assert (await call(first, "POST", "/returns/r-1/approve-exception", {"order_id": order_id, "reason": "x"},
                           token=agent))[0] == 403

        # An Idempotency-Key makes a retried action the same event, for that order and action only.
        key = {"Idempotency-Key": f"k-{run_id}"}
        tagged = [(await first.call("POST", f"/orders/{order_id}/tags", {"tag": "loyal"}, token=agent, headers=key))[1]
                  for _ in range(2)]
        noted = (await first.call("POST", f"/orders/{order_id}/contacts", {"channel": "CHAT", "reason": "again"},
                                  token=agent, headers=key))[1]
        assert tagged[0]["event_id"] == tagged[1]["event_id"] != noted["event_id"], (tagged, noted)

        # Writes become events on support.actions with the signed-in user, and come back into the view.
        assert (await call(first, "POST", f"/orders/{order_id}/tags", {"tag": "vip"}, token=agent))[0] == 202
        assert (await call(first, "POST", f"{escalation_path}/ack", {"note": "calling back"}, token=agent))[0] == 202
        assert (await call(first, "POST", f"{escalation_path}/resolve", {"note": "customer informed"},
                           token=lead))[0] == 202
        assert (await call(first, "POST", f"/orders/{order_id}/contacts", {"channel": "CHAT", "reason": "thanks"},
                           token=admin))[0] == 202
        view = await poll_json(first, f"/orders/{order_id}", lambda v: "vip" in v["tags"] and len(v["contacts"]) == 4
                               and v["escalations"][escalation["escalation_id"]]["state"] == "resolved")
        assert view["tags"]["vip"]["by"] == "ann"
        # A tag an agent typed is a view's fact, not a metric label: the contact after it counts as "other".
        async with aiohttp.ClientSession() as session, session.get(f"{first.url}/metrics") as response:
            metrics = await response.text()
        assert 'tag="vip"' not in metrics
        assert re.search(r'orderops_support_contacts_by_tag_total\{repeat="(true|false)",tag="other"\} [1-9]', metrics)
        # support.order-views may skip a view superseded within one batch, never the newest: its last
        # record of the order is the view after the last action (four contacts, the tag, one resolved).
        newest = lambda got: bool(got) and decode_all(got[-1:], SUPPORT_ORDER_VIEWS)[0].payload["contacts"] == 4  # noqa: E731
        published = decode_all(read_topic(bootstrap, SUPPORT_ORDER_VIEWS.name, until=newest,
                                          keep=lambda m: m.key() == order_id.encode()), SUPPORT_ORDER_VIEWS)
        still_open = sorted(k for k, e in view["escalations"].items() if e["state"] != "resolved")
        assert "vip" in published[-1].payload["tags"] and escalation["escalation_id"] not in still_open
        assert published[-1].payload["open_escalations"] == still_open
        assert published[-1].payload["order_state"] == view["order"]["state"]
        actions = decode_all(read_topic(bootstrap, SUPPORT_ACTIONS.name, keep=lambda m: m.key() == order_id.encode(),
                                        until=lambda got: len(got) >= 7), SUPPORT_ACTIONS)
        assert [(a.short_type, a.payload["actor"]["user_id"]) for a in actions] == [
            ("TagApplied", "ann"), ("TagApplied", "ann"), ("ContactLogged", "ann"),  # the retried tag: one event id
            ("TagApplied", "ann"), ("EscalationAcknowledged", "ann"), ("EscalationResolvedByAgent", "lee"),
            ("ContactLogged", "root")]
        assert actions[0].event_id == actions[1].event_id != actions[2].event_id
        # In event-time mode an action is stamped on the order's clock (just after its latest event),
        # not the wall clock: it sorts after the contacts it answers and ages the order no further.
        story_end = max(event.occurred_at for _, event in split_order_story().events)
        assert all(story_end < a.occurred_at <= story_end + timedelta(seconds=1) for a in actions), \
            [a.occurred_at for a in actions]
        # The same story with its events shuffled across topics ends in the same view (on a partition
        # of its own: there, the clock is its own events').
        shuffled_id = order_on(f"tls-{run_id}", partition, same=False)
        publish(bootstrap, shuffled_id, shuffle_seed=int(run_id, 16))
        original = await poll_json(first, f"/orders/{order_id}", lambda v: True)
        compared = ("order", "payments", "fulfillment", "lines", "shipments")
        # Until every event is in: two contacts alone said so for the written order, not for a shuffled one.
        shuffled = await poll_json(first, f"/orders/{shuffled_id}",
                                   lambda v: all(v[key] == original[key] for key in compared), timeout=60)
        assert set(shuffled["tags"]) == {"backorder"} and shuffled["notifications"][0]["accurate"] is True
        assert [e["rule"] for e in shuffled["escalations"].values()] == ["repeat-contact"]
        status, spec = await call(first, "GET", "/openapi.json")
        assert status == 200 and "/escalations/{escalation_id}/resolve" in spec["paths"]

        # Time passes without a later event of the order: another order's event on its partition,
        # a day after the teapot's ETA, moves the partition's event clock past it, and the order
        # still backordered escalates there and then, as of the ETA.
        _, view = await call(first, "GET", f"/orders/{order_id}")
        assert view["lines"]["l2"]["backordered"] == 1 and "backorder-overdue" not in \
            {e["rule"] for e in view["escalations"].values()}
        placed = split_order_story()
        first_topic, (_, first_event) = placed.topics[0], placed.events[0]
        later = Feed()
        later.topics, later.events = [first_topic], [(first_topic.name, Envelope(
            first_event.event_id, first_event.order_id, ETA + timedelta(days=1), first_event.source,
            first_event.type, first_event.payload))]
        publish(bootstrap, order_on(f"tlc-{run_id}", partition, same=True), story=later)
        overdue = await poll_json(first, f"/orders/{order_id}", lambda v: any(
            e["rule"] == "backorder-overdue" for e in v["escalations"].values()), timeout=60)
        [(overdue_id, escalation)] = [(k, e) for k, e in overdue["escalations"].items()
                                      if e["rule"] == "backorder-overdue"]
        assert escalation["state"] == "open" and escalation["opened_at"] == ETA.isoformat(), escalation
        assert overdue["last_event_at"] == view["last_event_at"], "no event of the order came"
        _, entries = await call(first, "GET", f"/orders/{order_id}/timeline?domain=escalation")
        assert "escalation opened: A backordered line is past its ETA (l2)" in \
            [e["summary"] for e in entries["entries"]], entries
        assert overdue_id == f"{order_id}:backorder-overdue:l2"
        # The newest view on support.order-views is now the one with it open.
        overdue_open = lambda got: bool(got) and overdue_id in decode_all(got[-1:], SUPPORT_ORDER_VIEWS)[0].payload[  # noqa: E731
            "open_escalations"]
        published = decode_all(read_topic(bootstrap, SUPPORT_ORDER_VIEWS.name, until=overdue_open,
                                          keep=lambda m: m.key() == order_id.encode()), SUPPORT_ORDER_VIEWS)

        # Replay: a fresh timeline reads the same topics from the start; its records are the same.
        second = start(bootstrap, f"b{run_id}", tmp_path)
        await second.wait_ready()
        _, live_timeline = await call(first, "GET", f"/orders/{order_id}/timeline")
        # Every event of the order replayed (the topics interleave in any order: wait for all of them).
        await poll_json(second, f"/orders/{order_id}/timeline",
                        lambda v: len(v["entries"]) == len(live_timeline["entries"]), timeout=180)
        for topic in (SUPPORT_TIMELINE, SUPPORT_ESCALATIONS):
            # Every record id written by both instances, byte for byte the same (a replay that
            # decided differently would leave an id written once, and this would time out).
            both = records(bootstrap, topic, order_id, lambda got, topic=topic: _twice(got, topic))
            assert len(both) >= (sent - ENTRYLESS if topic is SUPPORT_TIMELINE else 3)
            for event_id, values in both.items():
                assert values[0] == values[1], f"{topic.name} {event_id} differs between live and replay"
        # ... and ends with the view the live instance ended with (each wrote it: seen twice).
        final = published[-1].payload
        read_topic(bootstrap, SUPPORT_ORDER_VIEWS.name, keep=lambda m: m.key() == order_id.encode(),
                   until=lambda got: sum(v.payload == final for v in decode_all(got, SUPPORT_ORDER_VIEWS)) >= 2)
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop(signal.SIGKILL)


async def test_an_order_keeps_its_last_entries_and_forgets_older_ones(catalog_topics, run_id, tmp_path, support_users):
    """Entries live apart from the view, one table key each (a view written at every
    event must not grow with the order's history). The API serves the last MAX_ENTRIES; an older
    one is deleted from the table, its changelog tombstoned, as a newer one is written."""
    from datetime import UTC, datetime, timedelta

    from timeline.domain import MAX_ENTRIES, entry_key

    bootstrap, order_id, instance = catalog_topics, f"tln-{run_id}", f"n{run_id}"
    extra = 5
    process = start(bootstrap, instance, tmp_path)
    try:
        await process.wait_ready()
        kafka, began = producer(bootstrap), datetime(2026, 11, 1, tzinfo=UTC)
        for n in range(MAX_ENTRIES + extra):
            note = Envelope(f"note-{run_id}-{n}", order_id, began + timedelta(seconds=n), "test",
                            "orderops.support.NoteAdded", {"actor": {"user_id": "ann", "role": "agent"}, "note": f"#{n}"})
            kafka.produce(SUPPORT_ACTIONS.name, key=order_id.encode(),
                          value=CODEC.encode(SUPPORT_ACTIONS.value_schema, note.to_record()))
        assert kafka.flush(30) == 0
        timeline = await poll_json(process, f"/orders/{order_id}/timeline",
                                   lambda v: v["entries"] and v["entries"][-1]["summary"].endswith(f"#{MAX_ENTRIES + extra - 1}"),
                                   timeout=120)
        notes = [e["summary"].rsplit("#", 1)[1] for e in timeline["entries"]]
        assert notes == [str(n) for n in range(extra, MAX_ENTRIES + extra)]
        _, view = await call(process, "GET", f"/orders/{order_id}")
        assert "entries" not in view and "entry_count" not in view

        changelog = f"timeline-{instance}-entries-changelog"
        forgotten = {f'"{entry_key(order_id, n)}"'.encode() for n in range(extra)}
        tombstones = read_topic(bootstrap, changelog, keep=lambda m: m.key() in forgotten and m.value() is None,
                                until=lambda got: {m.key() for m in got} == forgotten)
        assert len(tombstones) == extra
    finally:
        process.stop(signal.SIGKILL)
