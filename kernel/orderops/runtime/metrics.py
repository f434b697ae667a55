"""Metrics every processor exports (business metrics live with the processor that knows them).

Names follow Prometheus conventions: ``orderops_`` prefix, ``_total`` for counters, base units.
Labels are low-cardinality: never an order id. Counters whose label values are known up front
are created at zero (``initialise``), so that a rate over a window counts an event that happens
right after a processor starts.

Replays do not double-count: a redelivered or re-read event is recognised by its event id and only
``orderops_duplicate_events_total`` moves; a rebuild (``orderops replay rebuild``) runs in its own
process that Prometheus does not scrape, and reports its own figures.
"""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
CARD_NUMBERS_MASKED = Counter(
    "orderops_card_numbers_masked_total", "Card numbers found in upstream events and masked before processing "
    "(an upstream system sent one: tell its owners)", ["processor", "topic"],
)
LATEST_RECORDS = Counter(
    "orderops_latest_records_total", "Latest-only records (an order's view) left by events: sent, or superseded by a "
    "newer one of the same order completed with them and not sent", ["processor", "topic", "outcome"],
)
PRODUCER_CLIENTS_REPLACED = Counter(
    "orderops_producer_clients_replaced_total", "librdkafka producer clients a processor retired, a new one sending every "
    "record not acknowledged again, by the error that made it (fatal: the client's own; msg_timed_out: the broker did "
    "not take a record within ORDEROPS_PRODUCER_MESSAGE_TIMEOUT_SECONDS)", ["processor", "reason"],
)
DUPLICATES = Counter(
    "orderops_duplicate_events_total", "Redelivered events recognised by their event id and not applied again",
    ["processor"],
)


def initialise(counter: Counter | Histogram, label_sets: Iterable[tuple[str, ...]]) -> None:
    """Create these label combinations at zero, so their first increment is visible to rate()."""
    for labels in label_sets:
        counter.labels(*labels)


def count_outcome(processor: str, records: Any) -> None:
    """Count an outcome's transitions, parks and rejections (see orderops.model.workflow)."""
    tally: Counter_[tuple[Any, ...]] = Counter_()
    tally_outcome(tally, records)
    count_tally(processor, tally)


def tally_outcome(tally: Counter_[tuple[Any, ...]], records: Any) -> None:
    """Add an outcome's transitions, parks and rejections to ``tally`` (counted by ``count_tally``:
    a batch counts each series once, not once per record)."""
    from orderops.model.workflow import ParkedRecord, Rejected, Transitioned

    for record in records:
        what = record.what
        if isinstance(what, Transitioned) and what.from_state != what.to_state:
            tally[(TRANSITIONS, what.machine, what.to_state)] += 1
        elif isinstance(what, ParkedRecord):
            tally[(PARKED, what.parked.machine)] += 1
        elif isinstance(what, Rejected):
            tally[(REJECTED, what.machine, what.reason_code)] += 1


def count_tally(processor: str, tally: Counter_[tuple[Any, ...]]) -> None:
    for (metric, *labels), n in tally.items():
        metric.labels(processor, *labels).inc(n)


class GaugeAtScrape(Collector):
    """A gauge family computed when Prometheus scrapes, from state the processor already holds
    (consumer positions, open escalations): nothing to keep in step on the hot path."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 values: Callable[[], Mapping[Any, float]]) -> None:
        self.name, self.documentation, self.label_names, self.values = name, documentation, labels, values

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.label_names)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.label_names)
        for labels, value in sorted(self.values().items()):
            family.add_metric(list(labels), value)
        yield family
