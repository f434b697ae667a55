"""A rebuild shares the orders among processes (``replay_in_shares``): each order's state depends on
its own messages only, in their write order, so the shares' results together are one pass's."""

from __future__ import annotations

import pytest

from fulfillment.processor import definition
from orderops.codec.avro import Codec
from orderops.model import catalog
from orderops.ops.settings import ServiceSettings
from orderops.replay.rebuild import Message, replay, replay_in_shares


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    """The simulator's orders, as fulfillment's inputs, one garbage message among them."""
    from orderops_tools.bench import workload

    codec, sends = Codec(), workload(2000, seed=11)[0]
    began = int(codec.decode(sends[0].value, sends[0].topic.value_schema).record["occurred_at"].timestamp() * 1000)
    inputs = {t.name for t in definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0)).inputs}
    found = [Message(send.topic.name, n % 3, n, began + 1_000 * (n // 4), send.key, send.value)
             for n, send in enumerate(sends) if send.topic.name in inputs]
    return [*found, Message(catalog.WAREHOUSE_FULFILLMENT.name, 0, 10**6, began, b"o-garbage", b"\x00not avro")]


def everything(rebuilt):
    return rebuilt.states, rebuilt.outputs, rebuilt.applied, rebuilt.duplicates, rebuilt.dead_letters


def test_shares_of_the_orders_give_what_one_pass_gives(messages):
    processor = definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0))
    one = replay(processor, messages)
    assert one.applied > 1000 and len(one.dead_letters) == 1
    shares = replay_in_shares(processor, messages, everything, workers=3, parallel_from=0)
    assert len(shares) == 3 and all(states for states, *_ in shares), "every share had orders"
    states = {order_id: state for share in shares for order_id, state in share[0].items()}
    outputs = {event_id: out for share in shares for event_id, out in share[1].items()}
    assert states == one.states and outputs == one.outputs
    assert sum(s[2] for s in shares) == one.applied and sum(s[3] for s in shares) == one.duplicates
    assert [d for s in shares for d in s[4]] == one.dead_letters


def test_records_compared_as_they_are_made_in_one_pass_or_in_shares_find_the_same_differences(messages):
    """A rebuild compares each record with what the processor wrote as the replay makes it and keeps
    only ids and differences (kept, the records were most of a large replay's memory); each share's
    process is given the processor's records of its own orders only (``produced_by_share``)."""
    from datetime import timedelta

    from orderops.replay.rebuild import ComparedOutputs, produced_by_share, shares_for

    codec = Codec()
    processor = definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0))
    one = replay(processor, messages)
    written = {event_id: (topic, record) for event_id, (topic, record) in one.outputs.items()}
    digests = sorted(i for i, (topic, _) in written.items() if topic == catalog.TIMELINE_DIGESTS.name)
    changed, removed, *_ = sorted(set(written) - set(digests))
    topic, record = written[changed]
    written[changed] = (topic, {**record, "occurred_at": record["occurred_at"] + timedelta(seconds=1)})
    del written[removed]
    # A digest is not compared (its records are, on their topics): one changed and one missing make no difference.
    digest_topic, digest = written[digests[0]]
    written[digests[0]] = (digest_topic, {**digest, "occurred_at": digest["occurred_at"] + timedelta(seconds=1)})
    del written[digests[1]]
    other = next(out for out in written.values()
                 if out[1]["order_id"] != record["order_id"] and out[0] != catalog.TIMELINE_DIGESTS.name)
    written["e-extra"] = (other[0], {**other[1], "event_id": "e-extra"})
    values = [(topic, codec.encode(catalog.topic(topic).value_schema, record)) for topic, record in written.values()]
    values.append((catalog.WAREHOUSE_FULFILLMENT.name, b"\x00not avro"))  # not an envelope: passed over

    [everything] = produced_by_share(values, codec, processor.name, 1)
    compared = replay(processor, messages, outputs=lambda share: ComparedOutputs(everything, codec)).outputs
    found = compared.differences(set(one.states))
    assert sorted((d.what, d.detail.split(" ")[0]) for d in found) == sorted(
        [("output differs", changed), ("output missing", removed), ("output extra", "e-extra")])
    assert "occurred_at" in next(d.detail for d in found if d.what == "output differs")
    assert compared.made_ids == set(one.outputs) and len(compared) == len(one.outputs)

    assert shares_for(3, "wall", len(messages), parallel_from=0) == 3
    split = produced_by_share(values, codec, processor.name, 3)
    assert sum(map(len, split)) == len(everything) and all(split)
    in_shares = replay_in_shares(processor, messages, lambda rebuilt: rebuilt.outputs.differences(set(rebuilt.states)),
                                 workers=3, parallel_from=0, outputs=lambda share: ComparedOutputs(split[share], codec))
    assert sorted((d for share in in_shares for d in share), key=repr) == sorted(found, key=repr)
    dry_run = replay(processor, messages, outputs=lambda share: ComparedOutputs(None)).outputs
    assert len(dry_run) == len(one.outputs) and dry_run.differences(set(one.states)) == []


