"""Faust's Kafka consumer runs in the app's own loop (orderops.oneloop): a call to it is a plain
await in the caller's loop, and its fetches are configured as told. That it consumes, commits and
recovers on a real broker this way is shown by tests/integration/test_kernel_on_kafka.py (and by
every processor test); this pins down the wiring."""

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


async def test_fetches_wait_as_configured(restore_defaults):
    oneloop.install(in_loop=True, fetch_min_bytes=65536, fetch_max_wait_ms=50)
    app = _app()
    kafka = app.consumer._thread._create_worker_consumer(app.transport)
    assert (kafka._fetch_min_bytes, kafka._fetch_max_wait_ms) == (65536, 50)


async def test_faust_thread_on_request(restore_defaults):
    oneloop.install(in_loop=False)
    app = _app()
    assert oneloop.consumer_runs_in(app.consumer) == "thread"
    kafka = app.consumer._thread._create_worker_consumer(app.transport)
    assert (kafka._fetch_min_bytes, kafka._fetch_max_wait_ms) == (1, 1500), "Faust's fetch settings by default"
