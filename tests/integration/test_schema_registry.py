"""The Confluent framing against a real Schema Registry (Apicurio, as `make run` runs it): orderops's
schemas registered with `orderops schemas register`; order-state reads upstream events framed
with a schema id; an upstream team's new optional field, registered and written before any reader
shipped, is read, while the same event in single-object framing is an unknown writer, dead-lettered
as today; an id the registry does not know is dead-lettered, saying so."""

from __future__ import annotations

import asyncio
import copy
import io
import signal
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from fastavro import schemaless_writer
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.simulator import Config, plan
from orderops_tools.testing import producer, read_topic, start_processors

from orderops.codec.avro import MAGIC, Codec
from orderops.codec.registry import SchemaRegistryClient
from orderops.codec.schemas import ResolvedSchema
from orderops.model.catalog import ORDER_STATE, PAYMENTS_EVENTS, STOREFRONT_ORDERS, dead_letter_topic
from orderops.model.envelope import Envelope
from orderops.runtime.deadletter import ERROR_CLASS

pytestmark = pytest.mark.broker
START = datetime(2026, 10, 1, 8, tzinfo=UTC)


def _story(order_id: str, codec: Codec) -> Story:
    story = Story(order_id, codec=codec)
    story.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(), lines=[line("l1", "Blue mug", 2, "12.50")], instruments=[card("card-1", "25.00")],
        shipping_address=address(), total=money("25.00"))
    story.after(minutes=2).on(PAYMENTS_EVENTS).PaymentAuthorized(
        instrument_id="card-1", amount=money("25.00"), authorization_id=f"auth-{order_id}")
    return story


def _with_gift_message(schema: ResolvedSchema) -> ResolvedSchema:
    """The upstream team's next OrderEvent: OrderPlaced with an optional gift message."""
    evolved = copy.deepcopy(schema.schema)
    placed = next(b for b in evolved["fields"][4]["type"] if isinstance(b, dict) and b["name"] == "OrderPlaced")
    placed["fields"].append({"name": "gift_message", "type": ["null", "string"], "default": None})
    return ResolvedSchema(schema.name, evolved)


async def test_confluent_framed_events_resolve_through_the_registry(catalog_topics, schema_registry, run_id, tmp_path,
                                                                    monkeypatch):
    registered = subprocess.run([sys.executable, "-m", "orderops.ops.cli", "schemas", "register", "--url",
                                 schema_registry], capture_output=True, text=True, timeout=120)
    assert registered.returncode == 0, registered.stderr
    assert f"{STOREFRONT_ORDERS.name}-value" in registered.stdout and "orderops.storefront.OrderEvent" in registered.stdout

    client = SchemaRegistryClient(schema_registry)
    codec = Codec(schema_registry=client)
    # The simulator writes the framing too (`--framing confluent`): every value a schema id, and
    # each decodes to what it wrote.
    monkeypatch.setenv("ORDEROPS_SCHEMA_REGISTRY_URL", schema_registry)
    sends, _ = plan(Config(seed=3, orders=3, framing="confluent"), START)
    assert sends and all(s.value[0] == 0 for s in sends)
    assert [codec.decode(s.value, s.topic.value_schema).record for s in sends] == \
           [codec.decode(s.value, s.topic.value_schema).record for s in plan(Config(seed=3, orders=3), START)[0]]

    process = start_processors(catalog_topics, tmp_path, {"ORDEROPS_INSTANCE": f"sr{run_id}",
                                                         "ORDEROPS_SCHEMA_REGISTRY_URL": schema_registry},
                               names=(ORDER_STATE,))[ORDER_STATE]
    try:
        await process.wait_ready(timeout=120)
        kafka = producer(catalog_topics)
        framed, evolved, unframed, unknown = (f"sr-{run_id}-{n}" for n in ("framed", "evolved", "single", "unknown"))
        for topic, key, value in _story(framed, codec).encoded("confluent"):
            assert value[0] == 0
            kafka.produce(topic.name, key=key, value=value)

        # A new optional field, registered by its writer: a new id; the reader has never seen it.
        envelope_schema = codec.registry.get(STOREFRONT_ORDERS.value_schema)
        newer = _with_gift_message(envelope_schema)
        newer_id = client.id_of(STOREFRONT_ORDERS.name, newer)
        assert newer_id != client.id_of(STOREFRONT_ORDERS.name, envelope_schema)

        def written_by_newer(order_id: str) -> tuple[bytes, bytes]:
            story = _story(order_id, codec)
            placed: Envelope = story.events[0].envelope
            record = placed.to_record()
            record["payload"] = (placed.type, {**placed.payload, "gift_message": "Happy birthday"})
            body = io.BytesIO()
            schemaless_writer(body, newer.compiled, record)
            return body.getvalue(), story.encoded("confluent")[1][2]

        body, authorized = written_by_newer(evolved)
        kafka.produce(STOREFRONT_ORDERS.name, key=evolved.encode(), value=bytes([0]) + newer_id.to_bytes(4, "big") + body)
        kafka.produce(PAYMENTS_EVENTS.name, key=evolved.encode(), value=authorized)
        body, _ = written_by_newer(unframed)
        kafka.produce(STOREFRONT_ORDERS.name, key=unframed.encode(), value=MAGIC + newer.fingerprint + body)
        kafka.produce(STOREFRONT_ORDERS.name, key=unknown.encode(), value=bytes([0]) + (999_999).to_bytes(4, "big") + body)
        assert kafka.flush(30) == 0

        for order_id in (framed, evolved):
            for _ in range(120):
                status, order = await process.get_json(f"/orders/{order_id}")
                if status == 200 and order.get("payments"):
                    break
                await asyncio.sleep(0.5)
            assert status == 200 and order["order_id"] == order_id and order["payments"], (order_id, order)

        letters = read_topic(catalog_topics, dead_letter_topic(ORDER_STATE).name,
                             keep=lambda m: m.key() in (unframed.encode(), unknown.encode()),
                             until=lambda got: {m.key() for m in got} == {unframed.encode(), unknown.encode()})
        reasons = {m.key().decode(): dict(m.headers())[ERROR_CLASS].decode() for m in letters}
        assert reasons == {unframed: "unknown-writer-schema", unknown: "unknown-schema-id"}, reasons
        assert (await process.get_json(f"/orders/{unframed}"))[0] == 404
    finally:
        process.stop(signal.SIGKILL)
