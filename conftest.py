"""Fixtures every test may use. Broker tests get a real Kafka broker: see orderops.ops.brokers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from orderops_tools.testing import SupportUsers

from orderops.ops.admin import create_topics
from orderops.ops.settings import KafkaSettings

SECURE = os.environ.get("SECURE") == "1"


@pytest.fixture(scope="session", autouse=True)
def support_users(tmp_path_factory) -> SupportUsers:
    """ann (agent), lee (lead) and root (admin), in a users file every processor started by a test
    reads (through the environment); requests from tests sign in as ann unless they say otherwise.
    With SECURE=1 (SECURE=1 make test), every Kafka client of the tests acts as the admin of the
    suite's secrets, which every broker of the run shares."""
    if SECURE:  # before any broker, the suite's or a test's own: they all share these secrets
        from orderops.ops.security import principal_env, secrets_dir
        from orderops.ops.settings import default_run_dir

        secrets = secrets_dir(Path(os.environ.get("ORDEROPS_RUN_DIR", default_run_dir())))
        os.environ.update({"ORDEROPS_KAFKA_SECRETS_DIR": str(secrets), **principal_env("admin", secrets)})
    users = SupportUsers(tmp_path_factory.mktemp("secrets") / "support-users")
    os.environ["ORDEROPS_SUPPORT_USERS_FILE"] = str(users.path)
    os.environ["ORDEROPS_SUPPORT_TOKEN"] = users.tokens["ann"]
    return users


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The suite's broker. With SECURE=1 (SECURE=1 make test) a secure one, and every client of
    the tests acts as its admin unless a test says otherwise; private brokers share its secrets."""
    from orderops.ops.brokers import find_or_start_broker

    broker = find_or_start_broker()
    os.environ["KAFKA_BOOTSTRAP"] = broker.bootstrap
    yield broker.bootstrap
    broker.stop()


@pytest.fixture(scope="session")
def catalog_topics(kafka_bootstrap: str) -> str:
    """Every catalog topic exists (created idempotently, like `orderops topics create`)."""
    create_topics(settings=KafkaSettings(kafka_bootstrap, 1))
    if SECURE:
        from orderops.ops.security import setup

        setup(kafka_bootstrap, Path(os.environ["ORDEROPS_KAFKA_SECRETS_DIR"]))
    return kafka_bootstrap


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory) -> str:
    """A real Schema Registry of the suite's own (Apicurio, started as `make run` starts it:
    deploy/registry/registry.sh), for the Confluent framing: its API's base URL."""
    import subprocess

    from orderops_tools.testing import free_port

    script = Path(__file__).parent / "deploy" / "registry" / "registry.sh"
    env = {**os.environ, "ORDEROPS_REGISTRY_PORT": str(free_port()),
           "ORDEROPS_RUN_DIR": str(tmp_path_factory.mktemp("registry"))}
    subprocess.run([str(script), "up"], env=env, check=True, timeout=900)
    try:
        yield subprocess.run([str(script), "url"], env=env, check=True, capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run([str(script), "down"], env=env, timeout=120)


@pytest.fixture
def run_id() -> str:
    """A short id that keeps one test's orders, groups and apps apart from every other run's.

    Tests that draw random input seed it with this id; ORDEROPS_TEST_RUN_ID (the id a failed run
    printed) draws the same input again."""
    return os.environ.get("ORDEROPS_TEST_RUN_ID") or uuid.uuid4().hex[:8]
