"""Table keys (orderops.service.RightSizedJson): the bytes Faust's JSON codec writes, each held at
its own size — Faust keeps the last 1,000 keys of every table, and orjson's bytes came with 4 KB each."""

from __future__ import annotations

import tracemalloc

from faust.serializers import codecs

from orderops.service import TABLE_KEY_CODEC, TABLE_VALUE_CODEC


def held_bytes(dumps, keys: list[str]) -> tuple[list[bytes], int]:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [dumps(key) for key in keys]
        return kept, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_table_keys_are_the_bytes_faust_writes_held_at_their_own_size():
    keys = [f"order-{n:06d}" for n in range(1000)]
    ours, ours_held = held_bytes(codecs.get_codec(TABLE_KEY_CODEC).dumps, keys)
    faust, faust_held = held_bytes(codecs.get_codec("json").dumps, keys)
    assert ours == faust  # the changelogs' keys do not change
    assert ours_held < 120 * len(keys), f"{ours_held / len(keys):.0f} bytes held per key"
    assert codecs.get_codec(TABLE_KEY_CODEC).loads(ours[0]) == keys[0]
    print(f"bytes held per key: {ours_held / len(keys):.0f} (Faust's codec: {faust_held / len(keys):.0f})")


def test_a_processors_table_store_encodes_its_keys_so():
    """Faust takes a table's key serializer from its key type, not from the schema it is given: the
    codec has to be set on the table itself, or the key index keeps orjson's 4 KB bytes."""
    from notifier.app import ledgers

    store = ledgers.data
    assert store.key_serializer == TABLE_KEY_CODEC
    keys = [f"order-{n:06d}" for n in range(1000)]
    kept, held = held_bytes(store._encode_key, keys)
    assert kept[0] == b'"order-000000"' and held < 120 * len(keys), f"{held / len(keys):.0f} bytes held per key"
    # Values too: JSON text (envelope.to_json_bytes) is stored as it is, not encoded again as a string.
    assert store.value_serializer == TABLE_VALUE_CODEC and store._encode_value(b'{"n":1}') == b'{"n":1}'
