"""librdkafka's idempotent producer, as every producer here is configured (``PRODUCER_DEFAULTS``),
while a single broker is SIGKILLed and restarted under load: it must deliver again once the broker
is back, whether its messages timed out meanwhile (a message timeout shorter than the outage: it
bumps its epoch by itself and goes on, confluentinc/librdkafka#2188) or waited (a longer one).

A stall of this kind was seen once before the processors' producers were guarded
(``orderops.runtime.resend.Relay`` replaces a client whose records time out); this test looks for
it without the guard, with librdkafka's own client. `make test-faults` only (``long``): each
restart of the broker takes about 15 s.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from confluent_kafka import Producer
from orderops_tools import faultreport
from orderops_tools.testing import PrivateBroker

from orderops.model import catalog
from orderops.ops.security import client_config
from orderops.ops.settings import PRODUCER_DEFAULTS

pytestmark = [pytest.mark.faults, pytest.mark.broker, pytest.mark.kills_broker, pytest.mark.long,
              pytest.mark.timeout(900)]
RESTARTS = int(os.environ.get("FAULT_BROKER_RESTARTS", "3"))
RATE = 300  # records/s each producer offers
BACK_WITHIN = 30.0  # seconds after the broker is up: a stall holds its records until they time out (minutes)


class Offered:
    """One producer offering records at ``RATE`` from a thread of its own, counting what settles."""

    def __init__(self, bootstrap: str, message_timeout_ms: int) -> None:
        self.producer = Producer(client_config(bootstrap, **{**PRODUCER_DEFAULTS, "message.timeout.ms": message_timeout_ms}))
        self.timeout_ms, self.delivered, self.failed = message_timeout_ms, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._offer, daemon=True)

    def _settled(self, error, message) -> None:
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1

    def _offer(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                self.producer.produce(catalog.STOREFRONT_ORDERS.name, key=f"probe-{n % 97}".encode(), value=b"x" * 200,
                                      on_delivery=self._settled)
                n += 1
            except BufferError:
                pass
            self.producer.poll(0)
            time.sleep(1 / RATE)

    def start(self) -> Offered:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.producer.flush(60)


def test_an_idempotent_producer_delivers_again_after_each_restart_of_the_broker(tmp_path):
    broker = PrivateBroker(tmp_path / "broker")
    bootstrap = broker.start()
    # Messages that time out during each outage, and messages that outlast it.
    producers = [Offered(bootstrap, 4_000).start(), Offered(bootstrap, 120_000).start()]
    resumed: dict[int, list[float]] = {p.timeout_ms: [] for p in producers}
    try:
        time.sleep(3)
        assert all(p.delivered > 0 for p in producers)
        for _ in range(RESTARTS):
            broker.kill()
            time.sleep(5)  # down: longer than the first producer's message timeout once the restart's time is added
            before = {id(p): p.delivered for p in producers}
            broker.start()
            up = time.monotonic()
            for producer in producers:
                while producer.delivered == before[id(producer)] and time.monotonic() - up < BACK_WITHIN:
                    time.sleep(0.1)
                assert producer.delivered > before[id(producer)], (
                    f"a producer with a {producer.timeout_ms} ms message timeout delivered nothing within "
                    f"{BACK_WITHIN:.0f} s of the broker's restart")
                resumed[producer.timeout_ms].append(time.monotonic() - up)
            time.sleep(3)
        left = [p.stop() for p in producers]
        assert left == [0, 0], f"records not settled after the last restart: {left}"
        short, long_ = producers
        assert short.failed > 0, "the short timeout never ran out: the outage did not test it"
        assert long_.failed == 0, f"{long_.failed} record(s) with a 120 s timeout failed"
        title = "an idempotent producer while a single broker restarts (tests/faults/test_producer_after_restart.py)"
        faultreport.record(title, {
            "broker SIGKILLed and restarted": RESTARTS,
            "records delivered, by message timeout": {f"{p.timeout_ms / 1000:.0f} s": p.delivered for p in producers},
            "records timed out during the outages, by message timeout":
                {f"{p.timeout_ms / 1000:.0f} s": p.failed for p in producers},
            "longest wait for a delivery after the broker was up, by message timeout":
                {f"{ms / 1000:.0f} s": f"{max(waits):.1f} s" for ms, waits in resumed.items()},
        })
    finally:
        for producer in producers:
            producer._stop.set()
        broker.stop()
