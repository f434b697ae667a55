"""The write-behind's staging: what an order's next event reads while its predecessors' writes wait
for their outputs' acks; and which latest-only record of the steps completed together is sent.
(Its completion over Kafka is exercised by every processor test and the broker-kill fault test;
the newest view reaching support.order-views by the timeline's.)"""

from __future__ import annotations

import pytest

from orderops.catalog import RETURNS_POLICIES, SUPPORT_ORDER_VIEWS, SUPPORT_TIMELINE
from orderops.writebehind import Staging, Step, newest_latest


class Stored(dict):
    """A table's stored values, as far as staging reads them: a name and ``get``."""

    name = "orders"


def parse(stored: dict) -> tuple:
    return ("parsed", stored["n"])


def test_a_staged_value_is_read_before_the_table_until_it_is_written():
    table, staging = Stored(o1={"n": 0}), Staging(cached=10)
    version = staging.stage(table, "o1", {"n": 1})
    assert staging.get(table, "o1") == {"n": 1}
    table["o1"] = {"n": 1}
    staging.written(table, "o1", version)
    assert staging.get(table, "o1") == {"n": 1} and len(staging) == 0


def test_a_value_staged_as_json_text_is_read_parsed_as_the_table_would_give_it():
    table, staging = Stored(), Staging(cached=0)
    staging.stage(table, "o1", b'{"n": 1}')
    assert staging.get(table, "o1") == {"n": 1} and staging.load(table, "o1", parse) == ("parsed", 1)


def test_an_older_write_completing_leaves_the_newer_staged_value():
    table, staging = Stored(), Staging(cached=10)
    first = staging.stage(table, "o1", {"n": 1})
    staging.stage(table, "o1", {"n": 2})
    table["o1"] = {"n": 1}
    staging.written(table, "o1", first)
    assert staging.get(table, "o1") == {"n": 2}


def test_load_parses_the_stored_value_and_none_when_there_is_none():
    table, staging = Stored(o1={"n": 5}), Staging(cached=10)
    assert staging.load(table, "o1", parse) == ("parsed", 5)
    assert staging.load(table, "o2", parse) is None


def test_load_returns_the_object_last_put_without_parsing():
    table, staging = Stored(), Staging(cached=10)
    state = ("the", "object")
    staging.stage(table, "o1", {"n": 1}, loaded=state)
    assert staging.load(table, "o1", parse) is state


def test_forget_drops_cached_objects_but_not_staged_values():
    table, staging = Stored(o1={"n": 0}), Staging(cached=10)
    staging.stage(table, "o1", {"n": 1}, loaded=("stale", 1))
    staging.forget()  # a rebalance: another worker may have written the order meanwhile
    assert staging.load(table, "o1", parse) == ("parsed", 1)  # from the staged value, still unwritten


def test_the_cache_keeps_the_most_recently_used_orders():
    table, staging = Stored(o1={"n": 1}, o2={"n": 2}, o3={"n": 3}), Staging(cached=2)
    staging.stage(table, "o1", {"n": 1}, loaded="o1 object")
    staging.stage(table, "o2", {"n": 2}, loaded="o2 object")
    assert staging.load(table, "o1", parse) == "o1 object"  # o1 now the most recent
    staging.stage(table, "o3", {"n": 3}, loaded="o3 object")  # evicts o2
    assert staging.load(table, "o2", parse) == ("parsed", 2)
    assert staging.load(table, "o1", parse) == "o1 object"


def test_no_cache_when_its_size_is_zero():
    table, staging = Stored(o1={"n": 1}), Staging(cached=0)
    staging.stage(table, "o1", {"n": 1}, loaded="object")
    assert staging.load(table, "o1", parse) == ("parsed", 1)


def _step(name: str, **latest: str) -> Step:
    step = Step(event=name, staging=Staging(cached=0))
    for key, record in latest.items():
        step.send_latest(SUPPORT_ORDER_VIEWS, key, lambda record=record: record)
    return step


def test_of_the_latest_only_records_the_newest_per_key_is_sent_with_its_step():
    first, second, third = _step("e1", o1="o1 after e1", o2="o2 after e1"), _step("e2"), _step("e3", o1="o1 after e3")
    chosen = [(step.event, send(), older) for step, send, older in newest_latest([first, second, third]).values()]
    assert sorted(chosen) == [("e1", "o2 after e1", 0), ("e3", "o1 after e3", 1)]


def test_latest_only_records_of_different_topics_do_not_replace_each_other():
    step = _step("e1", o1="the view")
    step.send_latest(RETURNS_POLICIES, "o1", lambda: "a policy")
    assert sorted(send() for _, send, _ in newest_latest([step]).values()) == ["a policy", "the view"]


def test_only_a_compacted_topic_takes_latest_only_records():
    with pytest.raises(ValueError, match="support.timeline is not compacted"):
        _step("e1").send_latest(SUPPORT_TIMELINE, "o1", lambda: "an entry: each one counts")
