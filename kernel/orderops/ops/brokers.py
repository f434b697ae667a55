"""Finding a broker for tests, benchmarks and tools, in the order the design fixes:
``KAFKA_BOOTSTRAP`` if set; a testcontainers Kafka when a Docker engine answers; otherwise the
project's own embedded broker, started through the same script as ``make kafka-up``."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orderops.ops.paths import source_root

KAFKA_SCRIPT = (source_root() or Path.cwd()) / "deploy" / "kafka" / "kafka.sh"
REGISTRY_SCRIPT = (source_root() or Path.cwd()) / "deploy" / "registry" / "registry.sh"
TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:8.0.0"  # Kafka 4.0 in KRaft mode


@dataclass
class Broker:
    bootstrap: str
    origin: str  # "environment", "testcontainers" or "embedded"
    stop: Callable[[], None]


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_or_start_broker() -> Broker:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if bootstrap:
        return Broker(bootstrap, "environment", lambda: None)
    if os.environ.get("ORDEROPS_TEST_DOCKER", "auto") != "never" and _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        container = KafkaContainer(os.environ.get("ORDEROPS_TEST_KAFKA_IMAGE", TESTCONTAINERS_IMAGE)).with_kraft()
        container.start()
        return Broker(container.get_bootstrap_server(), "testcontainers", container.stop)
    port = os.environ.get("KAFKA_PORT", "9092")
    already_running = subprocess.run([str(KAFKA_SCRIPT), "status"], capture_output=True).returncode == 0
    if not already_running:
        subprocess.run([str(KAFKA_SCRIPT), "up"], check=True)

    def stop() -> None:
        if not already_running:
            subprocess.run([str(KAFKA_SCRIPT), "down"], check=False)

    return Broker(f"127.0.0.1:{port}", "embedded", stop)
