"""What an outbox does when the broker does not take a record: it sends it again, in order, through
a client that works.

Found by the 20,000-event fault run: after the broker's SIGKILL and SIGTERM restarts, the
simulator's librdkafka producer delivered nothing more; every message it was given timed out
after ``message.timeout.ms`` (then five minutes), and the run went on with a fifth of its events.
And librdkafka's idempotent producer can fail fatally (an error it cannot repair without losing
order, such as a batch refused under ``enable.gapless.guarantee``): after that, every send fails.

``Relay`` holds every record handed to its librdkafka client until the broker acknowledged it or
refused it for good. When a record fails for a reason that may pass (timed out in the client,
refused as retriable) or the client fails fatally, the client is retired: what it still holds is
purged, and a new client sends every unsettled record again, in the order it was given. A record
that had in fact been written comes twice: every reader drops the second by its event id, and a
changelog record repeats its key's value, in order. Two users: ``ResendingProducer`` (the upstream
stand-ins: the simulator, the refund desk) and ``faustproducer.RdKafkaProducer`` (every record a
processor writes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as Client

from orderops.ops.security import client_config
from orderops.ops.settings import PRODUCER_DEFAULTS

MESSAGE_TIMEOUT_MS = 30_000
FATAL = "fatal"  # the code of a retirement for the client's own fatal error
FULL_QUEUE_POLL_SECONDS = 0.05  # a new client's queue is full while records are sent again: serve its acks

# A record that timed out in the client, or was purged from it, may well be taken later.
TRANSIENT = frozenset({KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._PURGE_QUEUE,
                       KafkaError._PURGE_INFLIGHT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                       KafkaError._FATAL})


def worth_sending_again(error: Any) -> bool:
    return bool(error.retriable() or error.fatal()) or error.code() in TRANSIENT


def _fatal(exc: KafkaException) -> KafkaError | None:
    """The client's fatal error, if that is what ``exc`` reports (how a call says it failed fatally)."""
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) and _is_fatal(error) else None


def _is_fatal(error: Any) -> bool:
    return bool(error.fatal()) or error.code() == KafkaError._FATAL


