"""The producer of the upstream stand-ins (the simulator, the refund desk): what a real upstream
system's outbox does when the broker does not take a message — it sends it again.

Found by the 20,000-event fault run: after the broker's SIGKILL and SIGTERM restarts, the
simulator's librdkafka producer delivered nothing more; every message it was given timed out
after ``message.timeout.ms`` (then five minutes), and the run went on with a fifth of its events.
Here a send the broker refused or that timed out (after 30 s, not 5 min) retires the producer:
everything it still holds is purged and sent again, in the order it was given, by a new one. A
message that had in fact been written comes twice; every reader drops the second by its event id.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, TextIO

from orderops.security import client_config
from orderops.settings import PRODUCER_DEFAULTS

MESSAGE_TIMEOUT_MS = 30_000


class ResendingProducer:
    def __init__(self, bootstrap: str, name: str, out: TextIO = sys.stderr,
                 message_timeout_ms: int = MESSAGE_TIMEOUT_MS) -> None:
        self.bootstrap, self.name, self.out, self.message_timeout_ms = bootstrap, name, out, message_timeout_ms
        self.resent = 0  # messages sent again after a timeout or a retriable refusal
        self.lost = 0  # messages the broker refused for good (too large, not authorized...): told, not sent again
        self._failed: deque[tuple[str, bytes | None, bytes | None]] = deque()
        self._retired: list[Any] = []
        self._last_error = ""
        self._producer = self._new()

    def _new(self) -> Any:
        from confluent_kafka import Producer

        return Producer(client_config(self.bootstrap, **{**PRODUCER_DEFAULTS,
                                                         "message.timeout.ms": self.message_timeout_ms}))

    def _delivered(self, err: Any, message: Any) -> None:
        from confluent_kafka import KafkaError

        if err is None:
            return
        if err.retriable() or err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_QUEUE,
                                             KafkaError._PURGE_INFLIGHT, KafkaError._TIMED_OUT):
            self._failed.append((message.topic(), message.key(), message.value()))
            self._last_error = str(err)
            return
        self.lost += 1
        print(f"{self.name}: {message.topic()} refused a message of {(message.key() or b'').decode()} for good: {err}; "
              f"it is not on the topic", file=self.out, flush=True)

    def produce(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered)
        self.poll()

    def poll(self) -> None:
        """Serve delivery reports; if any send failed, retire the producer and send again."""
        self._producer.poll(0)
        for retired in self._retired:
            retired.poll(0)
        if not self._failed:
            return
        old = self._producer
        old.purge(in_queue=True, in_flight=True)  # what it still holds comes back as failed, in order
        old.poll(0)
        self._retired = [p for p in self._retired if len(p)] + ([old] if len(old) else [])
        self._producer = self._new()
        again = list(self._failed)
        self._failed.clear()
        print(f"{self.name}: the broker did not take {len(again)} message(s) ({self._last_error}); a new producer "
              f"sends them again in their order (a reader drops any it already has by event id)",
              file=self.out, flush=True)
        for topic, key, value in again:
            self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered)
        self.resent += len(again)

    def flush(self, timeout: float) -> int:
        """Wait until every message is acknowledged, sending again what fails; the number that were
        not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            waiting = len(self._producer) + sum(len(p) for p in self._retired) + len(self._failed)
            if not waiting or time.monotonic() >= deadline:
                return waiting
            self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
