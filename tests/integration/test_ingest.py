"""`orderops ingest` as a real process against a real broker, called by a real HTTP client: events
sent as JSON land on their topic once, acknowledged by the broker before the 202; a repeat is not
written again; wrong, hostile or unauthorised input gets a precise 4xx and never reaches a topic."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from orderops_tools.scenario import address, card, customer, line, money
from orderops_tools.testing import IngestProcess, decode_all, read_topic

from orderops.ingest.jsonevents import event_json
from orderops.model.catalog import PAYMENTS_EVENTS, REDRIVE_TOPICS, STOREFRONT_ORDERS, TIMELINE
from orderops.ops.settings import key_partition

pytestmark = pytest.mark.broker
AT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def placed(order_id: str, event_id: str, quantity: int = 2) -> dict:
    payload = {"customer": customer(), "lines": [line("l1", "Blue mug", quantity, "12.50")],
               "instruments": [card("card-1", str(12.5 * quantity))], "shipping_address": address(),
               "total": money(str(12.5 * quantity))}
    return event_json(event_id, order_id, AT, "OrderPlaced", payload)


async def test_events_sent_over_http_land_once_and_bad_input_never_does(catalog_topics, run_id, tmp_path):
    ingest = IngestProcess(catalog_topics, tmp_path, {"shop": "storefront", "wh": "warehouse", "flood": "storefront"},
                           {"ORDEROPS_INGEST_MAX_EVENTS": "5", "ORDEROPS_INGEST_MAX_BODY_BYTES": "65536",
                            "ORDEROPS_INGEST_REQUESTS_PER_MINUTE": "40"})
    process = ingest.start()
    try:
        await process.wait_ready(timeout=60)
        orders = STOREFRONT_ORDERS.name
        first, second = f"ing-{run_id}-1", f"ing-{run_id}-2"
        events = [placed(first, f"{first}:placed"), placed(second, f"{second}:placed", quantity=3)]

        status, answer = await ingest.post(orders, {"events": events})
        assert status == 202, answer
        assert [(a["event_id"], a["partition"], a["duplicate"]) for a in answer["accepted"]] == [
            (e["event_id"], key_partition(e["order_id"].encode(), STOREFRONT_ORDERS.partitions), False) for e in events]
        # Sent again (a sender that lost the answer): the first answer, nothing written twice.
        status, again = await ingest.post(orders, {"events": events})
        assert status == 202 and [a["offset"] for a in again["accepted"]] == [a["offset"] for a in answer["accepted"]]
        assert all(a["duplicate"] for a in again["accepted"])
        # The same id with other content is another event under a used id: refused.
        status, conflict = await ingest.post(orders, {"events": [placed(first, f"{first}:placed", quantity=5)]})
        assert status == 409 and f"{first}:placed" in conflict["error"]
        # Five senders at once with one new event: written once, each told where it is.
        third = f"ing-{run_id}-3"
        together = await asyncio.gather(*(ingest.post(orders, {"events": [placed(third, f"{third}:placed")]})
                                          for _ in range(5)))
        assert {s for s, _ in together} == {202}
        assert len({(a["accepted"][0]["partition"], a["accepted"][0]["offset"]) for _, a in together}) == 1
        assert sum(not a["accepted"][0]["duplicate"] for _, a in together) == 1

        # Who may send what.
        assert (await ingest.post(orders, {"events": events}, who=""))[0] == 401
        status, body = await ingest.post(orders, {"events": events}, who="wh")
        assert status == 403 and "storefront" in body["error"]
        assert (await ingest.post(REDRIVE_TOPICS[TIMELINE].name, {"events": events}))[0] == 404
        assert (await ingest.post(PAYMENTS_EVENTS.name, {"events": events}))[0] == 403

        # Precise refusals; nothing of a refused request is written (its first event is valid).
        refused = f"ing-{run_id}-bad"
        good = placed(refused, f"{refused}:ok")
        bad = placed(refused, f"{refused}:bad")
        bad["payload"]["lines"][0]["quantity"] = "two"
        status, body = await ingest.post(orders, {"events": [good, bad]})
        assert status == 400 and body["problems"] == [{"index": 1, "path": "events[1].payload.lines[0].quantity",
                                                        "message": 'expected an integer, got the string \'two\''}], body
        zero = placed(refused, f"{refused}:zero", quantity=0)
        status, body = await ingest.post(orders, {"events": [zero]})
        assert status == 400 and "quantity_out_of_range" in body["problems"][0]["message"], body
        hostile = [
            (413, {"events": [good] * 6}), (400, {"events": []}), (400, {"events": "all of them"}), (400, [good]),
            (400, {"events": [good], "more": 1}), (400, {"events": [dict(good, type="OrderTeleported")]}),
            (400, {"events": [dict(good, occurred_at="2026-12-07T10:00:00")]}),
            (400, {"events": [dict(good, payload={"customer": "x" * 10})]}),
            (400, {"events": [dict(good, event_id=None)]}), (400, {"events": [{**good, "order_id": 7}]}),
            (400, {"events": [good, dict(good)]}),
        ]
        for expected, body in hostile:
            status, answer = await ingest.post(orders, body)
            assert status == expected and answer["error"], (body, status, answer)
        for expected, raw, kind in ((400, b"{not json", "application/json"), (400, b"[" * 5000, "application/json"),
                                    (413, b'{"events": ["' + b"x" * 70000 + b'"]}', "application/json"),
                                    (415, b"events=1", "application/x-www-form-urlencoded"),
                                    (400, "\u0000\ud800".encode("utf-8", "surrogatepass"), "application/json")):
            status, answer = await ingest.post(orders, raw=raw, content_type=kind)
            assert status == expected and answer["error"], (raw[:40], status, answer)

        # A principal sending too often is told to wait; another is not held back by it.
        flooded = [await ingest.post(orders, {"events": []}, who="flood") for _ in range(45)]
        assert [s for s, _ in flooded].count(429) >= 5 and all(s in (400, 429) for s, _ in flooded)
        assert (await ingest.post(orders, {"events": [good]}))[0] == 202

        # On the topic: each accepted event once, as sent; nothing of the refused ones but the good one
        # sent last.
        mine = lambda m: m.key().decode().startswith(f"ing-{run_id}-")  # noqa: E731
        written = decode_all(read_topic(catalog_topics, orders, keep=mine, until=lambda got: len(got) >= 4), STOREFRONT_ORDERS)
        await asyncio.sleep(2)
        written = decode_all(read_topic(catalog_topics, orders, keep=mine, until=lambda got: len(got) >= 4,
                                        timeout=10), STOREFRONT_ORDERS)
        assert sorted(e.event_id for e in written) == sorted([f"{first}:placed", f"{second}:placed", f"{third}:placed",
                                                              f"{refused}:ok"])
        assert {e.source for e in written} == {"storefront"}
        assert next(e for e in written if e.order_id == second).payload["lines"][0]["quantity"] == 3

        # A restart keeps what was accepted: a repeat after it is still not written again.
        process.stop()
        process = ingest.start()
        await process.wait_ready(timeout=60)
        status, again = await ingest.post(orders, {"events": events})
        assert status == 202 and all(a["duplicate"] for a in again["accepted"])
        async with aiohttp.ClientSession() as session, session.get(f"{ingest.url}/openapi.json") as r:
            spec = await r.json()
        assert "/topics/{topic}/events" in spec["paths"] and r.status == 200
    finally:
        process.stop(signal.SIGKILL)
