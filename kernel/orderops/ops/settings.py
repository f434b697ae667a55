"""Configuration from the environment, with the defaults a single-machine run needs.

Every variable is documented in docs/configuration.md; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orderops.ops.paths import source_root


def default_run_dir() -> Path:
    return (source_root() or Path.cwd()) / ".run"


# librdkafka's default partitioner is consistent_random (CRC32); aiokafka, Faust and the Java
# client use murmur2. Every order-scoped topic is co-partitioned by order id, so every producer
# must hash keys the same way: confluent-kafka producers take these settings.
# How long a processor's Faust producer lets a batch fill (ORDEROPS_PRODUCER_LINGER_MS), unless the
# service says otherwise (Service(default_linger_ms=...)).
DEFAULT_LINGER_MS = 5.0

PRODUCER_DEFAULTS = {"partitioner": "murmur2_random", "enable.idempotence": True, "acks": "all", "linger.ms": 5}


def key_partition(key: bytes, partitions: int) -> int:
    """The partition every producer here puts ``key`` on (murmur2, as Java, aiokafka and Faust do)."""
    from aiokafka.partitioner import murmur2

    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    replication_factor: int
    # Of topics this project creates: with acks=all, a write succeeds once this many replicas have it.
    min_insync_replicas: int = 1

    @classmethod
    def from_env(cls) -> KafkaSettings:
        return cls(
            bootstrap=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            replication_factor=int(os.environ.get("ORDEROPS_REPLICATION_FACTOR", "1")),
            min_insync_replicas=int(os.environ.get("ORDEROPS_MIN_INSYNC_REPLICAS", "1")),
        )


@dataclass(frozen=True)
class ServiceSettings:
    """What the service factory needs to run one processor."""

    service: str
    kafka: KafkaSettings
    store: str
    data_dir: Path
    web_host: str  # the host other workers and clients reach this worker at (Faust routes table reads there)
    web_bind: str  # the address it listens on
    web_port: int
    log_level: str
    log_format: str  # text (Faust's lines) or json (orderops.ops.logs)
    standby_replicas: int
    park_deadline_seconds: float
    timer_interval_seconds: float
    clock: str
    instance: str
    session_timeout_seconds: float
    request_timeout_seconds: float
    support_users_file: Path  # who may call the HTTP APIs (orderops.http.auth); absent: nobody may
    http_max_body_bytes: int
    state_cache_orders: int  # keys whose parsed state the batch path keeps between batches
    producer_linger_ms: float  # how long the producer lets a batch fill before sending it
    # How long a record may take to be acknowledged, retries included; then a new client sends it again.
    producer_message_timeout_seconds: float
    # Every RocksDB database of the processor shares one block cache and one memtable limit
    # (orderops.runtime.store); a write buffer of 0 leaves Faust's settings per database.
    rocksdb_cache_mb: int
    rocksdb_write_buffer_mb: int
    # While records flow, a fetch returns once this much is there or that long has passed
    # (orderops.runtime.engine.FetchPolicy; after an empty fetch, Faust's 1 byte and 1.5 s).
    fetch_min_bytes: int
    fetch_max_wait_ms: int
    # The most records the batch path applies before it flushes and commits (a larger fetch is
    # applied in parts, in its write order): bounds the wait of a revocation (the part in hand
    # finishes first) and what a crash reads again.
    batch_max_records: int
    # How often the batch path commits its input offsets (at most; and at every revocation): a
    # commit is a broker round trip, and every batch's was most of a quiet processor's wait.
    commit_interval_seconds: float
    # How long a task's records wait for a partition of the task whose fetches fail before they go
    # on without it (out of write order): longer than a leader's failover.
    task_idle_limit_seconds: float
    gc_threshold: int  # allocations between the cyclic garbage collector's runs (orderops.service.collect_garbage_seldom)

    @property
    def app_id(self) -> str:
        """Consumer group and changelog prefix: the service name, or ``<service>-<instance>``."""
        return f"{self.service}-{self.instance}" if self.instance else self.service

    @classmethod
    def from_env(cls, service: str, default_web_port: int, default_linger_ms: float = DEFAULT_LINGER_MS,
                 default_timer_interval_seconds: float = 10.0) -> ServiceSettings:
        env = os.environ
        run_dir = Path(env.get("ORDEROPS_RUN_DIR", default_run_dir()))
        return cls(
            service=service,
            kafka=KafkaSettings.from_env(),
            store=env.get("ORDEROPS_STORE", "orderops-rocksdb://"),
            data_dir=Path(env.get("ORDEROPS_DATA_DIR", run_dir / "state")) / service,
            web_host=env.get("ORDEROPS_WEB_HOST", "127.0.0.1"),
            web_bind=env.get("ORDEROPS_WEB_BIND", env.get("ORDEROPS_WEB_HOST", "127.0.0.1")),
            web_port=int(env.get("WEB_PORT", default_web_port)),
            log_level=env.get("LOG_LEVEL", "info"),
            log_format=env.get("ORDEROPS_LOG_FORMAT", "text"),
            standby_replicas=int(env.get("ORDEROPS_STANDBY_REPLICAS", "0")),
            park_deadline_seconds=float(env.get("ORDEROPS_PARK_DEADLINE_SECONDS", str(24 * 3600))),
            timer_interval_seconds=float(env.get("ORDEROPS_TIMER_INTERVAL_SECONDS", str(default_timer_interval_seconds))),
            clock=env.get("ORDEROPS_CLOCK", "wall"),
            instance=env.get("ORDEROPS_INSTANCE", ""),
            session_timeout_seconds=float(env.get("ORDEROPS_SESSION_TIMEOUT_SECONDS", "30")),
            request_timeout_seconds=float(env.get("ORDEROPS_REQUEST_TIMEOUT_SECONDS", "90")),
            support_users_file=Path(env.get("ORDEROPS_SUPPORT_USERS_FILE", run_dir / "secrets" / "support-users")),
            http_max_body_bytes=int(env.get("ORDEROPS_HTTP_MAX_BODY_BYTES", str(64 * 1024))),
            state_cache_orders=int(env.get("ORDEROPS_STATE_CACHE_ORDERS", "10000")),
            producer_linger_ms=float(env.get("ORDEROPS_PRODUCER_LINGER_MS", str(default_linger_ms))),
            producer_message_timeout_seconds=float(env.get("ORDEROPS_PRODUCER_MESSAGE_TIMEOUT_SECONDS", "60")),
            rocksdb_cache_mb=int(env.get("ORDEROPS_ROCKSDB_CACHE_MB", "64")),
            rocksdb_write_buffer_mb=int(env.get("ORDEROPS_ROCKSDB_WRITE_BUFFER_MB", "64")),
            fetch_min_bytes=int(env.get("ORDEROPS_FETCH_MIN_BYTES", str(64 * 1024))),
            fetch_max_wait_ms=int(env.get("ORDEROPS_FETCH_MAX_WAIT_MS", "100")),
            batch_max_records=int(env.get("ORDEROPS_BATCH_MAX_RECORDS", "1000")),
            commit_interval_seconds=float(env.get("ORDEROPS_COMMIT_INTERVAL_SECONDS", "1")),
            task_idle_limit_seconds=float(env.get("ORDEROPS_TASK_IDLE_LIMIT_SECONDS", "30")),
            gc_threshold=int(env.get("ORDEROPS_GC_THRESHOLD", "100000")),
        )
