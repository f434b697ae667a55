"""A batch's records handed to librdkafka as they are made, and one wait for all of them.

Every record goes through ``resend.Relay``: one that times out or is refused retriably, or the
client failing fatally, retires the client and a new one sends every unsettled record again, in
order. A record refused for good is reported (``BatchAcks.refused``) for the batch to dead-letter
its cause. The wait runs librdkafka's flush in a thread of its own, which releases the GIL while it
waits: one hop per batch, not a future per record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from orderops.ops.security import client_config
from orderops.ops.settings import PRODUCER_DEFAULTS, ServiceSettings
from orderops.runtime.faustproducer import LibrdkafkaLog, SendFailed
from orderops.runtime.resend import Relay

log = logging.getLogger("orderops.runtime.producer")
FULL_QUEUE_POLL_SECONDS = 0.05


def batch_producer_config(settings: ServiceSettings) -> dict[str, Any]:
    """librdkafka's settings for a processor's batch producer: orderops' partitioner (murmur2, as
    every producer here), idempotent, ``acks=all``; how long a record may take before its client is
    replaced (``ORDEROPS_PRODUCER_MESSAGE_TIMEOUT_SECONDS``)."""
    return client_config(settings.kafka.bootstrap, **{
        **PRODUCER_DEFAULTS,
        "client.id": f"{settings.service}-batches",
        "linger.ms": settings.producer_linger_ms,
        "message.timeout.ms": int(settings.producer_message_timeout_seconds * 1000),
        "logger": LibrdkafkaLog(),
    })


@dataclass
class BatchAcks:
    """What the broker said of one batch's records: each acknowledged record's offset, by the number
    ``BatchProducer.send`` gave it, and the records it refused for good."""

    offsets: dict[int, int] = field(default_factory=dict)
    refused: list[tuple[int, SendFailed]] = field(default_factory=list)


class BatchProducer:
    """One processor's librdkafka producer for its batches (outputs, changelog records, dead letters)."""

    def __init__(self, config: dict[str, Any], processor: str, retired: Callable[[int, str, str], None]) -> None:
        self.processor = processor
        self._delivery = BatchAcks()
        self._relay = Relay(config, self._settled, retired)
        self._next = 0
        self._waiting = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{processor}-flush")

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> int:
        """Hand one record over; its number in the ``BatchAcks`` that tells of it (numbers are never
        given twice, so several deliveries' offsets can be put together)."""
        number, self._next = self._next, self._next + 1
        options: dict[str, Any] = {}
        if partition is not None:
            options["partition"] = partition
        if headers:
            options["headers"] = headers
        while True:
            try:
                self._relay.produce(topic, value, key, number, **options)
                return number
            except BufferError:  # librdkafka's queue is full: serve its reports, then hand it over
                self._relay.poll(FULL_QUEUE_POLL_SECONDS)

    def _settled(self, number: int, error: Any, message: Any) -> None:
        if error is None:
            self._delivery.offsets[number] = message.offset()
        else:
            self._delivery.refused.append((number, SendFailed(message.topic(), message.partition(), error)))

    async def delivered(self) -> BatchAcks:
        """Wait until the broker acknowledged or refused for good every record sent since the last
        call; what it said of them."""
        loop = asyncio.get_running_loop()
        while len(self._relay):
            left = await loop.run_in_executor(self._waiting, self._relay.flush, 1.0)
            if left:
                log.debug("%s: %d records not acknowledged yet", self.processor, left)
        self._relay.poll()  # reports served by the flush thread's last pass are all in by now
        delivery, self._delivery = self._delivery, BatchAcks()
        return delivery
