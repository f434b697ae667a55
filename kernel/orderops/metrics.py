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
