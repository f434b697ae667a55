"""A real Prometheus scrapes the five processors while a known story flows, evaluates the project's
rules, and its answers agree with the story: the repeat-contact rate, the communication accuracy,
the refund SLA attainment, the open escalations, the end-to-end latency. Every dashboard query runs.

The processors run on a broker of this test's own, so that every count is the story's alone.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import yaml
from orderops_tools.provider import RefundDesk
from orderops_tools.scenario import Story, address, card, customer, line, money
from orderops_tools.testing import (
    Mailbox,
    PrivateBroker,
    ServiceProcess,
    free_port,
    orderops_cli,
    poll_json,
    producer,
    start_processors,
)

from orderops.model.catalog import (
    PAYMENTS_EVENTS,
    PROCESSORS,
    STOREFRONT_ORDERS,
    STOREFRONT_RETURNS,
    SUPPORT_CONTACTS,
    WAREHOUSE_FULFILLMENT,
    WAREHOUSE_RETURNS,
)
from orderops.ops.monitoring import RULES, local_addresses, scrape_config
from orderops.ops.paths import source_root

pytestmark = pytest.mark.broker
PLACED = datetime(2026, 11, 2, 9, tzinfo=UTC)
DASHBOARD = (source_root() or Path.cwd()) / "deploy" / "grafana" / "dashboards" / "orderops.json"


class PrometheusServer:
    def __init__(self, workdir: Path, ports: dict[str, int]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        # The project's rules, evaluated every second instead of every 15-30 s: same expressions.
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
        (workdir / "rules.yml").write_text(yaml.safe_dump(rules))
        (workdir / "prometheus.yml").write_text(scrape_config(local_addresses(ports), [str(workdir / "rules.yml")],
                                                              interval="1s"))
        self.port, self.workdir = free_port(), workdir
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    async def query(self, expr: str) -> list[dict]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}) as resp:
                body = await resp.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    async def wait_for(self, expr: str, condition, timeout: float = 90) -> list[dict]:
        deadline, result = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                result = await self.query(expr)
                if condition(result):
                    return result
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(1)
        raise AssertionError(f"{expr}: not as expected within {timeout}s; last result {result}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def value(result: list[dict]) -> float:
    [sample] = result
    return float(sample["value"][1])


def story(order_a: str, order_b: str) -> list[Story]:
    """Order A: a split shipment around a backorder, two support contacts (the second a repeat),
    a returned mug refunded a day after it was commanded. Order B: the carrier fails to deliver."""
    a = Story(order_a, start=PLACED)
    a.on(STOREFRONT_ORDERS).OrderPlaced(customer=customer(email="ada@example.com"),
                                        lines=[line("l1", "Blue mug", 2, "12.50"), line("l2", "Teapot", 1, "40.00")],
                                        instruments=[card("card-1", "65.00")], shipping_address=address(),
                                        total=money("65.00"))
    a.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("65.00"),
                                                             authorization_id="auth-1")
    warehouse = a.after(hours=3).on(WAREHOUSE_FULFILLMENT)
    warehouse.LineBackordered(line_id="l2", quantity=1, eta=PLACED + timedelta(days=10))
    warehouse.ShipmentCreated(shipment_id="P1", lines=[{"line_id": "l1", "quantity": 2}])
    a.on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id="card-1", amount=money("65.00"), capture_id="cap-1")
    a.after(hours=2).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(shipment_id="P1", carrier="DHL",
                                                                  tracking_number="JD1", tracking_url="https://t/JD1")
    a.after(days=2).on(WAREHOUSE_FULFILLMENT).ShipmentDelivered(shipment_id="P1")
    a.after(hours=5).on(SUPPORT_CONTACTS).ContactOpened(contact_id="c-1", customer_id="cust-1", channel="EMAIL",
                                                         reason="where is my teapot?")
    a.after(days=1).on(SUPPORT_CONTACTS).ContactOpened(contact_id="c-2", customer_id="cust-1", channel="PHONE",
                                                        reason="still no teapot")
    a.after(days=5).on(WAREHOUSE_FULFILLMENT).ShipmentCreated(shipment_id="P2", lines=[{"line_id": "l2", "quantity": 1}])
    a.after(hours=1).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(shipment_id="P2", carrier="DHL",
                                                                  tracking_number="JD2", tracking_url="https://t/JD2")
    a.after(days=2).on(WAREHOUSE_FULFILLMENT).ShipmentDelivered(shipment_id="P2")
    a.after(days=2).on(STOREFRONT_RETURNS).ReturnRequested(
        return_id="r-1", customer_id="cust-1", lines=[{"line_id": "l1", "quantity": 1, "reason": "NO_LONGER_NEEDED"}])
    a.after(days=2).on(WAREHOUSE_RETURNS).ReturnReceived(return_id="r-1", lines=[{"line_id": "l1", "quantity": 1}])
    a.after(hours=4).on(WAREHOUSE_RETURNS).InspectionCompleted(return_id="r-1", results=[
        {"line_id": "l1", "quantity": 1, "outcome": "AS_EXPECTED", "disposition": "RESTOCK"}])

    b = Story(order_b, start=PLACED + timedelta(hours=1))
    b.on(STOREFRONT_ORDERS).OrderPlaced(customer=customer(email="bob@example.com"), lines=[line("l1", "Lamp", 1, "30.00")],
                                        instruments=[card("card-1", "30.00")], shipping_address=address(),
                                        total=money("30.00"))
    b.after(minutes=1).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("30.00"),
                                                             authorization_id="auth-b")
    b.after(hours=2).on(WAREHOUSE_FULFILLMENT).ShipmentCreated(shipment_id="P1", lines=[{"line_id": "l1", "quantity": 1}])
    b.after(hours=1).on(WAREHOUSE_FULFILLMENT).ShipmentDispatched(shipment_id="P1", carrier="UPS",
                                                                  tracking_number="U1", tracking_url="https://t/U1")
    b.after(days=1).on(WAREHOUSE_FULFILLMENT).DeliveryFailed(shipment_id="P1", reason="nobody at home")
    return [a, b]


async def test_prometheus_rules_agree_with_the_story(tmp_path, run_id):
    broker = PrivateBroker(tmp_path / "broker")
    bootstrap = broker.start()
    smtp = Mailbox().start()
    processes: dict[str, ServiceProcess] = {}
    prometheus = provider = None
    try:
        published = orderops_cli(bootstrap, "policies", "publish")
        assert published.returncode == 0, published.stderr
        processes = start_processors(bootstrap, tmp_path, {"ORDEROPS_SMTP_PORT": str(smtp.port),
                                                           "ORDEROPS_NOTIFIER_CHANNELS": "email"})
        ports = {name: process.web_port for name, process in processes.items()}
        await asyncio.gather(*(p.wait_ready() for p in processes.values()))
        prometheus = PrometheusServer(tmp_path / "prometheus", ports)
        # Every target up, and scraped long enough that the counters' zeros are on record.
        await prometheus.wait_for('sum(up{job="orderops"})', lambda r: r and value(r) == len(PROCESSORS))
        await asyncio.sleep(3)

        order_a, order_b = f"prom-a-{run_id}", f"prom-b-{run_id}"
        provider = RefundDesk(bootstrap, order_ids={order_a}, delay=timedelta(days=1))
        provider.start()
        kafka = producer(bootstrap)
        for s in story(order_a, order_b):
            s.publish(kafka)
        await poll_json(processes["timeline"], f"/orders/{order_a}",
                        lambda v: any(r["state"] == "succeeded" for r in v["refunds"].values()), timeout=120)

        # The rules' answers, as the story makes them.
        repeat = await prometheus.wait_for("orderops:support_contacts:repeat_ratio_1h", lambda r: r and value(r) == 0.5)
        assert value(repeat) == 0.5  # two contacts, the second a repeat
        accuracy = await prometheus.wait_for("orderops:notification_accuracy:ratio_1h", lambda r: bool(r))
        assert value(accuracy) == 1.0
        [judged] = await prometheus.query('sum(orderops_notification_accuracy_total)')
        assert float(judged["value"][1]) >= 2  # the split shipment's parcels, at least
        sla = await prometheus.wait_for('orderops:refunds:sla_attainment_ratio_1d{channel="CARD"}', lambda r: bool(r))
        assert value(sla) == 1.0  # refunded a day after the command: within the card SLA of 72 h
        p50 = await prometheus.wait_for('orderops:refund_completion_seconds:p50_1d{channel="CARD"}', lambda r: bool(r))
        assert 0 < value(p50) <= 86400  # in the bucket up to 24 h
        failed = await prometheus.wait_for('sum(orderops_escalations_open{rule="delivery-failed"})',
                                           lambda r: r and value(r) == 1)
        assert value(failed) == 1
        latency = await prometheus.wait_for("orderops:timeline_latency_seconds:p99_5m", lambda r: bool(r))
        assert 0 < value(latency) < 60
        flowing = await prometheus.wait_for("orderops:events_processed:rate5m", lambda r: len(r) == len(PROCESSORS))
        assert {r["metric"]["processor"] for r in flowing} == set(PROCESSORS)
        lag = await prometheus.wait_for("orderops:consumer_lag_messages:sum", lambda r: len(r) == len(PROCESSORS))
        assert all(float(r["value"][1]) < 100 for r in lag), lag
        assert await prometheus.query('ALERTS{alertname=~"OrderopsProcessorDown|OrderopsDeadLettersGrowing"}') == []

        # What Prometheus holds is what the processors export (no sample lost or double-counted).
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{processes['timeline'].url}/metrics") as resp:
                exported = await resp.text()
        contacts_exported = sum(float(line.rsplit(" ", 1)[1]) for line in exported.splitlines()
                                if line.startswith("orderops_support_contacts_total{"))
        await prometheus.wait_for("sum(orderops_support_contacts_total)", lambda r: r and value(r) == contacts_exported)
        assert contacts_exported == 2

        # The whole story again, as a replay or a redelivery would bring it: nothing counts twice.
        opened = value(await prometheus.query('sum(orderops_escalations_total{event="EscalationOpened"})'))
        for s in story(order_a, order_b):
            s.publish(kafka)
        events = sum(len(s.events) for s in story(order_a, order_b))
        await prometheus.wait_for('sum(orderops_duplicate_events_total{processor="timeline"})',
                                  lambda r: r and value(r) >= events)
        assert value(await prometheus.query("sum(orderops_support_contacts_total)")) == 2
        assert value(await prometheus.query("sum(orderops_refunds_completed_total)")) == 1
        assert value(await prometheus.query('sum(orderops_escalations_total{event="EscalationOpened"})')) == opened

        # Every query of the Grafana dashboard is valid PromQL that Prometheus answers.
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                await prometheus.query(target["expr"])
    finally:
        if provider is not None:
            provider.stop()
        if prometheus is not None:
            prometheus.stop()
        for process in processes.values():
            process.stop()
        smtp.stop()
        broker.stop()
