"""Faust's Kafka consumer runs in the app's own loop (orderops.oneloop): a call to it is a plain
await in the caller's loop, and its fetches wait for records to gather only while records flow.
That it consumes, commits and recovers on a real broker this way is shown by
tests/integration/test_kernel_on_kafka.py (and by every processor test); this pins down the wiring."""

from __future__ import annotations

import asyncio

import faust
import pytest

from orderops import oneloop


@pytest.fixture
def restore_defaults():
    yield
    oneloop.install()


def _app() -> faust.App:
    return faust.App("oneloop-test", broker="kafka://127.0.0.1:1", store="memory://")


async def test_a_call_to_the_consumer_runs_in_the_callers_loop(restore_defaults):
    oneloop.install(in_loop=True)
    app = _app()
    thread = app.consumer._thread
    assert oneloop.consumer_runs_in(app.consumer) == "app-loop"
    loops = []

    async def where(answer):
        loops.append(asyncio.get_running_loop())
        return answer

    assert await thread.call_thread(where, 7) == 7
    assert loops == [asyncio.get_running_loop()]
    assert await thread.call_thread(lambda: "plain functions too") == "plain functions too"


def test_fetches_wait_for_records_to_gather_while_they_flow_and_not_when_idle():
    policy = oneloop.FetchPolicy(min_bytes=65536, max_wait_ms=50)
    assert policy.next_fetch(records_came=True) == (65536, 50)
    assert policy.next_fetch(records_came=False) == (1, 1500), "idle: Faust's fetch, ended by the first record"
    assert oneloop.FetchPolicy().next_fetch(True) == oneloop.FetchPolicy().next_fetch(False) == (1, 1500)


class Fetched:
    """What FetchPolicy.follow touches of aiokafka's fetcher: the settings it builds requests
    with, its buffer of fetched records, and the coroutine that does one fetch."""

    def __init__(self, answers):
        self._fetch_min_bytes, self._fetch_max_wait_ms, self._records = 1, 1500, {}
        self.answers, self.asked = list(answers), []

    async def _proc_fetch_request(self, assignment, node_id, request):
        self.asked.append((self._fetch_min_bytes, self._fetch_max_wait_ms))
        self._records = self.answers.pop(0)
        return True


async def test_records_left_waiting_in_the_buffer_are_not_records_coming():
    paused = ["r0"]
    fetcher = Fetched([{"paused": paused}, {"paused": paused}, {"paused": paused, "tp": ["r1"]}, {"paused": paused}])
    fetcher._records = {"paused": paused}
    oneloop.FetchPolicy(65536, 50).follow(fetcher)
    for _ in range(4):
        await fetcher._proc_fetch_request(None, 1, None)
    assert fetcher.asked == [(1, 1500), (1, 1500), (1, 1500), (65536, 50)]


async def test_each_fetch_sets_the_next():
    fetcher = Fetched([{}, {"tp": ["r1"]}, {"tp": ["r2"]}, {}, {}])
    oneloop.FetchPolicy(65536, 50).follow(fetcher)
    for _ in range(5):
        assert await fetcher._proc_fetch_request(None, 1, None) is True
        fetcher._records = {}  # the agent takes what came
    assert fetcher.asked == [(1, 1500), (1, 1500), (65536, 50), (65536, 50), (1, 1500)]


async def test_faust_thread_on_request(restore_defaults):
    oneloop.install(in_loop=False)
    app = _app()
    assert oneloop.consumer_runs_in(app.consumer) == "thread"


def _consumer():
    """What handed_on uses of Faust's consumer: wait_first (mode's) and the suspend_flow event."""
    from mode import Service
    from mode.utils.locks import Event

    class Consumer(Service):
        def __init__(self) -> None:
            super().__init__()
            self.suspend_flow = Event()
            self.raced = 0

        async def wait_first(self, *coros, timeout=None):
            self.raced += 1
            return await super().wait_first(*coros, timeout=timeout)

    return Consumer()


async def test_a_record_whose_delivery_does_not_wait_is_handed_on_without_a_race():
    consumer, buffer = _consumer(), []

    async def deliver(message):
        buffer.append(message)

    tasks_before = len(asyncio.all_tasks())
    await oneloop.handed_on(consumer, deliver, "r1")
    assert buffer == ["r1"] and consumer.raced == 0 and len(asyncio.all_tasks()) == tasks_before


async def test_a_delivery_that_waits_goes_on_when_what_it_waits_for_comes():
    consumer, buffer, room = _consumer(), [], asyncio.get_running_loop().create_future()

    async def deliver(message):
        buffer.append(("waiting", message, await room))
        await asyncio.sleep(0)  # a bare yield of the loop, as well as futures, is passed on
        buffer.append(("put", message))

    handing = asyncio.ensure_future(oneloop.handed_on(consumer, deliver, "r1"))
    await asyncio.sleep(0.01)
    assert buffer == [] and not handing.done()
    room.set_result("room")
    await asyncio.wait_for(handing, 1)
    assert buffer == [("waiting", "r1", "room"), ("put", "r1")] and consumer.raced == 1


async def test_a_delivery_still_waiting_when_the_flow_is_suspended_is_dropped_as_faust_drops_it():
    consumer, buffer, cleaned_up = _consumer(), [], []
    never = asyncio.get_running_loop().create_future()

    async def deliver(message):
        try:
            await never
            buffer.append(message)
        finally:
            cleaned_up.append(message)

    handing = asyncio.ensure_future(oneloop.handed_on(consumer, deliver, "r1"))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()  # a rebalance began
    await asyncio.wait_for(handing, 1)
    await asyncio.sleep(0.01)
    assert buffer == [] and cleaned_up == ["r1"] and never.cancelled()


async def test_a_delivery_that_fails_fails_the_drain_before_or_after_it_waited():
    consumer, room = _consumer(), asyncio.get_running_loop().create_future()

    async def undecodable(message):
        raise ValueError(f"cannot decode {message}")

    async def fails_later(message):
        await room
        raise KeyError(message)

    with pytest.raises(ValueError, match="cannot decode r1"):
        await oneloop.handed_on(consumer, undecodable, "r1")
    handing = asyncio.ensure_future(oneloop.handed_on(consumer, fails_later, "r2"))
    await asyncio.sleep(0.01)
    room.set_result(None)
    with pytest.raises(KeyError, match="r2"):
        await asyncio.wait_for(handing, 1)


def test_records_are_handed_on_by_orderops_loop_unless_faust_s_is_asked_for(restore_defaults):
    from faust.transport.consumer import Consumer

    oneloop.install(faust_drain=True)
    assert Consumer._drain_messages is oneloop._faust_drain_messages and oneloop.records_handed_on_by() == "faust"
    oneloop.install()
    assert Consumer._drain_messages is oneloop.drain_messages and oneloop.records_handed_on_by() == "orderops"
