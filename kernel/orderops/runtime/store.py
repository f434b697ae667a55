"""RocksDB's memory, bounded per processor rather than per database.

Faust opens one RocksDB database per table and partition (the timeline: 3 tables x 8 partitions),
each with its own 2 GB block cache and memtables of 64 MB, up to three of them. A memtable is
written to disk only once it is full. Until then every byte a processor writes to its tables stays
in memory: resident memory grows with the state written, with nothing to level it off short of
gigabytes per processor (fed at 50 events/s, the timeline grew by about 70 MB a minute;
docs/performance.md).

Here every database of a processor shares one block cache (``ORDEROPS_ROCKSDB_CACHE_MB``) and one
write buffer manager (``ORDEROPS_ROCKSDB_WRITE_BUFFER_MB``). Once the memtables of all its
databases together near that limit, RocksDB flushes the one being written to, and a database's
memtable is flushed at an eighth of the limit anyway. What a processor's tables hold in memory is
then bounded by the two settings, whatever the partitions and tables. The data, the changelogs and
every guarantee are unchanged: this only decides when memtables go to disk (with the write-ahead
log, as before) and how many blocks stay cached.

``ORDEROPS_ROCKSDB_WRITE_BUFFER_MB=0`` restores Faust's settings per database.

Faust is given this through its public store registry, not by patching: ``SharedMemoryStore`` is
Faust's RocksDB store whose options (``SharedMemoryOptions``) add the shared cache and limit; the
kernel's package registers it in the ``faust.stores`` entry-point namespace as
``orderops-rocksdb``, and ``ORDEROPS_STORE`` (default ``orderops-rocksdb://``) names it.
"""

from __future__ import annotations

from typing import Any

import rocksdict
from faust.stores import rocksdb as faust_rocksdb
from faust.stores.rocksdb import RocksDBOptions

MB = 1 << 20


class StoreMemory:
    """The block cache and the memtable limit every RocksDB database of this process shares."""

    def __init__(self, cache_mb: int, write_buffer_mb: int) -> None:
        self.cache_mb, self.write_buffer_mb = cache_mb, write_buffer_mb
        # One object each: RocksDB shares a cache or a manager only between options given the same one.
        self.cache = rocksdict.Cache(cache_mb * MB)
        self.write_buffers = rocksdict.WriteBufferManager(write_buffer_mb * MB, False)

    @property
    def memtable_bytes(self) -> int:
        """One database's memtable size: an eighth of the shared limit, so that no database holds much
        of it and RocksDB's arena blocks (an eighth of a memtable) stay small next to it."""
        return max(MB, self.write_buffer_mb * MB // 8)

    def apply(self, options: rocksdict.Options, bloom_filter_bits: int) -> None:
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(self.memtable_bytes)
        # Faust's table factory cannot be read back from the options: it is built again, with
        # Faust's bloom filter and index, and the shared cache in place of a cache of its own.
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(bloom_filter_bits, True)
        table.set_block_cache(self.cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)

    def usage(self) -> dict[str, int]:
        """Bytes in the memtables of all databases, and in the shared block cache."""
        return {"memtables": self.write_buffers.get_usage(), "block_cache": self.cache.get_usage()}


_shared: StoreMemory | None = None


class SharedMemoryOptions(RocksDBOptions):
    """Faust's options of a RocksDB database, with the process's shared cache and memtable limit."""

    def as_options(self) -> rocksdict.Options:
        options: rocksdict.Options = super().as_options()
        if _shared is not None and self.use_rocksdict:
            _shared.apply(options, self.bloom_filter_size)
        return options


class SharedMemoryStore(faust_rocksdb.Store):
    """Faust's RocksDB store (one database per partition) opening its databases with
    ``SharedMemoryOptions``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's __init__ took read_only and driver out of self.options; the rest are its options.
        self.rocksdb_options = SharedMemoryOptions(**(self.options or {}), use_rocksdict=self.use_rocksdict)


def install(cache_mb: int, write_buffer_mb: int) -> StoreMemory | None:
    """Make every database ``SharedMemoryOptions`` opens from now on share one cache of
    ``cache_mb`` and one memtable limit of ``write_buffer_mb``; with ``write_buffer_mb`` 0, Faust's
    own settings."""
    global _shared
    if write_buffer_mb <= 0:
        _shared = None
    elif _shared is None or (_shared.cache_mb, _shared.write_buffer_mb) != (cache_mb, write_buffer_mb):
        _shared = StoreMemory(cache_mb, write_buffer_mb)
    return _shared


def shared() -> StoreMemory | None:
    return _shared
