"""timeline's app: the kernel's Service, the view table, the rules, and metrics."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import Counter

from orderops.catalog import TIMELINE, WEB_PORTS
from orderops.service import Service
from timeline.domain import Rules

service = Service(TIMELINE, default_web_port=WEB_PORTS[TIMELINE])
app = service.app

# order id -> the unified view of the order (JSON form; see timeline.domain.new_view).
views = service.table("views", default=None, help="Unified view per order")

RULES = Rules.load(Path(os.environ.get("ORDEROPS_TIMELINE_RULES", Path(__file__).parent / "rules.yaml")))

ACCURACY = Counter("orderops_notification_accuracy_total",
                   "Delivered notifications whose item-level claims matched the fulfillment truth at send time",
                   ["result", "reason"])
CONTACTS = Counter("orderops_support_contacts_total", "Support contacts, and whether they repeated one within 7 days",
                   ["repeat", "tag"])
ESCALATIONS = Counter("orderops_escalations_total", "Escalations opened and resolved", ["rule", "event"])
