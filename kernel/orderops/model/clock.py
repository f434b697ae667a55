"""Clocks. Live processing ages things by the wall clock; replays and tests by event time, so a
replay of the same events reaches the same decisions whenever it runs.

Agents' actions follow the same clock: live they carry the wall time; in event-time mode the
timeline stamps them just after the order's latest event (``timeline.views.action_time``), and no
processor's event clock is moved by them (``Topic.moves_event_clock``): an action stamped with
another clock's time would give parked events of every other order deadlines on that clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def observe(self, event_time: datetime) -> None:
        """Tell the clock an event with this event time was processed."""


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def observe(self, event_time: datetime) -> None:
        pass


class EventTimeClock:
    """Time is the latest event time seen: it never runs backwards and never runs ahead."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.fromtimestamp(0, UTC)

    def now(self) -> datetime:
        return self._now

    def observe(self, event_time: datetime) -> None:
        if event_time > self._now:
            self._now = event_time

    def advance_to(self, moment: datetime) -> None:
        self.observe(moment)


def clock_from_env(mode: str) -> Clock:
    """``ORDEROPS_CLOCK``: ``wall`` (live, default) or ``event`` (replay)."""
    if mode == "wall":
        return WallClock()
    if mode == "event":
        return EventTimeClock()
    raise ValueError(f"ORDEROPS_CLOCK must be 'wall' or 'event', not {mode!r}")
