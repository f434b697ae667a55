"""Every RocksDB database a processor opens shares one memtable limit and one block cache
(orderops.runtime.store): written past the limit, the memtables go to disk, and memory stays bounded
however many partitions' databases are written. With Faust's settings per database, the same writes
all stay in memory. Real RocksDB databases, opened the way Faust's store opens them."""

from __future__ import annotations

import os
import time

import faust.stores
import pytest

from orderops.runtime import store as statememory
from orderops.runtime.store import MB, SharedMemoryOptions

PARTITIONS = 4
WRITTEN_PER_PARTITION = 6 * MB


@pytest.fixture(autouse=True)
def faust_settings_afterwards():
    yield
    statememory.install(0, 0)


def _write_partitions(root) -> list:
    databases = [SharedMemoryOptions(use_rocksdict=True).open(root / f"table-{p}.db") for p in range(PARTITIONS)]
    value = os.urandom(4096)
    for n in range(WRITTEN_PER_PARTITION // len(value)):
        for db in databases:
            db[f"order-{n}".encode()] = value
    return databases


def _on_disk(root) -> int:
    return sum(f.stat().st_size for f in root.rglob("*.sst"))


def test_memtables_of_all_databases_stay_under_the_shared_limit_and_go_to_disk(tmp_path):
    memory = statememory.install(cache_mb=8, write_buffer_mb=4)
    databases = _write_partitions(tmp_path)
    try:
        deadline = time.monotonic() + 20
        while memory.usage()["memtables"] > 4 * MB and time.monotonic() < deadline:
            time.sleep(0.1)  # the flushes the writes triggered run in RocksDB's background threads
        used = memory.usage()
        assert used["memtables"] <= 4 * MB, used
        assert _on_disk(tmp_path) > PARTITIONS * WRITTEN_PER_PARTITION / 2, "flushed to SST files"
        assert all(db[b"order-7"] is not None for db in databases), "what was flushed reads back"
        assert used["block_cache"] <= 8 * MB
    finally:
        for db in databases:
            db.close()


def test_with_fausts_settings_every_write_stays_in_the_memtables(tmp_path):
    assert statememory.install(cache_mb=8, write_buffer_mb=0) is None
    databases = _write_partitions(tmp_path)
    try:
        assert _on_disk(tmp_path) == 0, "64 MB per database: nothing was flushed"
    finally:
        for db in databases:
            db.close()


def test_the_processor_settings_come_from_the_environment(monkeypatch, tmp_path):
    from orderops.ops.settings import ServiceSettings

    monkeypatch.delenv("ORDEROPS_ROCKSDB_CACHE_MB", raising=False)
    monkeypatch.delenv("ORDEROPS_ROCKSDB_WRITE_BUFFER_MB", raising=False)
    settings = ServiceSettings.from_env("order-state", 8080)
    assert (settings.rocksdb_cache_mb, settings.rocksdb_write_buffer_mb) == (64, 64)
    monkeypatch.setenv("ORDEROPS_ROCKSDB_WRITE_BUFFER_MB", "0")
    assert ServiceSettings.from_env("order-state", 8080).rocksdb_write_buffer_mb == 0


def test_faust_finds_the_store_by_its_registered_name_and_nothing_of_faust_is_patched():
    from faust.stores.rocksdb import RocksDBOptions

    from orderops.runtime.store import SharedMemoryStore

    assert faust.stores.by_url("orderops-rocksdb://") is SharedMemoryStore
    statememory.install(cache_mb=8, write_buffer_mb=4)
    assert RocksDBOptions.as_options is not SharedMemoryOptions.as_options
