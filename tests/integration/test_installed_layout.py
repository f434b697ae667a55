"""The packages installed the way the Dockerfile installs them — not editable, away from the source
tree, schemas and policies beside the working directory — work: the CLI, the contract, the policy
files, package data (templates, rules, the console) and a processor that starts and serves.
(These machines have no Docker engine; this is the image's layout without the image.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from orderops_tools.testing import ServiceProcess, free_port

from orderops.model.catalog import ALL_TOPICS
from orderops.ops.paths import source_root

ROOT = source_root() or Path.cwd()
PROJECTS = ["kernel", *(str(p.parent.relative_to(ROOT)) for p in sorted((ROOT / "services").glob("*/pyproject.toml"))),
            "tools"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("image")
    site, srv, sources = base / "site", base / "srv", base / "src"
    for project in PROJECTS:  # built from copies: a build leaves build/ folders beside the sources
        shutil.copytree(ROOT / project, sources / project, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests"))
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                            "--target", str(site), *(str(sources / p) for p in PROJECTS)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    shutil.copytree(ROOT / "schemas", srv / "schemas")
    shutil.copytree(ROOT / "policies", srv / "policies")
    return {"PYTHONPATH": str(site), "ORDEROPS_SCHEMAS_DIR": str(srv / "schemas"), "ORDEROPS_RUN_DIR": str(base / "run"),
            "ORDEROPS_WEB_BIND": "0.0.0.0", "cwd": str(srv), "site": str(site)}


def run(installed: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **{k: v for k, v in installed.items() if k not in ("cwd", "site")}}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=installed["cwd"], env=env,
                          timeout=120)


def test_cli_contract_policies_and_package_data_work_when_installed(installed):
    probe = run(installed, "-c", """
import sys
from importlib.resources import files
import orderops, order_state, fulfillment, returns, notifier, timeline, orderops_tools
from orderops.model.catalog import ALL_TOPICS
from orderops.ops.paths import source_root
assert source_root() is None, "running from the source tree, not the installed layout"
for module in (orderops, order_state, fulfillment, returns, notifier, timeline, orderops_tools):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
from orderops.codec.avro import Codec
from orderops.model.catalog import STOREFRONT_ORDERS
from orderops_tools.scenario import Story, address, card, customer, line, money
story = Story("o-1")
story.on(STOREFRONT_ORDERS).OrderPlaced(customer=customer(), lines=[line("l1", "Mug", 1, "10.00")],
                                        instruments=[card("card-1", "10.00")], shipping_address=address(), total=money("10.00"))
codec = Codec()
schema = STOREFRONT_ORDERS.value_schema
record = story.events[0].envelope.to_record()
assert codec.decode(codec.encode(schema, record), schema).record["event_id"] == "o-1:0001:OrderPlaced"
from notifier.rendering import Templates
assert sorted(p.name for p in (files("notifier") / "templates").iterdir()) == ["de", "en"]
assert (files("notifier") / "templates" / "en" / "layout" / "message.html").is_file()
from timeline.domain import Rules
assert Rules.load(files("timeline") / "rules.yaml").escalations
assert (files("timeline") / "static" / "console.html").is_file()
print("ok")
""", installed["site"])
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stdout + probe.stderr
    listed = run(installed, "-m", "orderops.ops.cli", "topics", "list")
    assert listed.returncode == 0 and all(t.name in listed.stdout for t in ALL_TOPICS), listed.stderr
    checked = run(installed, "-m", "orderops.ops.cli", "policies", "check")  # policies/ of the working directory
    assert checked.returncode == 0 and "standard@1" in checked.stdout and "standard@2" in checked.stdout, checked.stderr


@pytest.mark.broker
async def test_a_processor_starts_and_serves_when_installed(installed, catalog_topics, run_id, tmp_path):
    port = free_port()
    env = {k: v for k, v in installed.items() if k not in ("cwd", "site")}
    env.update({"KAFKA_BOOTSTRAP": catalog_topics, "WEB_PORT": str(port), "ORDEROPS_INSTANCE": f"img{run_id}",
                "ORDEROPS_DATA_DIR": str(tmp_path / "state")})
    process = ServiceProcess(["-m", "timeline"], env, tmp_path / "timeline.log", port)
    process.start()
    try:
        await process.wait_ready(timeout=120)
        status, _ = await process.get_json("/openapi.json")
        assert status == 200
    finally:
        process.stop()
