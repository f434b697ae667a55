"""The events ingest has written: a repeated event id is answered from here, not written again.

One SQLite file in the ingest's data directory, keyed by topic and event id, with a digest of the
event as it was sent (the same id with other content is a conflict, not a repeat) and where the
broker put it. An entry is kept ``remember_days``: a sender retries within minutes, and the
processors recognise a repeat by its event id for as long as they keep the order anyway.

An event is recorded once the broker acknowledged it. A crash between the two leaves it
unrecorded: the sender, who got no answer, sends it again and it is written a second time, which
readers drop by its event id (at-least-once, as everywhere in orderops).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Written:
    digest: str
    topic: str
    partition: int
    offset: int


class Accepted:
    def __init__(self, path: Path, remember_days: float = 7.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS accepted (topic TEXT NOT NULL, event_id TEXT NOT NULL, "
                         "digest TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL, "
                         "at REAL NOT NULL, PRIMARY KEY (topic, event_id))")
        self._db.execute("CREATE INDEX IF NOT EXISTS accepted_at ON accepted (at)")
        self.remember_seconds = remember_days * 86400

    def get(self, topic: str, event_id: str) -> Written | None:
        row = self._db.execute("SELECT digest, topic, partition, offset FROM accepted WHERE topic = ? AND event_id = ?",
                               (topic, event_id)).fetchone()
        return Written(*row) if row else None

    def put(self, event_id: str, written: Written) -> None:
        self._db.execute("INSERT OR IGNORE INTO accepted VALUES (?, ?, ?, ?, ?, ?)",
                         (written.topic, event_id, written.digest, written.partition, written.offset, time.time()))

    def forget_old(self) -> int:
        """Entries older than ``remember_days`` go; returns how many."""
        done = self._db.execute("DELETE FROM accepted WHERE at < ?", (time.time() - self.remember_seconds,))
        return done.rowcount

    def close(self) -> None:
        self._db.close()
