"""Work for many orders at once, each order's in the order it was handed in.

An agent whose work waits on the outside world (the notifier: a durable ledger write, an SMTP
conversation, a webhook, each a round trip) spends most of its time waiting if it handles one
event after another. ``Lanes`` runs up to ``limit`` pieces of work at once, one lane per key: a
key's work starts when the work handed in before it for the same key has finished, so an order's
events are still applied in their log order, while other orders' go ahead.

Handing in waits while ``limit`` pieces are running or waiting for their lane (backpressure on the
stream). A piece of work that raises stops the lanes: the next ``submit`` (or ``drain``) raises
it, as the agent would have raised it handling events one at a time.

Acknowledging is the work's business: a Faust consumer commits an offset only once every offset
before it is acknowledged, so out-of-order acknowledgements never let a commit pass unfinished work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable


class Lanes:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"lanes: limit {limit}: at least 1 piece of work at a time")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._last: dict[Hashable, asyncio.Task] = {}  # each key's latest work: the next one for the key waits for it
        self._running: set[asyncio.Task] = set()
        self._failure: BaseException | None = None

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def submit(self, key: Hashable, work: Callable[[], Awaitable[None]]) -> None:
        """Start ``work()`` after the key's earlier work; wait first while ``limit`` are in flight.
        The task is created here, in the caller's context (Faust's current event goes with it)."""
        self._raise_failure()
        await self._slots.acquire()
        self._raise_failure()
        before = self._last.get(key)
        task = asyncio.ensure_future(self._run(key, before, work))
        self._last[key] = task
        self._running.add(task)

    async def drain(self) -> None:
        """Wait until every piece handed in has finished (a piece that raised: raised here)."""
        while self._running:
            await asyncio.wait(set(self._running))
        self._raise_failure()

    async def cancel(self) -> None:
        """Stop the work in flight (the agent is stopping): cancelled and waited for."""
        for task in self._running:
            task.cancel()
        while self._running:
            await asyncio.wait(set(self._running))

    async def _run(self, key: Hashable, before: asyncio.Task | None, work: Callable[[], Awaitable[None]]) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])  # finished, however it ended
            if self._failure is None:
                await work()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # kept, to be raised in the agent by the next submit
            if self._failure is None:
                self._failure = exc
        finally:
            task = asyncio.current_task()
            self._running.discard(task)
            if self._last.get(key) is task:
                del self._last[key]
            self._slots.release()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
