"""Faults under load: every processor SIGKILLed mid-run and restarted, then the broker SIGKILLed
and restarted, while the simulator plays a seeded run. Then the accounting check:

- each state machine's table and every record it wrote are what one clean offline replay of the
  same inputs gives (`orderops replay rebuild`: nothing lost, nothing applied twice, no record
  missing or extra);
- every order is in the support view;
- no notification reached the mailbox twice (by its delivery id), outside recorded in-doubt attempts;
- no refund idempotency key was commanded with two different contents, the provider answered
  each once, and no refund exceeds what was captured on its instrument (returns' invariants);
- nothing was dead-lettered (there is no bad input in this run).

`make test-faults` runs it (FAULT_ORDERS, 200 orders there; 24 by default). What it found, each
fixed at its root: after the broker kill a lone timeline worker answered every read "Service
unavailable" (reads are now served locally when the worker holds the partition); a refund for a
line cancelled before the capture was derived from whichever warehouse snapshot came next, so a
restarted returns attributed it to another event than the replay did (the capture now issues it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
from orderops_tools.simulator import Config, play

from orderops import catalog
from orderops.codec import Codec
from orderops.testing import Mailbox, PrivateBroker, ServiceProcess, orderops_cli, poll_json, start_processors
from orderops.topicreader import read

pytestmark = [pytest.mark.broker, pytest.mark.faults, pytest.mark.kills_broker]
START = datetime(2026, 9, 1, 8, tzinfo=UTC)
ORDERS = int(os.environ.get("FAULT_ORDERS", "24"))


def kill_broker(broker: PrivateBroker) -> None:
    pid = int(broker.pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.kill(pid, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            return


async def test_killed_processors_and_a_killed_broker_lose_and_duplicate_nothing(run_id, tmp_path):
    broker = PrivateBroker(tmp_path / "broker")
    bootstrap = broker.start()
    mailbox = Mailbox().start()
    processes: dict[str, ServiceProcess] = {}
    try:
        assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
        processes = start_processors(bootstrap, tmp_path, {"ORDEROPS_SMTP_PORT": str(mailbox.port),
                                                           "ORDEROPS_NOTIFIER_CHANNELS": "email"})
        await asyncio.gather(*(p.wait_ready(timeout=180) for p in processes.values()))

        # An order's events 1 s apart (as upstream systems write them): the faults land in live traffic.
        config = Config(seed=int(run_id, 16) % 10**6, orders=ORDERS, rate=500, compression=10**9, start=START,
                        order_gap=1.0)
        summary: Counter = Counter()
        player = threading.Thread(target=lambda: summary.update(play(config, bootstrap)), daemon=True)
        player.start()
        faults = []
        for name in catalog.PROCESSORS:  # each processor killed mid-run, restarted at once
            await asyncio.sleep(3)
            processes[name].stop(signal.SIGKILL)
            processes[name].start()
            faults.append(f"SIGKILL {name}")
        await asyncio.sleep(2)
        kill_broker(broker)  # the broker dies under load; processors must reconnect by themselves
        faults.append("SIGKILL broker")
        await asyncio.sleep(3)
        broker.start()
        await asyncio.to_thread(player.join, 600)
        assert not player.is_alive(), "the simulator did not finish"
        sent = sum(v for k, v in summary.items() if k.startswith("sent:") and "type:" not in k)
        assert sent > ORDERS * 5, summary  # the traffic flowed

        # The state machines: exactly what one clean replay of their inputs gives.
        deadline = time.monotonic() + 300
        for processor in ("order-state", "fulfillment", "returns"):
            while True:
                result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--clock", "wall")
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(3)  # still catching up after the faults
            assert result.returncode == 0, "\n".join(faults) + "\n" + result.stdout + result.stderr[-2000:]

        # The support view has every order.
        orders = [f"sim-{config.seed}-{n:06d}" for n in range(config.orders)]
        for order_id in orders:
            await poll_json(processes["timeline"], f"/orders/{order_id}", lambda v: v["placed_at"] is not None,
                            timeout=120)

        # No notification twice, outside in-doubt attempts the notifier recorded as such.
        codec = Codec()
        deliveries = [codec.decode(m.value(), catalog.NOTIFICATIONS_DELIVERIES.value_schema).record["payload"][1]
                      for m in read(bootstrap, catalog.NOTIFICATIONS_DELIVERIES)]
        in_doubt = {d["delivery_id"] for d in deliveries if d["outcome"] == "IN_DOUBT"}
        twice = {d: n for d, n in mailbox.delivery_ids.items() if n > 1 and d not in in_doubt}
        assert not twice, f"delivered more than once: {twice}"
        assert sum(mailbox.delivery_ids.values()) > ORDERS

        # Refunds: one content per idempotency key, never more than captured (returns' invariants).
        commands = read(bootstrap, catalog.PAYMENTS_REFUND_REQUESTS)
        contents = defaultdict(set)
        for m in commands:
            payload = codec.decode(m.value(), catalog.PAYMENTS_REFUND_REQUESTS.value_schema).record["payload"][1]
            contents[payload["refund_id"]].add(repr(sorted(payload.items())))
        assert all(len(c) == 1 for c in contents.values()), {k: c for k, c in contents.items() if len(c) > 1}
        invariants = subprocess.run([sys.executable, "-c", INVARIANTS], capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap})
        assert invariants.returncode == 0 and invariants.stdout.strip() == "ok", invariants.stdout + invariants.stderr

        # Nothing dead-lettered: there was no bad input.
        for dlq in catalog.DEAD_LETTER_TOPICS.values():
            dead = read(bootstrap, dlq)
            assert not dead, f"{dlq.name}: {len(dead)} dead letter(s) after the faults"
    finally:
        for process in processes.values():
            process.stop(signal.SIGKILL)
        mailbox.stop()
        broker.stop()


# Returns' invariants on the state its changelog holds (what the processor really stored).
INVARIANTS = """
import os
from orderops_tools.replay import latest_by_key
from returns.domain import ReturnsState, violated_invariants
broken = {}
from orderops.catalog import RETURNS
for order_id, stored in latest_by_key(os.environ["KAFKA_BOOTSTRAP"], f"{RETURNS}-orders-changelog").items():
    problems = violated_invariants(ReturnsState.from_json(stored))
    if problems:
        broken[order_id] = problems
print("ok" if not broken else broken)
"""
