"""The benchmark rebuilds a million messages without a million on the broker: the processor's inputs
and copies of them, each copy's orders renamed (orderops_tools.bench.renamed_copies). Each copy must
replay as the original did, or the rate would be of some other work."""

from __future__ import annotations

import pytest
from orderops_tools.bench import renamed_copies, workload

from fulfillment.processor import definition
from orderops.codec.avro import Codec
from orderops.model import catalog
from orderops.ops.settings import ServiceSettings
from orderops.replay.rebuild import Message, replay


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    codec, sends = Codec(), workload(1500, seed=7)[0]
    began = int(codec.decode(sends[0].value, sends[0].topic.value_schema).record["occurred_at"].timestamp() * 1000)
    inputs = {t.name for t in definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0)).inputs}
    return [Message(send.topic.name, n % 3, n, began + 1_000 * (n // 4), send.key, send.value, (("cause", send.key),))
            for n, send in enumerate(sends) if send.topic.name in inputs]


def test_each_copy_is_new_orders_that_replay_as_the_originals_did(messages):
    processor = definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0))
    copies = renamed_copies(messages, 2 * len(messages) + 1)
    assert len(copies) == 3 * len(messages) and copies[:len(messages)] == messages
    original, copied = replay(processor, messages), replay(processor, copies)
    assert original.applied > 1000 and not original.dead_letters and not copied.dead_letters
    assert len(copied.states) == 3 * len(original.states) and copied.applied == 3 * original.applied
    assert len(copied.outputs) == 3 * len(original.outputs)
    for prefix in (b"c0001-", b"c0002-"):
        assert all(m.headers == (("cause", m.key),) and m.key.startswith(prefix)
                   for m in copies if m.key.startswith(prefix))
        for order_id, state in original.states.items():
            renamed = order_id.replace("sim-7-", prefix.decode())
            assert copied.states[renamed].to_json_bytes() == state.to_json_bytes().replace(b"sim-7-", prefix)


def test_inputs_of_other_orders_are_not_copied(messages):
    stranger = Message(catalog.WAREHOUSE_FULFILLMENT.name, 0, 10**6, 0, b"o-1", b"\x00")
    with pytest.raises(ValueError, match="several prefixes"):
        renamed_copies([*messages, stranger], 10 * len(messages))
    assert renamed_copies(messages, 1) == messages
