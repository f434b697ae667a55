"""One bad record on the compacted returns.policies, on a real broker: the tools and the processor's
view report it (topic, partition, offset, key, why) and go on; `orderops policies drop-unreadable`
removes it. One record does not decode; another decodes into a policy no decision could use."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest
from confluent_kafka import Producer

from orderops.codec.avro import Codec
from orderops.model.catalog import RETURNS_POLICIES
from orderops.ops.security import client_config
from orderops.runtime.globalview import GlobalView
from returns.policy import Policy, load_policy
from returns.policy_cli import default_files

pytestmark = pytest.mark.broker


def orderops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orderops.ops.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)


async def test_an_unreadable_policy_record_is_reported_skipped_and_removable(catalog_topics, run_id, caplog):
    bootstrap = catalog_topics
    assert orderops("policies", "publish").returncode == 0
    garbage_key, refused_key = f"garbage-{run_id}@1", f"refused-{run_id}@1"
    refused = load_policy(default_files()[0]).to_record() | {"policy_id": f"refused-{run_id}",
                                                              "restocking_fee_percent": 150}
    producer = Producer(client_config(bootstrap))
    producer.produce(RETURNS_POLICIES.name, key=garbage_key.encode(), value=b"not a policy at all")
    producer.produce(RETURNS_POLICIES.name, key=refused_key.encode(),
                     value=Codec().encode(RETURNS_POLICIES.value_schema, refused))
    assert producer.flush(30) == 0

    listed = orderops("policies", "list")
    assert listed.returncode == 0, listed.stderr
    assert "standard@1" in listed.stdout and "standard@2" in listed.stdout
    for key, why in ((garbage_key, "NotSingleObjectEncoded"), (refused_key, "restocking_fee_percent 150")):
        [told] = [line for line in listed.stderr.splitlines() if f"(key {key})" in line]
        assert told.startswith(f"policies: {RETURNS_POLICIES.name}[0]@") and why in told, told
    published = orderops("policies", "publish")
    assert published.returncode == 0 and "0 published" in published.stdout, published.stderr

    # The processor's view: the good versions, the bad ones reported, read once (not again from the start).
    view = GlobalView(bootstrap, RETURNS_POLICIES, Codec(), Policy.from_record, remedy="orderops policies drop-unreadable")
    with caplog.at_level(logging.WARNING, logger="orderops.runtime.globalview"):
        following = asyncio.create_task(view.run())
        try:
            await asyncio.wait_for(view.caught_up.wait(), 60)
            assert {"standard@1", "standard@2"} <= set(view.items)
            assert {garbage_key, refused_key} <= set(view.unreadable) and not {garbage_key, refused_key} & set(view.items)
            await asyncio.sleep(2)
        finally:
            following.cancel()
    assert not [r for r in caplog.records if "reading it failed" in r.getMessage()], "the view started over"
    assert sum("orderops policies drop-unreadable" in r.getMessage() for r in caplog.records) >= 2

    dropped = orderops("policies", "drop-unreadable")
    assert dropped.returncode == 0, dropped.stderr
    assert f"(key {garbage_key})" in dropped.stdout and f"(key {refused_key})" in dropped.stdout
    again = orderops("policies", "list")
    assert again.returncode == 0 and garbage_key not in again.stderr and refused_key not in again.stderr


def test_a_version_dated_in_the_past_is_refused_unless_published_backdated(catalog_topics, run_id, tmp_path):
    source = default_files()[0].read_text()
    policy_id = f"p-{run_id}"
    first, second = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    first.write_text(source.replace("policy_id: standard", f"policy_id: {policy_id}"))
    second.write_text(source.replace("policy_id: standard", f"policy_id: {policy_id}").replace(
        "version: 1", "version: 2").replace("effective_from: 2026-01-01T00:00:00Z", "effective_from: 2026-02-01T00:00:00Z"))
    assert orderops("policies", "publish", str(first)).returncode == 0
    refused = orderops("policies", "publish", str(second))
    assert refused.returncode == 1 and "--backdate" in refused.stderr and f"{policy_id}@1 already governed" in \
        refused.stderr
    assert f"{policy_id}@2" not in orderops("policies", "list").stdout
    backdated = orderops("policies", "publish", "--backdate", str(second))
    assert backdated.returncode == 0 and f"published {policy_id}@2" in backdated.stdout and "(backdated)" in \
        backdated.stdout, backdated.stderr
    [listed] = [line for line in orderops("policies", "list").stdout.splitlines() if line.startswith(f"{policy_id}@2")]
    assert "(backdated)" in listed
