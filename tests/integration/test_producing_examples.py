"""docs/producing.md's examples, run as an upstream team would run them: each one's event lands
on storefront.orders, readable by orderops's codec and meaningful to its checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from orderops_tools.testing import IngestProcess, read_topic

from orderops.codec.avro import Codec
from orderops.codec.registry import SchemaRegistryClient
from orderops.model import contract
from orderops.model.catalog import STOREFRONT_ORDERS
from orderops.model.envelope import Envelope

pytestmark = pytest.mark.broker
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
# `orderops` on PATH, as for anyone who installed it
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _landed(bootstrap: str, order_id: str, codec: Codec) -> Envelope:
    [message] = read_topic(bootstrap, STOREFRONT_ORDERS.name, keep=lambda m: m.key() == order_id.encode(),
                           until=lambda got: len(got) >= 1)
    event = Envelope.from_record(codec.decode(message.value(), STOREFRONT_ORDERS.value_schema).record)
    assert (event.event_id, event.order_id, event.short_type) == (f"{order_id}:placed", order_id, "OrderPlaced")
    assert contract.violation(event, None) is None, "the example's event passes the processors' checks"
    return event


def test_the_kafka_examples_write_events_orderops_reads(catalog_topics, schema_registry, run_id):
    single, framed = f"ex-{run_id}-single", f"ex-{run_id}-confluent"
    for command in ([sys.executable, str(EXAMPLES / "produce_single_object.py"), single, catalog_topics],
                    [sys.executable, str(EXAMPLES / "produce_confluent.py"), framed, schema_registry, catalog_topics]):
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    assert _landed(catalog_topics, single, Codec()).payload["total"]["amount"] == 25
    event = _landed(catalog_topics, framed, Codec(schema_registry=SchemaRegistryClient(schema_registry)))
    assert event.payload["lines"][0]["quantity"] == 2


async def test_the_curl_example_sends_through_the_ingest(catalog_topics, run_id, tmp_path):
    ingest = IngestProcess(catalog_topics, tmp_path, {"storefront-dev": "storefront"})
    process = ingest.start()
    try:
        await process.wait_ready(timeout=60)
        order_id = f"ex-{run_id}-curl"
        done = subprocess.run([str(EXAMPLES / "ingest.sh"), order_id, ingest.tokens["storefront-dev"], ingest.url],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and '"duplicate": false' in done.stdout, done.stdout + done.stderr
        assert _landed(catalog_topics, order_id, Codec()).source == "storefront"
    finally:
        process.stop(signal.SIGKILL)
