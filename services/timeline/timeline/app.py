"""timeline's app: the kernel's Service, the view table, the rules, and metrics."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import Counter, Histogram

from orderops.model.catalog import TIMELINE, WEB_PORTS
from orderops.model.envelope import from_json
from orderops.runtime.metrics import GaugeAtScrape, initialise
from orderops.service import Service
from timeline.domain import Rules, SupportIndex

service = Service(TIMELINE, default_web_port=WEB_PORTS[TIMELINE])
app = service.app

# order id -> the unified view of the order (JSON form; see timeline.domain.new_view).
views = service.table("views", default=None, help="Unified view per order")
# domain.entry_key(order id, seq) -> a timeline entry (JSON form): an order's last MAX_ENTRIES, for the API.
entries = service.table("entries", default=None, help="Timeline entries per order, one key each")

RULES = Rules.load(Path(os.environ.get("ORDEROPS_TIMELINE_RULES", Path(__file__).parent / "rules.yaml")))

# Root-cause tags known up front (those the rules apply); agents may add others, which the metrics
# count as "other": a label value per word an agent types would grow the series without bound.
KNOWN_TAGS = sorted({t for r in RULES.escalations for t in r.tags} | {t.tag for t in RULES.tags} | {"untagged"})
OTHER_TAG = "other"


def tag_label(tag: str) -> str:
    """The ``tag`` label of a root-cause tag: itself if the rules know it, else ``other``."""
    return tag if tag in KNOWN_TAG_SET else OTHER_TAG


KNOWN_TAG_SET = frozenset(KNOWN_TAGS)

ACCURACY = Counter("orderops_notification_accuracy_total",
                   "Delivered notifications judged against the fulfillment truth: accurate or inaccurate when decided, "
                   "broken when later truth broke a promise they made", ["result", "reason"])
CONTACTS = Counter("orderops_support_contacts_total", "Support contacts, and whether they repeated one within 7 days",
                   ["repeat"])
# A contact counts once per root-cause tag its order carries (so these do not add up to the contacts).
CONTACTS_BY_TAG = Counter("orderops_support_contacts_by_tag_total",
                          "Support contacts per root-cause tag of their order, and whether they repeated one",
                          ["repeat", "tag"])
ESCALATIONS = Counter("orderops_escalations_total", "Escalations opened and resolved", ["rule", "event"])
initialise(ACCURACY, [("accurate", "ok")])
initialise(CONTACTS, [("true",), ("false",)])
initialise(CONTACTS_BY_TAG, [(repeat, tag) for repeat in ("true", "false") for tag in (*KNOWN_TAGS, OTHER_TAG)])
initialise(ESCALATIONS, [(rule.rule_id, kind) for rule in RULES.escalations
                         for kind in ("EscalationOpened", "EscalationResolved")])
LATENCY = Histogram(
    "orderops_timeline_latency_seconds",
    "From an event written to its topic (its Kafka timestamp) to the timeline's records of it acknowledged; "
    "origin=upstream is the end-to-end latency of the pipeline",
    ["origin"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
# Zeros on record before the first event: a series born with its first burst already counted shows no rate.
initialise(LATENCY, [("upstream",), ("processor",)])

support_index = SupportIndex()  # orders by customer, escalations: the console's queries without a scan


@views.on_recover
async def _index_recovered_views() -> None:
    support_index.rebuild((order_id, from_json(stored)) for order_id, stored in views.items() if stored)


service.metrics_registry.register(GaugeAtScrape(
    "orderops_escalations_open", "Escalations not resolved, by rule and by how long they have been open",
    ("rule", "age"), lambda: support_index.counts(service.clock.now(), RULES)))
