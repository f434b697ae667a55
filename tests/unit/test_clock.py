from datetime import UTC, datetime, timedelta

import pytest

from orderops.model.clock import EventTimeClock, WallClock, clock_from_env

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def test_event_time_clock_follows_the_latest_event_and_never_runs_back():
    clock = EventTimeClock()
    clock.observe(T0)
    clock.observe(T0 - timedelta(hours=1))
    assert clock.now() == T0
    clock.observe(T0 + timedelta(days=3))
    assert clock.now() == T0 + timedelta(days=3)


def test_wall_clock_is_utc_now():
    before = datetime.now(UTC)
    assert before <= WallClock().now() <= datetime.now(UTC)


def test_clock_mode_comes_from_configuration():
    assert isinstance(clock_from_env("wall"), WallClock)
    assert isinstance(clock_from_env("event"), EventTimeClock)
    with pytest.raises(ValueError, match="'wall' or 'event'"):
        clock_from_env("sometimes")
