"""returns' agent: the kernel's batch path over this processor's pure domain."""

from __future__ import annotations

from orderops.model.workflow import Outcome
from returns.app import METRICS, REFUNDS_COMPLETED, current_policies, orders, service
from returns.processor import definition
from returns.records import measures


def observe(outcome: Outcome) -> None:
    for measure in measures(outcome):
        METRICS[measure.name].labels(measure.labels["channel"], measure.labels["policy"]).observe(measure.seconds)
        if "within_sla" in measure.labels:
            REFUNDS_COMPLETED.labels(measure.labels["channel"], measure.labels["policy"], measure.labels["within_sla"]).inc()


returns_and_refunds = service.state_machine_batches(definition(service.settings, policies=current_policies), orders,
                                                  observe=observe)
