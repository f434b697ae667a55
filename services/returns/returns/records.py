"""What a returns outcome publishes, as records of the contract (pure: dicts, no Kafka)."""

from __future__ import annotations

from collections.abc import Iterator

from orderops.model import workflow
from orderops.model.catalog import NOTIFICATIONS_REQUESTS, PAYMENTS_REFUND_REQUESTS, RETURNS_STATE_CHANGES, Topic
from orderops.model.workflow import CustomerNotice, Outcome, Record, Transitioned
from returns.domain import Decided, Measure, RefundCommand, ReturnsState

SOURCE = "returns"
NS = "orderops.returns."


def publishable(outcome: Outcome) -> Iterator[tuple[Topic, dict]]:
    for record, event_id in workflow.with_ids(outcome, SOURCE):
        what = record.what
        if isinstance(what, Measure):
            continue  # a metric, not a record
        if isinstance(what, CustomerNotice):
            yield NOTIFICATIONS_REQUESTS, _notification(record, what, outcome.state)
        elif isinstance(what, RefundCommand):
            command = _refund_requested(what)
            # The command goes to the provider, keyed by its idempotency key; the audit trail keeps it too.
            yield PAYMENTS_REFUND_REQUESTS, workflow.envelope(record, what.key, SOURCE, NS + "RefundRequested", command)
            yield RETURNS_STATE_CHANGES, workflow.envelope(record, event_id, SOURCE, NS + "RefundRequested", command)
        elif isinstance(what, Decided):
            yield RETURNS_STATE_CHANGES, workflow.envelope(record, event_id, SOURCE, NS + "ReturnAuthorizationDecided", {
                "return_id": what.return_id, "decision": what.decision, "policy": what.policy,
                "trace": [dict(t) for t in what.trace], "reason": what.reason})
        elif isinstance(what, Transitioned):
            yield RETURNS_STATE_CHANGES, workflow.envelope(
                record, event_id, SOURCE, workflow.COMMON + "StateTransition", workflow.transition_payload(record))
        else:
            yield RETURNS_STATE_CHANGES, workflow.envelope(record, event_id, SOURCE, *workflow.audit(record))


def measures(outcome: Outcome) -> list[Measure]:
    return outcome.of(Measure)


def _refund_requested(command: RefundCommand) -> dict:
    r = command.refund
    return {"refund_id": command.key, "return_id": r.return_id, "instrument_id": r.instrument_id, "channel": r.channel,
            "method": r.method, "amount": {"amount": r.amount, "currency": r.currency}, "reason": r.reason,
            "attempt": r.attempt, "sla_hours": command.sla_hours}


def _notification(record: Record, notice: CustomerNotice, state: ReturnsState) -> dict:
    return workflow.notification_request(record, notice, state.customer, state.order_id, SOURCE)
