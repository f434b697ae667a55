"""Two workers of every processor on 8 partitions give the results one worker gives.

The simulator plays a seeded day of orders; two workers of each processor share the partitions.
Then: each state machine's table and records are what a single, offline replay of the same inputs
gives (`orderops replay rebuild`); every order's support view is answered the same by either
timeline worker (Faust forwards the read to the owner); a customer search and the escalation queue
give either worker the whole answer (each asks the other for its partitions' orders); each
notification reached the mailbox once.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from orderops_tools.simulator import Config, play
from orderops_tools.testing import Mailbox, PrivateBroker, ServiceProcess, free_port, orderops_cli, poll_json

from orderops.model.catalog import PROCESSORS, order_partitions

pytestmark = pytest.mark.broker
START = datetime(2026, 10, 1, 8, tzinfo=UTC)



async def test_two_workers_of_each_processor_give_the_single_worker_results(run_id, tmp_path):
    # A broker of its own: ten workers then read this scenario only, not the whole suite's history.
    broker = PrivateBroker(tmp_path / "broker")
    bootstrap, instance = broker.start(), f"two{run_id}"
    assert order_partitions() == 8
    assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
    mailbox = Mailbox().start()
    workers: dict[str, list[ServiceProcess]] = {p: [] for p in PROCESSORS}
    common = {"KAFKA_BOOTSTRAP": bootstrap, "ORDEROPS_INSTANCE": instance, "ORDEROPS_SESSION_TIMEOUT_SECONDS": "6",
              "ORDEROPS_SMTP_PORT": str(mailbox.port), "ORDEROPS_NOTIFIER_CHANNELS": "email",
              "ORDEROPS_SUPPORT_QUERIES_PER_MINUTE": "10000"}
    try:
        for processor in PROCESSORS:
            for n in (1, 2):
                port = free_port()
                workers[processor].append(ServiceProcess(
                    ["-m", processor.replace("-", "_")],
                    {**common, "WEB_PORT": str(port), "ORDEROPS_DATA_DIR": str(tmp_path / f"state-{n}")},
                    tmp_path / f"{processor}-{n}.log", port).start())
        everyone = [w for ws in workers.values() for w in ws]
        await asyncio.gather(*(w.wait_ready(timeout=180) for w in everyone))
        for processor, pair in workers.items():  # both workers of each processor hold partitions
            assigned = [(await w.get_json("/healthz"))[1]["assigned_partitions"] for w in pair]
            assert all(a > 0 for a in assigned), (processor, assigned)

        since = datetime.now(UTC).isoformat()
        # An order's events 1 s apart, as upstream systems write them: events of one order written in the
        # same millisecond on different topics reach any consumer in an order no log records.
        config = Config(seed=int(run_id, 16) % 10**6, orders=16, rate=3000, compression=10**9, start=START,
                        order_gap=1.0)
        summary = play(config, bootstrap, answer_refunds=True)
        orders = [f"sim-{config.seed}-{n:06d}" for n in range(config.orders)]
        assert sum(v for k, v in summary.items() if k.startswith("sent:") and "type:" not in k) > 100

        # The state machines: what one offline replay of the same inputs gives, state and records.
        deadline = time.monotonic() + 120
        for processor in ("order-state", "fulfillment", "returns"):
            while True:
                result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--instance", instance, "--since", since,
                                  "--clock", "wall")
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(3)  # still catching up
            assert result.returncode == 0, result.stdout + result.stderr[-2000:]
            assert f"the state of {config.orders} orders" in result.stdout, result.stdout

        # The timeline: either worker answers every order, with the same view.
        first, second = workers["timeline"]
        compared = 0
        for order_id in orders:
            view = await poll_json(first, f"/orders/{order_id}", lambda v: v["placed_at"] is not None, timeout=60)
            for _ in range(20):  # the whole view, the same from either (the owner's, read through the other)
                status, other = await second.get_json(f"/orders/{order_id}")
                if status == 200 and other == view:
                    break
                await asyncio.sleep(1)  # the last entries may still be arriving: both are read again
                _, view = await first.get_json(f"/orders/{order_id}")
            assert status == 200 and other == view and view["order_id"] == order_id, (order_id, other, view)
            compared += 1
        assert compared == len(orders) > 0

        # Queries over many orders: either worker answers from both workers' partitions, so both give
        # the one answer a single worker holding every order gives (each worker holds only some).
        await _same_queries_from_either_worker(workers["timeline"], orders)

        # The notifier: every sent delivery reached the mailbox once.
        await asyncio.sleep(3)
        sent = 0
        for order_id in orders:
            _, ledger = await workers["notifier"][0].get_json(f"/orders/{order_id}/notifications")
            if isinstance(ledger, dict):
                sent += sum(d["state"] == "sent" for d in ledger.get("deliveries", []))
        mine = [m for m in mailbox.messages if f"sim-{config.seed}-" in m.as_string()]
        assert sent > 0 and len(mine) == sent, (sent, len(mine))
    finally:
        for ws in workers.values():
            for w in ws:
                w.stop()
        mailbox.stop()
        broker.stop()


async def _same_queries_from_either_worker(timeline: list[ServiceProcess], orders: list[str]) -> None:
    """Customer search and the escalation queue, asked of each timeline worker, give every order's
    answer (what the order views say), complete, and the same from both."""
    first = timeline[0]
    by_customer: dict[str, set[str]] = {}
    for order_id in orders:
        _, view = await first.get_json(f"/orders/{order_id}")
        by_customer.setdefault(view["customer"]["customer_id"].lower(), set()).add(order_id)
    searched = 0
    for customer, expected in by_customer.items():
        answers = []
        for worker in timeline:
            status, found = await worker.get_json(f"/orders?customer={customer}")
            assert status == 200 and found["complete"] is True, (worker.url, found)
            assert {o["order_id"] for o in found["orders"]} == expected, (customer, worker.url, found, expected)
            answers.append(found)
        assert answers[0] == answers[1], answers
        searched += 1
    assert searched == len(by_customer) > 0

    # Escalations on a third of the orders, on both workers' partitions: a second contact with no
    # change between opens repeat-contact. Then the queue, asked of either worker, lists each once.
    escalated = set(orders[::3])
    for n, order_id in enumerate(sorted(escalated)):
        for contact in (1, 2):
            status, _ = await timeline[n % 2].call("POST", f"/orders/{order_id}/contacts",
                                                   {"reason": f"where is my order ({contact})",
                                                    "contact_id": f"{order_id}-c{contact}"})
            assert status == 202
    expected: set[str] = set()
    queued: list[set[str]] = []
    for _ in range(60):
        # What the orders' own views say is open (the simulator's customers contact support too),
        # against the queue as each worker answers it.
        expected = set()
        for order_id in orders:
            _, view = await first.get_json(f"/orders/{order_id}")
            expected |= {k for k, e in view["escalations"].items() if e["rule"] == "repeat-contact"
                         and e["state"] != "resolved"}
        queued = []
        for worker in timeline:
            status, queue = await worker.get_json("/escalations?state=open&rule=repeat-contact")
            assert status == 200 and queue["complete"] is True, queue
            queued.append({e["escalation_id"] for e in queue["escalations"] if e["order_id"] in orders})
        if escalated <= {e.split(":repeat-contact:", 1)[0] for e in expected} and queued == [expected, expected]:
            break
        await asyncio.sleep(1)
    assert queued == [expected, expected], (queued, expected)
    assert escalated <= {e.split(":repeat-contact:", 1)[0] for e in expected} and len(expected) >= len(escalated) > 0