def test_one_worker_the_event_clock_or_few_messages_replay_in_one_pass(messages):
    processor = definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0))
    for kwargs in ({"workers": 1, "parallel_from": 0}, {"workers": 2, "clock": "event", "parallel_from": 0},
                   {"workers": 2}):
        assert replay_in_shares(processor, messages, lambda rebuilt: len(rebuilt.states), **kwargs) == [
            len(replay(processor, messages, clock=kwargs.get("clock", "wall")).states)]


def test_a_replay_leaves_no_reference_cycles_behind(messages):
    """The replay pauses the cyclic garbage collector (it walked the growing heap of states again and
    again): safe only while applying events creates no cycles. One did: the contract's walk of every
    upstream payload, a closure calling itself, 50 objects per event."""
    import gc

    from order_state.processor import definition as order_state

    for processor in (definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0)),
                      order_state(ServiceSettings.from_env(catalog.ORDER_STATE, 0))):
        replay(processor, messages[:200])  # caches filled
        gc.collect()
        was = gc.isenabled()
        gc.disable()
        try:
            replay(processor, messages)
            assert gc.collect() == 0
        finally:
            if was:
                gc.enable()


def test_the_collector_runs_again_after_a_replay_but_never_walks_what_it_built(messages):
    """Re-enabled, the collector walked everything the replay built at the next allocation (a tenth
    of a fulfillment replay in one process); what is alive when it ends is frozen instead."""
    import gc

    processor = definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0))
    was = gc.isenabled()
    gc.enable()
    try:
        frozen = gc.get_freeze_count()
        rebuilt = replay(processor, messages)
        assert gc.isenabled()
        assert gc.get_freeze_count() - frozen > len(rebuilt.outputs) + len(rebuilt.states)
    finally:
        if not was:
            gc.disable()


def test_a_share_that_fails_or_dies_is_an_error_that_says_so(messages):
    """A share's process that raised reports its traceback; one that ended without a result (killed,
    out of memory) is named with its exit code: the rebuild never waits for it forever."""
    import os

    processor = definition(ServiceSettings.from_env(catalog.FULFILLMENT, 0))

    def failing(rebuilt):
        raise ValueError("no summary today")

    with pytest.raises(RuntimeError, match="(?s)share 0 failed in its process.*ValueError: no summary today"):
        replay_in_shares(processor, messages, failing, workers=2, parallel_from=0)

    def dying(rebuilt):
        os._exit(3)

    with pytest.raises(RuntimeError, match=r"replaying share 0 ended \(exit code 3\) without a result"):
        replay_in_shares(processor, messages, dying, workers=2, parallel_from=0)


def test_the_number_of_processes_comes_from_the_environment(monkeypatch):
    from orderops.replay.rebuild import replay_workers

    monkeypatch.delenv("ORDEROPS_REPLAY_WORKERS", raising=False)
    assert replay_workers() >= 1
    monkeypatch.setenv("ORDEROPS_REPLAY_WORKERS", "3")
    assert replay_workers() == 3
    for wrong in ("0", "two", "-1"):
        monkeypatch.setenv("ORDEROPS_REPLAY_WORKERS", wrong)
        with pytest.raises(ValueError, match="a number of processes, 1 or more"):
            replay_workers()
