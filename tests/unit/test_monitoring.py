"""The Prometheus rules pass their promtool unit tests; the shipped scrape config is what the
catalog generates; the Grafana dashboard uses only rules and metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from orderops.model.catalog import PROCESSORS, WEB_PORTS
from orderops.ops.monitoring import DEPLOY, RULES, compose_addresses, scrape_config

GRAFANA = DEPLOY.parent / "grafana"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package (make prometheus)")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=DEPLOY)


def test_rules_are_valid():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rules_pass_their_unit_tests():
    tested = promtool("test", "rules", "tests/orderops.rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_says_what_to_do():
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
                assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_shipped_scrape_config_is_the_generated_one():
    shipped = (DEPLOY / "prometheus.yml").read_text()
    assert shipped == scrape_config(compose_addresses, ["/etc/prometheus/rules/orderops.rules.yml"]), \
        "deploy/prometheus/prometheus.yml drifted from the catalog: regenerate it with orderops.ops.monitoring.scrape_config"
    targets = [t for c in yaml.safe_load(shipped)["scrape_configs"] for s in c["static_configs"] for t in s["targets"]]
    assert targets == [f"{p}:{WEB_PORTS[p]}" for p in PROCESSORS]


def test_dashboard_uses_only_recorded_rules_and_exported_metrics():
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    dashboard = json.loads((GRAFANA / "dashboards" / "orderops.json").read_text())
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
    for expr in exprs:
        for name in re.findall(r"orderops:[a-z_0-9:]+", expr):
            assert name in recorded, f"{expr}: {name} is not a recording rule"
