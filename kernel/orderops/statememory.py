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
"""

from __future__ import annotations

import rocksdict
from faust.stores.rocksdb import RocksDBOptions

MB = 1 << 20
_faust_as_options = RocksDBOptions.as_options


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


def _as_options(self: RocksDBOptions) -> rocksdict.Options:
    options = _faust_as_options(self)
    if _shared is not None and self.use_rocksdict:
        _shared.apply(options, self.bloom_filter_size)
    return options


def install(cache_mb: int, write_buffer_mb: int) -> StoreMemory | None:
    """Make every RocksDB database Faust opens from now on share one cache of ``cache_mb`` and one
    memtable limit of ``write_buffer_mb``; with ``write_buffer_mb`` 0, Faust's own settings."""
    global _shared
    if write_buffer_mb <= 0:
        _shared = None
    elif _shared is None or (_shared.cache_mb, _shared.write_buffer_mb) != (cache_mb, write_buffer_mb):
        _shared = StoreMemory(cache_mb, write_buffer_mb)
    RocksDBOptions.as_options = _as_options
    return _shared


def shared() -> StoreMemory | None:
    return _shared
