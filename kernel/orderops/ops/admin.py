"""Topic administration from the catalog (confluent-kafka AdminClient)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from orderops.model.catalog import ALL_TOPICS, Topic
from orderops.ops.security import client_config
from orderops.ops.settings import KafkaSettings


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    differing: dict[str, list[str]] = field(default_factory=dict)
    aligned: dict[str, list[str]] = field(default_factory=dict)  # settings set to the catalog's (align=True)

    def lines(self) -> list[str]:
        out = [f"created   {name}" for name in self.created]
        out += [f"exists    {name}" for name in self.existing if name not in self.differing and name not in self.aligned]
        out += [f"ALIGNED   {name}: " + "; ".join(diffs) for name, diffs in self.aligned.items()]
        for name, diffs in self.differing.items():
            out.append(f"DIFFERS   {name}: " + "; ".join(diffs))
        return out


def admin_client(settings: KafkaSettings | None = None) -> AdminClient:
    settings = settings or KafkaSettings.from_env()
    return AdminClient(client_config(settings.bootstrap))


def create_topics(topics: tuple[Topic, ...] = ALL_TOPICS, settings: KafkaSettings | None = None,
                  align: bool = False) -> TopicReport:
    """Create every missing topic; report existing ones whose settings differ from the catalog.

    An existing topic's partition count is never changed: that re-keys orders across partitions,
    which an operator must decide and plan, not a set-up script. Its other settings (retention,
    timestamp type...) are set to the catalog's when ``align`` is given (`topics create --align`).
    """
    settings = settings or KafkaSettings.from_env()
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=30)
    report = TopicReport()
    missing = [t for t in topics if t.name not in metadata.topics]
    if missing:
        report.created, report.existing = _create(admin, [
            NewTopic(t.name, t.partitions, settings.replication_factor,
                     config={**t.config, "min.insync.replicas": str(settings.min_insync_replicas)}) for t in missing])
    if report.created:
        _wait_for_leaders(admin, report.created)
    present = [t for t in topics if t.name in metadata.topics]
    report.existing += [t.name for t in present]
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in present]
        configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
        for t in present:
            diffs = []
            actual_partitions = len(metadata.topics[t.name].partitions)
            if actual_partitions != t.partitions:
                diffs.append(f"{actual_partitions} partitions, catalog says {t.partitions}")
            settable = {key: want for key, want in t.config.items()
                        if configs[t.name].get(key) is not None and configs[t.name][key].value != want}
            if align and settable:
                _set_configs(admin, t.name, settable)
                report.aligned[t.name] = [f"{key}={configs[t.name][key].value}, now {want}" for key, want in settable.items()]
            else:
                diffs += [f"{key}={configs[t.name][key].value}, catalog says {want}" for key, want in settable.items()]
            if diffs:
                report.differing[t.name] = diffs
    return report


def declare_topic(bootstrap: str, name: str, partitions: int, replication: int, config: dict[str, str]) -> None:
    """Create one topic unless it exists, and return once its partitions have leaders (Faust
    declares its internal topics this way: changelogs, its assignor's)."""
    admin = AdminClient(client_config(bootstrap))
    if name not in admin.list_topics(timeout=30).topics:
        _create(admin, [NewTopic(name, partitions, replication, config=config)])
    _wait_for_leaders(admin, [name])


def _create(admin: AdminClient, topics: list[NewTopic]) -> tuple[list[str], list[str]]:
    """Create the topics; return those created and those another client created first."""
    created, existing = [], []
    for name, future in admin.create_topics(topics, operation_timeout=30).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
            existing.append(name)
    return created, existing


def _set_configs(admin: AdminClient, topic: str, values: dict[str, str]) -> None:
    entries = [ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in values.items()]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=entries)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float = 30) -> None:
    """A created topic is usable once every partition has a leader; return only then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=10)
        pending = [n for n in names if n not in metadata.topics or metadata.topics[n].error is not None
                   or any(p.leader < 0 for p in metadata.topics[n].partitions.values())]
        if not pending:
            return
        time.sleep(0.2)
    raise TimeoutError(f"topics without partition leaders after {timeout:.0f}s: {pending}; check the broker's log")


def wait_for_broker(bootstrap: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> float:
    """Block until the broker answers a metadata request; return the seconds it took."""
    start = time.monotonic()
    admin = AdminClient(client_config(bootstrap, log_level=0, logger=QuietLogger()))
    last_error: Exception | None = None
    while time.monotonic() - start < timeout:
        if not alive():
            raise RuntimeError("the broker process exited before it answered")
        try:
            metadata = admin.list_topics(timeout=2)
            if metadata.brokers:
                return time.monotonic() - start
        except KafkaException as exc:
            last_error = exc
        time.sleep(0.5)
    raise TimeoutError(f"no broker answered at {bootstrap} within {timeout:.0f}s (last error: {last_error})")


class QuietLogger:
    """A logger that swallows librdkafka's connection-refused chatter while a broker starts."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass
