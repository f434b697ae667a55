"""The simulator's stories, with its chaos (duplicates, reordering), through fulfillment, then
order-state and returns (which read fulfillment's snapshots), offline: no processor makes two
records under one id, and no two processors make one notification id.

Readers dedupe by id: the notifier by notification id (``<cause id>:notify:<type>``), the timeline
by event id across all its inputs. Two records under one id reach the customer or the agent as one,
whichever a reader met first: found when one fulfillment snapshot cancelled two lines and returns
asked for two refund_issued messages of the one cause."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from orderops_tools.simulator import SCENARIOS, Config, plan

from fulfillment.processor import definition as fulfillment
from order_state.processor import definition as order_state
from orderops.codec.avro import Codec
from orderops.model import catalog
from orderops.ops.settings import ServiceSettings
from orderops.replay.rebuild import Message, Rebuilt, replay
from returns.domain import Policies
from returns.policy import load_policy
from returns.processor import definition as returns

START = datetime(2026, 9, 1, 8, tzinfo=UTC)
POLICIES = Path(__file__).resolve().parents[2] / "policies"
CODEC = Codec()


def upstream(seed: int) -> list[Message]:
    """The plan's sends as the broker would keep them, a second apart, on partition 0 (the processors
    run on event time: these broker times are not the events')."""
    sends, _ = plan(Config(seed=seed, orders=150, compression=1e9, rate=1e9, start=START, order_interval=600,
                           shares={**SCENARIOS, "return": 0.4}, duplicates=0.05, reorder=0.05), START)
    return [Message(send.topic.name, 0, n, 1_000 * n, send.key, send.value) for n, send in enumerate(sends)]


def outputs_as_inputs(rebuilt: Rebuilt, causes: dict[str, int]) -> list[Message]:
    """What a replay made, as its readers meet it: each record written just after its cause."""
    made = []
    for n, (event_id, (topic, record)) in enumerate(rebuilt.outputs.items()):
        cause = next(ts for prefix, ts in causes.items() if event_id.startswith(prefix))
        made.append(Message(topic, 0, n, cause + 500, record["order_id"].encode(),
                            CODEC.encode(catalog.topic(topic).value_schema, record)))
    return made


@pytest.mark.parametrize("seed", [933897, 11])
def test_no_processor_makes_two_records_under_one_id(seed):
    inputs = upstream(seed)
    causes = {CODEC.head(m.value).event_id + ":": m.timestamp_ms for m in inputs}
    settings = {name: ServiceSettings.from_env(name, 0) for name in catalog.PROCESSORS}

    warehouse = replay(fulfillment(settings[catalog.FULFILLMENT]), inputs, "event")
    snapshots = outputs_as_inputs(warehouse, causes)
    both = sorted([*inputs, *snapshots], key=lambda m: m.timestamp_ms)
    policies = Policies({p.ref: p for p in map(load_policy, sorted(POLICIES.glob("*.yaml")))}, "standard")
    books = replay(returns(settings[catalog.RETURNS], policies=lambda: policies), both, "event")
    orders = replay(order_state(settings[catalog.ORDER_STATE]), both, "event")

    notified: Counter = Counter()
    for name, rebuilt in (("fulfillment", warehouse), ("returns", books), ("order-state", orders)):
        assert rebuilt.applied > 1000 and not rebuilt.dead_letters, name
        assert rebuilt.made_twice == [], f"{name} made these ids twice: {rebuilt.made_twice[:5]}"
        notified.update(i for i, (topic, _) in rebuilt.outputs.items() if topic == catalog.NOTIFICATIONS_REQUESTS.name)
    refunds = [i for i in books.outputs if ":notify:refund_issued" in i]
    assert len(refunds) > 10 and len(notified) > 500, (len(refunds), len(notified))
    assert [i for i, n in notified.items() if n > 1] == [], "one notification id made by two processors"
