"""Faults under load, on a schedule drawn from the run's seed, while the simulator plays a seeded
run against a broker of the test's own:

- every processor SIGKILLed at random points (``FAULT_KILLS`` times each) and restarted at once;
- order-state's local RocksDB deleted while it is stopped; it restarts from its changelog;
- a second fulfillment worker started mid-run, and later the first one SIGKILLed for good: its
  partitions move with their state to the second;
- the mail server and the webhook receiver down for ``FAULT_OUTAGE_SECONDS``: deliveries wait, are
  retried and arrive once;
- the broker SIGKILLed and restarted, and later stopped with SIGTERM and restarted.

Then the accounting check:

- each state machine's table and every record it wrote are what one clean offline replay of the
  same inputs gives (`orderops replay rebuild`: nothing lost, nothing applied twice, no record
  missing or extra);
- every order is in the support view;
- no notification reached the mailbox twice (by its delivery id), outside recorded in-doubt
  attempts; every delivery the notifier recorded as sent is in the mailbox;
- refunds were commanded; no idempotency key was commanded with two different contents; the
  provider answered each key at most once; no refund exceeds what was captured on its instrument
  (returns' invariants); and per order and instrument, the captured and refunded amounts of
  order-state, returns and the provider's outcomes agree (`orderops check books`), over at least
  half the orders, with refunds among them;
- nothing was dead-lettered (there is no bad input in this run).

`make test-faults` runs it with 200 orders (FAULT_ORDERS, FAULT_RATE, FAULT_KILLS and
FAULT_OUTAGE_SECONDS size it; 24 orders by default; docs/reliability.md has what it found).
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
from datetime import UTC, datetime

import pytest
from orderops_tools.books import compare as compare_books
from orderops_tools.provider import RefundDesk
from orderops_tools.simulator import SCENARIOS, Config, play
from orderops_tools.testing import (
    Mailbox,
    PrivateBroker,
    ServiceProcess,
    WebhookSink,
    free_port,
    orderops_cli,
    poll_json,
    start_processors,
)

from orderops.codec.avro import Codec
from orderops.model import catalog
from orderops.replay.topicreader import read

START = datetime(2026, 9, 1, 8, tzinfo=UTC)
ORDERS = int(os.environ.get("FAULT_ORDERS", "24"))
RATE = float(os.environ.get("FAULT_RATE", "12"))  # upstream events/s at most: the run outlasts the faults
KILLS = int(os.environ.get("FAULT_KILLS", "1"))  # SIGKILLs of each processor
OUTAGE = float(os.environ.get("FAULT_OUTAGE_SECONDS", "10"))  # the mail server down
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
    mailbox, webhooks = Mailbox().start(), await WebhookSink().start()
    processes: dict[str, ServiceProcess] = {}
    extra: list[ServiceProcess] = []
    faults: list[str] = []
    provider: RefundDesk | None = None
    progress = Progress()  # the simulator's progress lines: where it was if it stalls
    try:
        assert orderops_cli(bootstrap, "policies", "publish").returncode == 0
        env = {"ORDEROPS_SMTP_PORT": str(mailbox.port), "ORDEROPS_NOTIFIER_CHANNELS": "email,webhook",
               "ORDEROPS_WEBHOOK_URL": webhooks.url, "ORDEROPS_WEBHOOK_SECRET": f"fault-{run_id}"}
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
        schedule = random.Random(seed)

        async def pause() -> None:
            await asyncio.sleep(schedule.uniform(1.0, 3.0))

        async def mail_outage() -> None:
            mailbox.stop()
            await webhooks.stop()
            faults.append(f"mail server and webhook receiver down {OUTAGE:.0f} s")
            await asyncio.sleep(OUTAGE)
            mailbox.start()
            await webhooks.start()

        for _ in range(KILLS):  # each processor killed at a random point, restarted at once
            for name in schedule.sample(catalog.PROCESSORS, len(catalog.PROCESSORS)):
                await pause()
                processes[name].stop(signal.SIGKILL)
                processes[name].start()
                faults.append(f"SIGKILL {name}")
        await pause()
        processes["order-state"].stop(signal.SIGKILL)  # its local state lost with its disk
        shutil.rmtree(tmp_path / "state" / "order-state")
        processes["order-state"].start()
        faults.append("order-state's RocksDB deleted while stopped")
        outage = asyncio.ensure_future(mail_outage())
        await pause()
        port = free_port()
        extra.append(ServiceProcess(["-m", "fulfillment"], {
            **processes["fulfillment"].env, "WEB_PORT": str(port), "ORDEROPS_DATA_DIR": str(tmp_path / "state-2")},
            tmp_path / "fulfillment-2.log", port).start())
        faults.append("a second fulfillment worker started")
        await pause()
        kill_broker(broker)  # the broker dies under load; processors must reconnect by themselves
        faults.append("SIGKILL broker")
        await asyncio.sleep(3)
        broker.start()
        await pause()
        processes["fulfillment"].stop(signal.SIGKILL)  # for good: the second worker takes its partitions
        faults.append("the first fulfillment worker SIGKILLed for good")
        await pause()
        broker.stop()  # SIGTERM: a controlled shutdown
        faults.append("SIGTERM broker")
        broker.start()
        await outage
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
        deadline = time.monotonic() + 300
        for processor in ("order-state", "fulfillment", "returns"):
            while True:
                result = orderops_cli(bootstrap, "replay", "rebuild", processor, "--clock", "wall")
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(3)  # still catching up after the faults
            assert result.returncode == 0, "\n".join(faults) + "\n" + result.stdout + result.stderr[-2000:] + \
                "\nthe simulator's last lines:\n" + progress.getvalue()[-600:]

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
        in_doubt = {d["delivery_id"] for d in deliveries() if d["outcome"] == "IN_DOUBT"}
        received = mailbox.delivery_ids + webhooks.delivery_ids
        twice = {d: n for d, n in received.items() if n > 1 and d not in in_doubt}
        assert not twice, f"delivered more than once: {twice}"
        sent_ids: set[str] = set()
        for _ in range(60):
            sent_ids = {d["delivery_id"] for d in deliveries() if d["outcome"] == "SENT"}
            if sent_ids <= set(mailbox.delivery_ids + webhooks.delivery_ids):
                break
            await asyncio.sleep(2)
        received = mailbox.delivery_ids + webhooks.delivery_ids
        assert sent_ids and sent_ids <= set(received), sorted(sent_ids - set(received))[:5]
        assert sum(mailbox.delivery_ids.values()) > ORDERS and sum(webhooks.delivery_ids.values()) > ORDERS

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
        for dlq in catalog.DEAD_LETTER_TOPICS.values():
            dead = read(bootstrap, dlq)
            assert not dead, f"{dlq.name}: {len(dead)} dead letter(s) after the faults"
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
