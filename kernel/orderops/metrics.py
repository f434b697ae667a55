"""Metrics every processor exports (business metrics live with the processor that knows them).

Names follow Prometheus conventions: ``orderops_`` prefix, ``_total`` for counters, base units.
Labels are low-cardinality: never an order id.
"""

from prometheus_client import Counter

EVENTS_PROCESSED = Counter(
    "orderops_events_processed_total", "Input messages a processor handled (decoded and applied, or dead-lettered)",
    ["processor", "topic"],
)
DEAD_LETTERED = Counter(
    "orderops_dead_lettered_total", "Messages sent to a processor's dead-letter topic",
    ["processor", "origin_topic", "error_class"],
)
TRANSITIONS = Counter(
    "orderops_transitions_total", "State machine transitions", ["processor", "machine", "to_state"],
)
PARKED = Counter(
    "orderops_events_parked_total", "Events parked because they arrived before their prerequisite",
    ["processor", "machine"],
)
REJECTED = Counter(
    "orderops_events_rejected_total", "Events rejected with an audit record", ["processor", "machine", "reason_code"],
)
DUPLICATES = Counter(
    "orderops_duplicate_events_total", "Redelivered events recognised by their event id and not applied again",
    ["processor"],
)


def count_outcome(processor: str, records) -> None:
    """Count an outcome's transitions, parks and rejections (see orderops.workflow)."""
    from orderops.workflow import ParkedRecord, Rejected, Transitioned

    for record in records:
        what = record.what
        if isinstance(what, Transitioned) and what.from_state != what.to_state:
            TRANSITIONS.labels(processor, what.machine, what.to_state).inc()
        elif isinstance(what, ParkedRecord):
            PARKED.labels(processor, what.parked.machine).inc()
        elif isinstance(what, Rejected):
            REJECTED.labels(processor, what.machine, what.reason_code).inc()
