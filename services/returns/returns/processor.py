"""returns as a state-machine processor: its inputs, its table and its pure functions — run live
on the batch path (worker.py, policies from the global view) and offline by ``orderops replay rebuild``
and the policy what-if (policies read from returns.policies, or a draft)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta

from orderops.model.catalog import RETURNS, RETURNS_POLICIES, order_inputs
from orderops.model.processor import MachineProcessor
from orderops.ops.settings import ServiceSettings
from returns import domain
from returns.domain import Policies, ReturnsState
from returns.policy import Policy
from returns.records import publishable

INPUTS = order_inputs(RETURNS)
log = logging.getLogger("returns.processor")


def policy_id() -> str:
    """Orders are judged by this policy's version in force when they were placed (ORDEROPS_RETURN_POLICY)."""
    return os.environ.get("ORDEROPS_RETURN_POLICY", "standard")


def published_policies(bootstrap: str, told: Callable[[str], None] | None = None) -> dict[str, Policy]:
    """The policies on returns.policies; each record that cannot be read is left out and told
    (default: logged), as the live processor's view does."""
    from orderops.runtime.globalview import read_compacted

    found = read_compacted(bootstrap, RETURNS_POLICIES, convert=Policy.from_record)
    for bad in found.unreadable.values():
        (told or log.warning)(f"{bad.describe()}; left out. Publish a good version under the key, or remove it: "
                              "orderops policies drop-unreadable")
    return found.entries


def definition(settings: ServiceSettings, bootstrap: str | None = None,
               policies: Callable[[], Policies] | None = None) -> MachineProcessor:
    """``policies``: the policies in force, asked for at every event (live: the global view);
    without it, those published on returns.policies when this is called."""
    park_for = timedelta(seconds=settings.park_deadline_seconds)
    if policies is None:
        fixed = Policies(published_policies(bootstrap or settings.kafka.bootstrap), policy_id())
        policies = lambda: fixed  # noqa: E731
    return MachineProcessor(
        RETURNS, INPUTS, "orders",
        load=ReturnsState.from_json,
        apply=lambda state, event, topic, now: domain.apply(state, event, topic, now, park_for, policies()),
        expire=lambda state, now, topic: domain.expire(state, now, park_for, policies(), topic),
        publish=publishable,
        deadline=lambda state: domain.next_deadline(state, park_for),
        handles=frozenset(domain.HANDLERS),
    )
