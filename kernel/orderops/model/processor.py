"""The state-machine processor: what order-state, fulfillment and returns are.

Its inputs, a table keyed by order, and pure functions (load, apply, expire, publish, deadline).
The batch path (``Service.state_machine_batches``, ``orderops.runtime.machine``) runs it over
Kafka; ``orderops.replay.rebuild`` runs it over messages already read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orderops.model import catalog, contract
from orderops.model.catalog import Topic
from orderops.model.envelope import Envelope
from orderops.model.workflow import Outcome


@dataclass(frozen=True)
class MachineProcessor:
    name: str
    inputs: tuple[Topic, ...]
    table: str  # the table holding each order's state (its changelog: <app id>-<table>-changelog)
    load: Callable[[dict[str, Any]], Any]
    apply: Callable[[Any, Envelope, str, datetime], Outcome]
    expire: Callable[[Any, datetime, str], Outcome]
    publish: Callable[[Outcome], Iterable[tuple[Topic, dict[str, Any]]]]
    deadline: Callable[[Any], datetime | None]
    stored_as: Callable[[Any], bytes] = lambda state: state.to_json_bytes()  # what its table keeps of a state
    handles: frozenset[str] | None = None  # the event types (short names) its handlers apply; None: every one

    @property
    def timers(self) -> Topic:
        return catalog.TIMER_TOPICS[self.name]

    @functools.cached_property
    def _ignorable_topics(self) -> frozenset[str]:
        causes = catalog.cause_topics(self.name)
        return frozenset(t.name for t in self.inputs if not contract.checks_topic(t.name) and t.name not in causes)

    def skips(self, topic: str, event_type: str) -> bool:
        """Whether an event is passed over, its order's state neither read nor written: no handler
        applies its type, no upstream system writes its topic (those are checked, and a meaningless
        one is rejected), and no record this processor reads can wait for it as its cause. Applied,
        it changed only the state's ``seen``; but every such event meant a state written and sent
        to the changelog, half of order-state's and returns' input (other processors' transitions
        and audit records)."""
        return self.handles is not None and event_type not in self.handles and topic in self._ignorable_topics
