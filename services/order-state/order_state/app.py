"""order-state's app: the kernel's Service, its table and its settings."""

from __future__ import annotations

import os
from datetime import timedelta

from orderops.catalog import ORDER_STATE, WEB_PORTS
from orderops.service import Service

service = Service(ORDER_STATE, default_web_port=WEB_PORTS[ORDER_STATE])
app = service.app

# order id -> OrderState.to_json(): both machines, the lines, parked events, history.
orders = service.table("orders", default=None, help="Order and payment state per order")

PARK_FOR = timedelta(seconds=service.settings.park_deadline_seconds)
# A completed order closes this long after completion (ORDEROPS_ORDER_CLOSE_AFTER_DAYS, default 90).
CLOSE_AFTER = timedelta(days=float(os.environ.get("ORDEROPS_ORDER_CLOSE_AFTER_DAYS", "90")))
