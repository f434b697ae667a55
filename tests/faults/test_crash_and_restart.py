"""Faults under load, on a schedule drawn from the run's seed, while the simulator plays a seeded
run against a broker of the test's own. One broker:

- every processor SIGKILLed at random points (``FAULT_KILLS`` times each) and restarted at once;
- order-state's local RocksDB deleted while it is stopped; it restarts from its changelog;
- a second fulfillment worker started mid-run, and later the first one SIGKILLed for good: its
  partitions move with their state to the second;
- the mail server and the webhook receiver down for ``FAULT_OUTAGE_SECONDS``: deliveries wait, are
  retried and arrive once;
- the broker SIGKILLed and kept down for longer than the processors' message timeout (what their
  producers held times out and is sent again) and their session timeout, then restarted; later
  stopped with SIGTERM and restarted.

A cluster of three (``cluster``: `make test-faults` only), topics with three replicas, two in sync:

- the leader of a busy partition SIGKILLed, and back after the same time as the single broker's;
- another node frozen (SIGSTOP) for longer than the processors' session, message and request
  timeouts, then thawed; and the mail outage.

Then, for both, the accounting check:

- each state machine's table and every record it wrote are what one clean offline replay of the
  same inputs gives (`orderops replay rebuild`: nothing lost, nothing applied twice, no record
  missing or extra);
- every order is in the support view;
- every copy of a notification beyond the first (by its delivery id) is an attempt the notifier
  recorded as in doubt, and there are no more than the sends in flight when the notifier was
  killed or a channel went down; every delivery the notifier recorded as sent is in the mailbox;
- refunds were commanded; no idempotency key was commanded with two different contents; the
  provider answered each key at most once; no refund exceeds what was captured on its instrument
  (returns' invariants); and per order and instrument, the captured and refunded amounts of
  order-state, returns and the provider's outcomes agree (`orderops check books`), over at least
  half the orders, with refunds among them;
- nothing was dead-lettered (there is no bad input in this run).

`make test-faults` runs them with 200 orders (FAULT_ORDERS, FAULT_RATE, FAULT_KILLS and
FAULT_OUTAGE_SECONDS size them; 24 orders by default; each records its figures for
docs/reliability-results.md).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from orderops_tools import faultreport
from orderops_tools.books import compare as compare_books
from orderops_tools.provider import RefundDesk
from orderops_tools.simulator import SCENARIOS, Config, play
from orderops_tools.testing import (
    Mailbox,
    PrivateBroker,
    PrivateCluster,
    ServiceProcess,
    WebhookSink,
    free_port,
    orderops_cli,
    poll_json,
    rebuilt_identically,
    start_processors,
)

from orderops.codec.avro import Codec
from orderops.model import catalog
from orderops.replay.topicreader import read

START = datetime(2026, 9, 1, 8, tzinfo=UTC)
ORDERS = int(os.environ.get("FAULT_ORDERS", "24"))
NOTIFIER_CONCURRENCY = 8  # the notifier's default ORDEROPS_NOTIFIER_CONCURRENCY: sends in flight at once
RATE = float(os.environ.get("FAULT_RATE", "12"))  # upstream events/s at most: the run outlasts the faults
KILLS = int(os.environ.get("FAULT_KILLS", "1"))  # SIGKILLs of each processor
OUTAGE = float(os.environ.get("FAULT_OUTAGE_SECONDS", "10"))  # the mail server down
SESSION_TIMEOUT = 6.0  # the processors' ORDEROPS_SESSION_TIMEOUT_SECONDS in these tests
MESSAGE_TIMEOUT = 4.0  # their ORDEROPS_PRODUCER_MESSAGE_TIMEOUT_SECONDS
REQUEST_TIMEOUT = 10.0  # their ORDEROPS_REQUEST_TIMEOUT_SECONDS in the cluster's test
BROKER_DOWN = 3 * MESSAGE_TIMEOUT  # a killed broker's time away: longer than the session timeout too
FROZEN = 2 * REQUEST_TIMEOUT  # a frozen node's: longer than every timeout above
# In `make test` at 24 orders (about 75 s), in `make test-faults` at 200. Its own time limit: the
# suite's 300 s is too short for its waits, and a stall is reported with where the simulator was.
pytestmark = [pytest.mark.broker, pytest.mark.faults, pytest.mark.kills_broker,
              pytest.mark.timeout(600 if ORDERS <= 50 else 3600)]


class Progress(io.StringIO):
    """The simulator's progress lines, kept for failure messages and also written to stderr, which
    pytest shows even when the time limit ends the test."""

    def write(self, text: str) -> int:
        sys.stderr.write(text)
        return super().write(text)


@dataclass
class Run:
    """What a fault schedule acts on, and what it did (``faults``, in order)."""

    tmp_path: Path
    processes: dict[str, ServiceProcess]
    extra: list[ServiceProcess]
    faults: list[str]
    schedule: random.Random
    mail_outage: Callable[[], Awaitable[None]]

    async def pause(self) -> None:
        await asyncio.sleep(self.schedule.uniform(1.0, 3.0))

    async def kill_each_processor(self, times: int) -> None:
        for _ in range(times):  # each processor killed at a random point, restarted at once
            for name in self.schedule.sample(catalog.PROCESSORS, len(catalog.PROCESSORS)):
                await self.pause()
                self.processes[name].stop(signal.SIGKILL)
                self.processes[name].start()
                self.faults.append(f"SIGKILL {name}")


async def test_killed_processors_and_a_killed_broker_lose_and_duplicate_nothing(run_id, tmp_path):
    broker = PrivateBroker(tmp_path / "broker")

    async def schedule(run: Run) -> None:
        await run.kill_each_processor(KILLS)
        await run.pause()
        run.processes["order-state"].stop(signal.SIGKILL)  # its local state lost with its disk
        shutil.rmtree(tmp_path / "state" / "order-state")
        run.processes["order-state"].start()
        run.faults.append("order-state's RocksDB deleted while stopped")
        outage = asyncio.ensure_future(run.mail_outage())
        await run.pause()
        port = free_port()
        run.extra.append(ServiceProcess(["-m", "fulfillment"], {
            **run.processes["fulfillment"].env, "WEB_PORT": str(port), "ORDEROPS_DATA_DIR": str(tmp_path / "state-2")},
            tmp_path / "fulfillment-2.log", port).start())
        run.faults.append("a second fulfillment worker started")
        await run.pause()
        broker.kill()  # the broker dies under load; processors must reconnect by themselves
        # Down for longer than the processors' message timeout: what their producers held when it
        # died times out in librdkafka, and must be sent again (resend.Relay), never dropped.
        await asyncio.sleep(BROKER_DOWN)
        run.faults.append(f"SIGKILL broker, down {BROKER_DOWN:.0f} s (message timeout {MESSAGE_TIMEOUT:.0f} s)")
        broker.start()
        await run.pause()
        run.processes["fulfillment"].stop(signal.SIGKILL)  # for good: the second worker takes its partitions
        run.faults.append("the first fulfillment worker SIGKILLed for good")
        await run.pause()
        broker.stop()  # SIGTERM: a controlled shutdown
        run.faults.append("SIGTERM broker")
        broker.start()
        await outage

    await run_and_account("processes and the broker killed under load (tests/faults/test_crash_and_restart.py)",
                          run_id, broker, {}, schedule)


@pytest.mark.cluster
async def test_a_three_broker_cluster_loses_a_leader_and_a_node_stops_answering(run_id, tmp_path):
    """Three replicas, two in sync: the leader of a busy partition SIGKILLed (and back after
    ``BROKER_DOWN``), later another node frozen (SIGSTOP: it holds its connections and answers
    nothing, as in a long pause or a cut network) for longer than the processors' session, message
    and request timeouts. Processing goes on through the other nodes without an operator."""
    cluster = PrivateCluster(tmp_path / "cluster")

    async def schedule(run: Run) -> None:
        await run.pause()
        busy = catalog.STOREFRONT_ORDERS.name
        leader = cluster.leader(busy, 0)
        cluster.kill(leader)
        run.faults.append(f"SIGKILL the leader of {busy}[0] (node {leader})")
        await asyncio.sleep(BROKER_DOWN)
        cluster.start_node(leader)
        await run.pause()
        frozen = next(n for n in cluster.NODES if n != leader)
        cluster.freeze(frozen, frozen=True)
        await asyncio.sleep(FROZEN)
        cluster.freeze(frozen, frozen=False)
        run.faults.append(f"node {frozen} frozen {FROZEN:.0f} s (session timeout {SESSION_TIMEOUT:.0f} s, "
                          f"message timeout {MESSAGE_TIMEOUT:.0f} s, request timeout {REQUEST_TIMEOUT:.0f} s)")
        await run.mail_outage()

    await run_and_account("a three-broker cluster: a leader killed, a node frozen (tests/faults/test_crash_and_restart.py)",
                          run_id, cluster, {**cluster.client_env(),
                                                      "ORDEROPS_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT)},
                          schedule)


async def run_and_account(title: str, run_id: str, broker: PrivateBroker | PrivateCluster, extra_env: dict[str, str],
                          schedule_faults: Callable[[Run], Awaitable[None]]) -> None:
    """Start ``broker``, the five processors, the refund desk and the simulator; run the faults
    ``schedule_faults`` injects meanwhile; then every accounting check (the module's docstring), and
    record the figures under ``title``."""
    tmp_path = broker.run_dir.parent
    bootstrap = broker.start()
    mailbox, webhooks = Mailbox().start(), await WebhookSink().start()
    processes: dict[str, ServiceProcess] = {}
    extra: list[ServiceProcess] = []
    faults: list[str] = []
    provider: RefundDesk | None = None
    progress = Progress()  # the simulator's progress lines: where it was if it stalls
    try:
        assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
        env = {"ORDEROPS_SMTP_PORT": str(mailbox.port), "ORDEROPS_NOTIFIER_CHANNELS": "email,webhook",
               "ORDEROPS_WEBHOOK_URL": webhooks.url, "ORDEROPS_WEBHOOK_SECRET": f"fault-{run_id}",
               "ORDEROPS_PRODUCER_MESSAGE_TIMEOUT_SECONDS": str(MESSAGE_TIMEOUT),
               "ORDEROPS_SESSION_TIMEOUT_SECONDS": str(SESSION_TIMEOUT), **extra_env}
        processes = start_processors(bootstrap, tmp_path, env)
        await asyncio.gather(*(p.wait_ready(timeout=180) for p in processes.values()))

        # An order's events 1 s apart (as upstream systems write them): the faults land in live traffic.
        seed = int(run_id, 16) % 10**6
        # Half the orders returned, so that every run's money checks have refunds to compare.
        config = Config(seed=seed, orders=ORDERS, rate=RATE, compression=10**9, start=START, order_gap=1.0,
                        shares={**SCENARIOS, "return": 0.5})
        summary: Counter = Counter()
        # The provider answers every refund command for the whole test (the simulator's own stops when
        # its traffic does, before the last returns are inspected), some with a retryable failure.
        failing = random.Random(f"{seed}:provider")
        provider = RefundDesk(bootstrap, fails=lambda command: failing.random() < 0.15,
                              name=f"{catalog.PAYMENT_PROVIDER}-faults")
        provider.start()
        player = threading.Thread(target=lambda: summary.update(play(config, bootstrap, out=progress,
                                                                     answer_refunds=False)), daemon=True)
        player.start()
        async def mail_outage() -> None:
            mailbox.stop()
            await webhooks.stop()
            faults.append(f"mail server and webhook receiver down {OUTAGE:.0f} s")
            await asyncio.sleep(OUTAGE)
            mailbox.start()
            await webhooks.start()

        await schedule_faults(Run(tmp_path, processes, extra, faults, random.Random(seed), mail_outage))
        await asyncio.to_thread(player.join, 1200)
        assert not player.is_alive(), f"the simulator did not finish; its last lines: {progress.getvalue()[-600:]}"
        sent = sum(v for k, v in summary.items() if k.startswith("sent:") and "type:" not in k)
        assert sent > ORDERS * 5, summary  # the traffic flowed
        assert not [k for k in summary if k.startswith("failed:") or k == "answers_not_delivered"], \
            (summary, progress.getvalue()[-1000:])
        print(f"{sent} upstream events; faults: {'; '.join(faults)}")
        codec = Codec()

        def refund_keys() -> tuple[set[str], dict[str, set[str]]]:
            """The idempotency keys commanded, and each one's answers (event ids) on payments.events."""
            commanded = {codec.decode(m.value(), catalog.PAYMENTS_REFUND_REQUESTS.value_schema).record["payload"][1][
                "refund_id"] for m in read(bootstrap, catalog.PAYMENTS_REFUND_REQUESTS)}
            answered: dict[str, set[str]] = defaultdict(set)
            for m in read(bootstrap, catalog.PAYMENTS_EVENTS):
                record = codec.decode(m.value(), catalog.PAYMENTS_EVENTS.value_schema).record
                if record["payload"][0].endswith(("RefundSucceeded", "RefundFailed")):
                    answered[record["payload"][1]["refund_id"]].add(record["event_id"])
            return commanded, answered

        # Every refund answered, and the retries the failures cause answered too, before anything is compared.
        settled, commanded, answered = 0, set(), {}
        for _ in range(120):
            commanded, answered = refund_keys()
            settled = settled + 1 if commanded and commanded == set(answered) else 0
            if settled == 3:
                break
            await asyncio.sleep(2)
        assert settled == 3, f"refund commands not answered: {sorted(commanded - set(answered))[:5]}"

        # The state machines: exactly what one clean replay of their inputs gives.
        rebuilt: dict[str, str] = {}
        deadline = time.monotonic() + 300
        for processor in ("order-state", "fulfillment", "returns"):
            while True:
                result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--clock", "wall")
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(3)  # still catching up after the faults
            assert result.returncode == 0, (
                f"{processor}'s live state and records are not what one clean replay gives:\n{result.stdout}"
                f"{result.stderr[-2000:]}\nfaults: {'; '.join(faults)}\nthe simulator's last lines:\n"
                f"{progress.getvalue()[-600:]}")
            orders_compared, records_compared = rebuilt_identically(result)
            assert orders_compared >= ORDERS // 2 and records_compared > orders_compared, result.stdout
            rebuilt[processor] = f"{orders_compared:,} orders' state and {records_compared:,} records identical"

        # The support view has every order.
        orders = [f"sim-{config.seed}-{n:06d}" for n in range(config.orders)]
        for order_id in orders:
            await poll_json(processes["timeline"], f"/orders/{order_id}", lambda v: v["placed_at"] is not None,
                            timeout=120)

        # Every delivery once: none twice outside in-doubt attempts the notifier recorded as such, and
        # every one it recorded as sent (after the mail server came back) in the mailbox.

        def deliveries() -> list[dict]:
            return [codec.decode(m.value(), catalog.NOTIFICATIONS_DELIVERIES.value_schema).record["payload"][1]
                    for m in read(bootstrap, catalog.NOTIFICATIONS_DELIVERIES)]

        # Those the mail outage delayed are retried until sent: none left waiting, none given up.
        waiting: dict[str, list[str]] = {}
        for _ in range(150):
            waiting = {}
            for order_id in orders:
                status, ledger = await processes["notifier"].get_json(f"/orders/{order_id}/notifications")
                if status == 404:
                    continue  # nothing was ever asked for this order
                pending = [d["state"] for d in (ledger or {}).get("deliveries", [])
                           if d["state"] not in ("sent", "suppressed")] if status == 200 else [f"(HTTP {status})"]
                if pending:
                    waiting[order_id] = pending
            if not waiting or any("failed" in states for states in waiting.values()):
                break
            await asyncio.sleep(2)
        assert not waiting, f"deliveries not sent: {dict(list(waiting.items())[:5])} ({len(waiting)} orders)"
        # Each copy beyond the first is an attempt the notifier announced IN_DOUBT (a send a crash or
        # the outage caught in flight), and there are no more of those than sends were in flight.
        in_doubt = Counter(d["delivery_id"] for d in deliveries() if d["outcome"] == "IN_DOUBT")
        received = mailbox.delivery_ids + webhooks.delivery_ids
        twice = {d: n for d, n in received.items() if n > 1 + in_doubt[d]}
        assert not twice, f"delivered more than once, beyond attempts recorded in doubt: {twice}"
        notifier_kills = sum(f == "SIGKILL notifier" for f in faults)
        in_flight = NOTIFIER_CONCURRENCY * (notifier_kills + 2)  # each kill, and each channel's outage
        again = sum(n - 1 for n in received.values() if n > 1)
        assert again <= in_flight, (again, in_flight, in_doubt)
        sent_ids: set[str] = set()
        for _ in range(60):
            sent_ids = {d["delivery_id"] for d in deliveries() if d["outcome"] == "SENT"}
            if sent_ids <= set(mailbox.delivery_ids + webhooks.delivery_ids):
                break
            await asyncio.sleep(2)
        received = mailbox.delivery_ids + webhooks.delivery_ids
        assert sent_ids and sent_ids <= set(received), sorted(sent_ids - set(received))[:5]
        assert sum(mailbox.delivery_ids.values()) > ORDERS and sum(webhooks.delivery_ids.values()) > ORDERS
        print(f"notifications: {len(sent_ids)} deliveries sent; {sum(in_doubt.values())} attempts in doubt; "
              f"{again} received again (at most {in_flight}: {notifier_kills} notifier kills and 2 outages, "
              f"{NOTIFIER_CONCURRENCY} sends in flight each)")

        # Refunds: one content per idempotency key, each answered by the provider once, never more than
        # captured (returns' invariants), and the books of order-state, returns and the provider agree.
        commands = read(bootstrap, catalog.PAYMENTS_REFUND_REQUESTS)
        contents = defaultdict(set)
        for m in commands:
            payload = codec.decode(m.value(), catalog.PAYMENTS_REFUND_REQUESTS.value_schema).record["payload"][1]
            contents[payload["refund_id"]].add(repr(sorted(payload.items())))
        assert contents, "no refund was commanded: the refund checks would compare nothing"
        assert all(len(c) == 1 for c in contents.values()), {k: c for k, c in contents.items() if len(c) > 1}
        _, answers = refund_keys()
        assert set(answers) == set(contents), sorted(set(answers) ^ set(contents))[:5]
        assert all(len(a) == 1 for a in answers.values()), {k: a for k, a in answers.items() if len(a) > 1}
        assert provider.answers["refunds_succeeded"] > 0, provider.answers
        books = compare_books(bootstrap)
        assert books.orders >= ORDERS // 2 and books.refunds > 0, books
        assert not books.disagreements, [d.describe() for d in books.disagreements[:10]]
        print(f"money: {len(contents)} refund keys commanded, {len(answers)} answered once each; books of "
              f"{books.orders} orders ({books.instruments} instruments, {books.refunds} refunded) agree")
        invariants = subprocess.run([sys.executable, "-c", INVARIANTS], capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap})
        assert invariants.returncode == 0 and invariants.stdout.strip() == "ok", invariants.stdout + invariants.stderr

        # Nothing dead-lettered: there was no bad input.
        dead_letters = 0
        for dlq in catalog.DEAD_LETTER_TOPICS.values():
            dead = read(bootstrap, dlq)
            assert not dead, f"{dlq.name}: {len(dead)} dead letter(s) after the faults"
            dead_letters += len(dead)
        faultreport.record(title, {
            "orders": ORDERS, "upstream events, each acknowledged by the broker": sent,
            "faults injected": dict(Counter(faults)),
            "state machines against one clean replay (no event lost or applied twice, no record missing, extra, "
            "different or written twice differently)": rebuilt,
            "deliveries sent": len(sent_ids), "attempts recorded in doubt": sum(in_doubt.values()),
            "copies received again (each an in-doubt attempt)": again,
            "copies received again beyond in-doubt attempts": len(twice),
            "refund keys commanded": len(contents), "refund keys with two contents": sum(len(c) > 1 for c in contents.values()),
            "refund keys answered more than once": sum(len(a) > 1 for a in answers.values()),
            "books compared (orders, instruments, refunds)": f"{books.orders}, {books.instruments}, {books.refunds}",
            "books disagreeing": len(books.disagreements),
            "dead letters": dead_letters})
    except BaseException:  # a failure or the time limit: say how far the run got
        print(f"faults so far: {'; '.join(faults)}\nthe simulator's last lines:\n{progress.getvalue()[-800:]}")
        raise
    finally:
        if provider is not None:
            provider.stop()
        for process in [*processes.values(), *extra]:
            process.stop(signal.SIGKILL)
        mailbox.stop()
        await webhooks.stop()
        broker.stop()


# Returns' invariants on the state its changelog holds (what the processor really stored).
INVARIANTS = """
import os
from orderops_tools.replay import latest_by_key
from returns.domain import ReturnsState, violated_invariants
broken = {}
from orderops.model.catalog import RETURNS
states = latest_by_key(os.environ["KAFKA_BOOTSTRAP"], f"{RETURNS}-orders-changelog")
for order_id, stored in states.items():
    problems = violated_invariants(ReturnsState.from_json(stored))
    if problems:
        broken[order_id] = problems
print("no returns state to check" if not states else "ok" if not broken else broken)
"""
