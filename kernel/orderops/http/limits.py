"""Rates per caller: a token bucket each, refilled continuously."""

from __future__ import annotations

import time


class PerCallerLimit:
    """At most ``per_minute`` calls a minute per caller (a user, an upstream principal): a burst of
    up to ``per_minute`` at once, then as many as the bucket refills."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when counted)

    def take(self, caller: str, now: float | None = None) -> float | None:
        """One call by ``caller``: None when allowed, else the seconds until one would be."""
        now = time.monotonic() if now is None else now
        tokens, then = self._buckets.get(caller, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - then) * self.per_minute / 60)
        if tokens < 1:
            self._buckets[caller] = (tokens, now)
            return (1 - tokens) * 60 / self.per_minute
        self._buckets[caller] = (tokens - 1, now)
        return None
