"""A processor started with ORDEROPS_LOG_FORMAT=json logs one JSON object a line, from start-up on,
and a line about an input record names its topic, partition, offset and order id."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from orderops_tools.testing import producer, start_processors

from orderops.model.catalog import FULFILLMENT, WAREHOUSE_FULFILLMENT
from orderops.ops.settings import key_partition

pytestmark = pytest.mark.broker


async def test_every_line_is_json_and_a_dead_letter_line_names_its_record(catalog_topics, run_id, tmp_path):
    process = start_processors(catalog_topics, tmp_path, {"ORDEROPS_INSTANCE": f"json{run_id}",
                                                         "ORDEROPS_LOG_FORMAT": "json"}, names=(FULFILLMENT,))[FULFILLMENT]
    try:
        await process.wait_ready(timeout=120)
        order_id = f"json-log-{run_id}"
        kafka = producer(catalog_topics)
        kafka.produce(WAREHOUSE_FULFILLMENT.name, key=order_id.encode(), value=b"not avro at all")
        assert kafka.flush(30) == 0
        deadline, said = time.monotonic() + 60, []
        while time.monotonic() < deadline and not said:
            await asyncio.sleep(0.5)
            lines = [json.loads(line) for line in process.log_path.read_text().splitlines() if line.strip()]
            said = [line for line in lines if line.get("order_id") == order_id]
        assert said, process.log_tail()
        [letter] = said
        assert letter["level"] == "ERROR" and "dead-lettered" in letter["message"]
        assert (letter["processor"], letter["topic"], letter["partition"]) == (
            FULFILLMENT, WAREHOUSE_FULFILLMENT.name, key_partition(order_id.encode(), WAREHOUSE_FULFILLMENT.partitions))
        assert isinstance(letter["offset"], int) and letter["logger"] and letter["time"]
        assert all(line["processor"] == FULFILLMENT and line["level"] for line in lines), "every line is the processor's"
    finally:
        process.stop(signal.SIGKILL)