class Relay:
    """One librdkafka producer at a time, and every record handed to it that is not settled yet.

    ``settled(token, error, message)`` is called once per record, from ``poll`` (or ``flush``): with
    ``error`` None when the broker acknowledged it, else with the error it refused it with for good.
    ``retired(records, reason, code)`` is told each time a client is retired, why (``code``: the
    name of librdkafka's error, ``fatal`` for the client's own) and how many records a new one sends
    again."""

    def __init__(self, config: dict[str, Any], settled: Callable[[Any, Any, Any], None],
                 retired: Callable[[int, str, str], None]) -> None:
        self._config, self._settled, self._retired = config, settled, retired
        self._unsettled: dict[int, tuple[str, bytes | None, bytes | None, dict[str, Any], Any]] = {}  # in given order
        self._next_record = 0
        self._generation = 0
        self._retire_because: tuple[str, str] | None = None  # (what happened, its code)
        self._retired_clients: list[Any] = []
        self.resent = 0  # records sent again by a new client
        self.client = self._new_client()

    def _new_client(self) -> Any:
        return Client({**self._config, "error_cb": self._client_error})

    def __len__(self) -> int:
        return len(self._unsettled)

    def produce(self, topic: str, value: bytes | None, key: bytes | None, token: Any, **options: Any) -> None:
        """Hand a record to the client (BufferError when its queue is full: nothing was handed over)."""
        record = self._next_record
        try:
            self._produce(record, topic, value, key, options)
        except KafkaException as exc:
            if (fatal := _fatal(exc)) is None:
                raise
            self._client_error(fatal)
            self._retire()
            self._produce(record, topic, value, key, options)
        self._next_record += 1
        self._unsettled[record] = (topic, value, key, options, token)

    def _produce(self, record: int, topic: str, value: bytes | None, key: bytes | None, options: dict[str, Any]) -> None:
        self.client.produce(topic, value, key, on_delivery=partial(self._report, record, self._generation), **options)

    def poll(self, timeout: float = 0) -> None:
        """Serve the delivery reports (``settled`` is called here); retire the client if it failed."""
        self._serve(self.client, timeout)
        self._retired_clients = [client for client in self._retired_clients if len(client)]
        for client in self._retired_clients:
            self._serve(client, 0)
        if self._retire_because is not None:
            self._retire()

    def flush(self, timeout: float) -> int:
        """Wait until every record is settled, sending again what fails; the number that were not
        within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if not self._unsettled or time.monotonic() >= deadline:
                return len(self._unsettled)
            self._serve(self.client, min(0.5, max(0.0, deadline - time.monotonic())), flush=True)

    def _serve(self, client: Any, timeout: float, flush: bool = False) -> None:
        try:
            client.flush(timeout) if flush else client.poll(timeout)
        except KafkaException as exc:  # how confluent-kafka reports the client's fatal error
            if (fatal := _fatal(exc)) is None:
                raise
            if client is self.client:
                self._client_error(fatal)

    def _client_error(self, error: Any) -> None:
        """librdkafka's ``error_cb``, and a fatal error raised by a call: only a fatal one retires the
        client (librdkafka retries the others itself, and logs them)."""
        if _is_fatal(error) and self._retire_because is None:
            self._retire_because = (f"the client failed fatally: {error.str()}", FATAL)

    def _report(self, record: int, generation: int, error: Any, message: Any) -> None:
        if record not in self._unsettled:
            return  # settled by another client's report
        if error is None or not worth_sending_again(error):
            self._settled(self._unsettled.pop(record)[4], error, message)
        elif generation == self._generation and self._retire_because is None:  # else: sent again since
            self._retire_because = (f"{message.topic()}[{message.partition()}]: {error.str()} ({error.name()})",
                                    FATAL if _is_fatal(error) else error.name().lstrip("_").lower())

    def _retire(self) -> None:
        assert self._retire_because is not None  # _retire is called only once a reason is set
        old, (because, code) = self.client, self._retire_because
        self._generation += 1  # reports of what the old client held are of an older generation now
        self.client, self._retire_because = self._new_client(), None  # before the old one's errors are served
        old.purge(in_queue=True, in_flight=True)
        self._serve(old, 0)
        if len(old):
            self._retired_clients.append(old)
        again = list(self._unsettled.items())
        self._retired(len(again), because, code)
        for record, (topic, value, key, options, _) in again:
            while record in self._unsettled:
                try:
                    self._produce(record, topic, value, key, options)
                    break
                except BufferError:
                    self.client.poll(FULL_QUEUE_POLL_SECONDS)
        self.resent += len(again)


class ResendingProducer:
    """The upstream stand-ins' producer: a record the broker refused for good is told and counted."""

    def __init__(self, bootstrap: str, name: str, out: TextIO = sys.stderr,
                 message_timeout_ms: int = MESSAGE_TIMEOUT_MS) -> None:
        self.name, self.out = name, out
        self.lost = 0  # messages the broker refused for good (too large, not authorized...): told, not sent again
        self._relay = Relay(client_config(bootstrap, **{**PRODUCER_DEFAULTS, "message.timeout.ms": message_timeout_ms}),
                            self._settled, self._retired)

    @property
    def resent(self) -> int:
        """Messages sent again after a timeout, a retriable refusal or the client's fatal error."""
        return self._relay.resent

    def _settled(self, token: Any, error: Any, message: Any) -> None:
        if error is None:
            return
        self.lost += 1
        print(f"{self.name}: {message.topic()} refused a message of {(message.key() or b'').decode()} for good: {error}; "
              f"it is not on the topic", file=self.out, flush=True)

    def _retired(self, records: int, because: str, code: str) -> None:
        print(f"{self.name}: the broker did not take {records} message(s) ({because}); a new producer sends them again "
              f"in their order (a reader drops any it already has by event id)", file=self.out, flush=True)

    def produce(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._relay.produce(topic, value, key, None)
        self._relay.poll()

    def poll(self) -> None:
        """Serve delivery reports; if a send failed, a new producer sends again."""
        self._relay.poll()

    def flush(self, timeout: float) -> int:
        """Wait until every message is acknowledged, sending again what fails; the number that were
        not within ``timeout`` seconds."""
        return self._relay.flush(timeout)
