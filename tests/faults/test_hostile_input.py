"""Hostile input interleaved with valid traffic: random bytes, truncated Avro, a wrong magic byte,
unknown writer-schema fingerprints and empty values on every upstream topic, some keyed by real
orders. No processor crashes or stalls; every hostile message is in the dead-letter topic of each
processor that reads its topic — once, with its origin and a precise error class; the valid
traffic's results are what a clean replay gives. The support API answers hostile requests with a
4xx, never a 5xx.

HOSTILE_MESSAGES sets how many (default 300 in `make test`; `make test-faults`: 10,000).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
from collections import Counter
from datetime import UTC, datetime

import aiohttp
import pytest
from orderops_tools.simulator import Config, play

from orderops import catalog, deadletter
from orderops.codec import Codec, DecodeError
from orderops.testing import Mailbox, PrivateBroker, ServiceProcess, orderops_cli, producer, start_processors
from orderops.topicreader import read

pytestmark = [pytest.mark.broker, pytest.mark.faults]
START = datetime(2026, 8, 3, 8, tzinfo=UTC)
HOSTILE = int(os.environ.get("HOSTILE_MESSAGES", "300"))
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


async def test_hostile_messages_are_each_dead_lettered_once_and_valid_traffic_is_unchanged(run_id, tmp_path):
    broker = PrivateBroker(tmp_path / "broker")
    bootstrap = broker.start()
    smtp = Mailbox().start()
    processes: dict[str, ServiceProcess] = {}
    try:
        assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
        processes = start_processors(bootstrap, tmp_path, {"ORDEROPS_NOTIFIER_CHANNELS": "email",
                                                           "ORDEROPS_SMTP_PORT": str(smtp.port)})
        await asyncio.gather(*(p.wait_ready(timeout=180) for p in processes.values()))

        config = Config(seed=int(run_id, 16) % 10**6, orders=12, rate=500, compression=10**9, start=START,
                        order_gap=1.0)
        player = threading.Thread(target=play, args=(config, bootstrap), daemon=True)
        player.start()

        # Hostile messages, interleaved with the valid traffic; a third keyed by real orders.
        rng, codec, kafka = random.Random(run_id), Codec(), producer(bootstrap)
        from orderops_tools.simulator import plan

        samples, _ = plan(Config(seed=7, orders=3, start=START), START)
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
        await asyncio.to_thread(player.join, 600)
        assert len(sent) >= HOSTILE * 0.99 and set(kinds) == set(KINDS), kinds

        # Every hostile message in the dead letters of each processor that reads its topic, once.
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
            status, health = await processes[name].get_json("/healthz")
            assert status == 200 and processes[name].process.poll() is None, (name, health)

        # The valid traffic: what a clean replay of the inputs gives (which also skips the hostile bytes).
        for processor in ("order-state", "fulfillment", "returns"):
            result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--clock", "wall")
            for _ in range(40):
                if result.returncode == 0:
                    break
                await asyncio.sleep(3)
                result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--clock", "wall")
            assert result.returncode == 0, result.stdout + result.stderr[-2000:]

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
        async with aiohttp.ClientSession() as session:
            for method, path, body, raw, headers in [(*r, signed_in) for r in requests] + anonymous:
                async with session.request(method, f"{timeline.url}{path}", json=body if raw is None else None,
                                           data=raw, headers=headers) as response:
                    assert 400 <= response.status < 500, (method, path[:80], response.status, await response.text())
                    assert "Traceback" not in await response.text()
                    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    finally:
        for process in processes.values():
            process.stop(signal.SIGKILL)
        smtp.stop()
        broker.stop()
