"""Lanes: many keys' work at once, each key's in the order handed in, never more than the limit."""

from __future__ import annotations

import asyncio

import pytest

from orderops.lanes import Lanes


class Recorder:
    """Work that waits until released, recording when each piece started and finished."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.running = 0
        self.most_running = 0
        self.release: dict[str, asyncio.Event] = {}

    def work(self, name: str):
        self.release[name] = asyncio.Event()

        async def run() -> None:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.log.append(("start", name))
            try:
                await self.release[name].wait()
            finally:
                self.running -= 1
                self.log.append(("end", name))
        return run


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_other_keys_go_ahead_while_a_keys_later_work_waits_for_its_earlier():
    lanes, recorder = Lanes(limit=4), Recorder()
    await lanes.submit("o1", recorder.work("o1-first"))
    await lanes.submit("o1", recorder.work("o1-second"))
    await lanes.submit("o2", recorder.work("o2"))
    await settle()
    assert recorder.log == [("start", "o1-first"), ("start", "o2")], "o2 runs beside o1; o1's second waits"
    recorder.release["o2"].set()
    recorder.release["o1-second"].set()  # released early: it must still wait for o1's first
    await settle()
    assert ("start", "o1-second") not in recorder.log
    recorder.release["o1-first"].set()
    await lanes.drain()
    assert recorder.log.index(("end", "o1-first")) < recorder.log.index(("start", "o1-second"))
    assert lanes.in_flight == 0 and lanes._last == {}


async def test_handing_in_waits_while_the_limit_is_in_flight():
    lanes, recorder = Lanes(limit=2), Recorder()
    await lanes.submit("a", recorder.work("a"))
    await lanes.submit("b", recorder.work("b"))
    third = asyncio.ensure_future(lanes.submit("c", recorder.work("c")))
    await settle()
    assert not third.done() and recorder.most_running == 2
    recorder.release["a"].set()
    await third
    recorder.release["b"].set()
    recorder.release["c"].set()
    await lanes.drain()
    assert recorder.most_running == 2 and [n for what, n in recorder.log if what == "end"] == ["a", "b", "c"]


async def test_work_that_raises_stops_the_lanes_and_is_raised_where_work_is_handed_in():
    lanes, recorder = Lanes(limit=3), Recorder()

    async def broken() -> None:
        raise RuntimeError("the ledger could not be written")

    await lanes.submit("o1", broken)
    await settle()
    with pytest.raises(RuntimeError, match="ledger could not be written"):
        await lanes.submit("o2", recorder.work("o2"))
    with pytest.raises(RuntimeError, match="ledger could not be written"):
        await lanes.drain()
    assert recorder.log == [], "nothing more started after the failure"


async def test_work_waiting_for_its_key_after_a_failure_does_not_run():
    lanes, recorder = Lanes(limit=3), Recorder()
    release = asyncio.Event()

    async def fails_later() -> None:
        await release.wait()
        raise RuntimeError("broken")

    await lanes.submit("o1", fails_later)
    await lanes.submit("o1", recorder.work("o1-after"))
    release.set()
    with pytest.raises(RuntimeError):
        await lanes.drain()
    assert recorder.log == []


async def test_cancel_stops_what_is_in_flight_and_what_waits():
    lanes, recorder = Lanes(limit=3), Recorder()
    await lanes.submit("o1", recorder.work("o1"))
    await lanes.submit("o1", recorder.work("o1-next"))
    await settle()
    await lanes.cancel()
    assert lanes.in_flight == 0 and recorder.log == [("start", "o1"), ("end", "o1")]


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        Lanes(0)
