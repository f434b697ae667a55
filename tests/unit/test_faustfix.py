"""Offsets are never committed past a message that was not processed (orderops.faustfix): Faust's
own rule let a partition without a committed offset, or one missing offset, slip past."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
import pytest
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from orderops import faustfix
from orderops.catalog import PAYMENTS_EVENTS

faustfix.install()
TOPIC = TP(PAYMENTS_EVENTS.name, 5)


@pytest.fixture
def consumer():
    app = faust.App("faustfix-test", broker="kafka://127.0.0.1:1", store="memory://")
    return app.consumer


async def next_commit(consumer, acked, committed=None, start=None, gap=None):
    consumer._acked[TOPIC] = list(acked)
    consumer._acked_index[TOPIC] = set(acked)
    if committed is not None:
        consumer._committed_offset[TOPIC] = committed
    if start is not None:
        faustfix._starts(consumer)[TOPIC] = start
    if gap:
        consumer._gap[TOPIC].addi(*gap)
    offset = consumer._new_offset(TOPIC)
    await asyncio.sleep(0)  # let a re-read attempt run (it fails here: no broker, and says so)
    return offset


@pytest.mark.parametrize("acked, committed, start, gap, commit", [
    ([0, 1, 2], None, 0, None, 3),          # a new partition, read from its start
    ([1, 2], None, 0, None, None),          # its first message never processed: Faust committed 3
    ([5, 6], 5, None, None, 7),
    ([6, 7], 5, None, None, None),          # offset 5 missing: Faust committed 8 (its "> 1")
    ([6, 7], 5, None, (5, 6), 8),           # a known gap (no message at 5) is not a missing message
    ([7, 8], None, None, None, 9),          # nothing known about where it starts: Faust's rule
])
async def test_a_commit_starts_where_the_last_one_left_off(consumer, acked, committed, start, gap, commit):
    assert await next_commit(consumer, acked, committed, start, gap) == commit


def test_the_rule():
    assert faustfix.expected_first(None, 0) == 0 and faustfix.expected_first(4, 0) == 4
    assert faustfix.expected_first(None, None) is None


async def test_a_flush_waits_until_every_buffered_message_reached_the_client():
    """Faust's buffer flush gives up once no message left for 0.1 s: with a slow broker it returned
    with table changelog records still buffered, and a commit or a ledger write went ahead."""
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    sent = []

    class SlowChannel:
        async def publish_message(self, fut, wait=False):
            await asyncio.sleep(0.3)
            sent.append(fut)

    for n in range(3):
        buffer.put(SimpleNamespace(message=SimpleNamespace(channel=SlowChannel()), n=n))
    await buffer.start()
    try:
        await buffer.flush()
        assert len(sent) == 3 and buffer.size == 0
    finally:
        await buffer.stop()


async def test_the_records_of_a_whole_completion_do_not_make_the_conductor_wait_and_warn(caplog):
    from orderops.writebehind import MAX_COMPLETED_TOGETHER

    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    for n in range(MAX_COMPLETED_TOGETHER * 4):  # a timeline step writes its view and up to three entries
        buffer.put(SimpleNamespace(n=n))
    await asyncio.wait_for(buffer.wait_until_ebb(), 1)  # not started: a wait would never end
    assert "producer buffer full" not in caplog.text
