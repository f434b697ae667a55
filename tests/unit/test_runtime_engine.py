"""The private names of faust-streaming and aiokafka that ``orderops.runtime.engine`` uses exist, and
the versions installed are the ones they were read from. A new pin fails here first: read the
engine's docstring against the new sources, then move ``PINNED``. Then the engine's own parts that
need no broker: the consumer in the app's loop, the fetch policy, records handed to Faust. That
it consumes, commits and recovers on a real broker is shown by
tests/integration/test_kernel_on_kafka.py and every processor's tests."""

from __future__ import annotations

import asyncio
import inspect

import aiokafka.consumer.subscription_state as subscription_state
import faust
import mode
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from orderops.runtime import engine


def test_the_pinned_versions_are_installed():
    assert engine.versions_in_use() == engine.PINNED


def test_every_private_name_the_engine_uses_exists():
    consumer = faust_consumer.Consumer
    for name in ("_drain_messages", "_wait_next_records", "_commit"):
        assert callable(getattr(consumer, name)), name
    assert "_committed_offset" in inspect.getsource(consumer.__init__)
    assert list(inspect.signature(consumer._wait_next_records).parameters) == ["self", "timeout"]
    assert list(inspect.signature(consumer._drain_messages).parameters) == ["self", "fetcher"]
    assert callable(faust_aiokafka.Consumer._to_message)
    assert callable(faust_aiokafka.Consumer._new_consumer_thread)
    assert "self._stopped" in inspect.getsource(mode.Service.__init__)
    assert "self._subscription = SubscriptionState(" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert isinstance(subscription_state.SubscriptionState.subscription, property)
    assert isinstance(subscription_state.Subscription.assignment, property)
    assert isinstance(subscription_state.Assignment.tps, property)
    assert callable(subscription_state.Assignment.state_value)
    partition_init = inspect.getsource(subscription_state.TopicPartitionState.__init__)
    assert "self._position = None" in partition_init and "self.highwater = None" in partition_init
    assert "self.timestamp = None" in partition_init  # when the high watermark was last read (the fetcher sets it)
    assert isinstance(subscription_state.TopicPartitionState.paused, property)
    thread = faust_aiokafka.AIOKafkaConsumerThread
    for name in ("_ensure_consumer", "on_thread_stop", "call_thread", "cast_thread", "on_start"):
        assert callable(getattr(thread, name)), name
    for name in ("start", "maybe_start", "stop", "crash", "_stop_children", "_stop_futures", "_stop_exit_stacks",
                 "_stopped_set", "set_shutdown", "wait_first"):
        assert callable(getattr(mode.Service, name)), name
    assert "thread_loop" in inspect.signature(mode.threads.ServiceThread.__init__).parameters
    assert "suspend_flow" in inspect.getsource(faust_consumer.Consumer.__init__)
    assert "self._starting_fut = asyncio.ensure_future(" in inspect.getsource(mode.Worker.execute_from_commandline)
    fetcher = inspect.getsource(Fetcher)
    assert callable(Fetcher._proc_fetch_request)
    for name in ("self._records", "self._fetch_min_bytes", "self._fetch_max_wait_ms"):
        assert name in fetcher, name


def test_the_batch_consumer_overrides_the_fetch_loop_only_in_a_subclass():
    assert engine.BatchConsumer._drain_messages is not faust_aiokafka.Consumer._drain_messages
    assert faust_consumer.Consumer._drain_messages is not engine.BatchConsumer._drain_messages
    assert engine.BatchTransport.Consumer is engine.BatchConsumer


async def test_a_call_to_the_consumer_runs_in_the_callers_loop():
    app = faust.App("engine-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.transport = engine.BatchTransport(app.conf.broker_consumer, app)
    thread = app.consumer._thread
    assert isinstance(thread, engine.InLoopConsumer)
    loops = []

    async def where(answer):
        loops.append(asyncio.get_running_loop())
        return answer

    assert await thread.call_thread(where, 7) == 7
    assert loops == [asyncio.get_running_loop()]
    assert await thread.call_thread(lambda: "plain functions too") == "plain functions too"


def test_fetches_wait_for_records_to_gather_while_they_flow_and_not_when_idle():
    policy = engine.FetchPolicy(min_bytes=65536, max_wait_ms=50)
    assert policy.next_fetch(records_came=True) == (65536, 50)
    assert policy.next_fetch(records_came=False) == (1, 1500), "idle: Faust's fetch, ended by the first record"
    assert engine.FetchPolicy().next_fetch(True) == engine.FetchPolicy().next_fetch(False) == (1, 1500)


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
    engine.FetchPolicy(65536, 50).follow(fetcher)
    for _ in range(4):
        await fetcher._proc_fetch_request(None, 1, None)
    assert fetcher.asked == [(1, 1500), (1, 1500), (1, 1500), (65536, 50)]


async def test_each_fetch_sets_the_next():
    fetcher = Fetched([{}, {"tp": ["r1"]}, {"tp": ["r2"]}, {}, {}])
    engine.FetchPolicy(65536, 50).follow(fetcher)
    for _ in range(5):
        assert await fetcher._proc_fetch_request(None, 1, None) is True
        fetcher._records = {}  # the agent takes what came
    assert fetcher.asked == [(1, 1500), (1, 1500), (65536, 50), (65536, 50), (1, 1500)]


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
    await engine.handed_on(consumer, deliver, "r1")
    assert buffer == ["r1"] and consumer.raced == 0 and len(asyncio.all_tasks()) == tasks_before


async def test_a_delivery_that_waits_goes_on_when_what_it_waits_for_comes():
    consumer, buffer, room = _consumer(), [], asyncio.get_running_loop().create_future()

    async def deliver(message):
        buffer.append(("waiting", message, await room))
        await asyncio.sleep(0)  # a bare yield of the loop, as well as futures, is passed on
        buffer.append(("put", message))

    handing = asyncio.ensure_future(engine.handed_on(consumer, deliver, "r1"))
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

    handing = asyncio.ensure_future(engine.handed_on(consumer, deliver, "r1"))
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
        await engine.handed_on(consumer, undecodable, "r1")
    handing = asyncio.ensure_future(engine.handed_on(consumer, fails_later, "r2"))
    await asyncio.sleep(0.01)
    room.set_result(None)
    with pytest.raises(KeyError, match="r2"):
        await asyncio.wait_for(handing, 1)


WORKER_WHOSE_START_FAILS = """
import mode
from aiokafka.errors import KafkaConnectionError
from orderops.runtime.engine import start_failure

class Starting(mode.Service):
    async def on_start(self) -> None:
        raise KafkaConnectionError("Unable to bootstrap")

worker = mode.Worker(Starting(), loglevel="critical", quiet=True)
try:
    worker.execute_from_commandline()
except SystemExit as exc:
    print(type(start_failure(worker)).__name__, exc.code)
"""


def test_what_made_a_workers_start_fail_is_known_after_mode_exits():
    """mode's worker turns its start's error into SystemExit(1); ``Service.run`` starts again only
    when that error was the broker going away, and ``start_failure`` is how it knows."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WORKER_WHOSE_START_FAILS], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["KafkaConnectionError", "1"], done.stdout + done.stderr[-2000:]
