"""returns' app: the kernel's Service, its table, the global view of policies, and metrics."""

from __future__ import annotations

import os
from datetime import timedelta

from prometheus_client import Histogram

from orderops.catalog import RETURNS, RETURNS_POLICIES, WEB_PORTS
from orderops.service import Service
from returns.domain import Policies
from returns.policy import Policy

service = Service(RETURNS, default_web_port=WEB_PORTS[RETURNS])
app = service.app

# order id -> ReturnsState.to_json(): the order as returns sees it, its returns and refunds.
orders = service.table("orders", default=None, help="Returns and refunds per order")
# policy_id@version -> Policy, every version, on every worker.
policies = service.global_view(RETURNS_POLICIES, Policy.from_record)

PARK_FOR = timedelta(seconds=service.settings.park_deadline_seconds)
# Orders are judged by this policy's version in force when they were placed (ORDEROPS_RETURN_POLICY).
POLICY_ID = os.environ.get("ORDEROPS_RETURN_POLICY", "standard")


def current_policies() -> Policies:
    return Policies(dict(policies.items), POLICY_ID)


HOURS = 3600.0
DURATION_BUCKETS = (HOURS, 6 * HOURS, 12 * HOURS, 24 * HOURS, 48 * HOURS, 72 * HOURS, 120 * HOURS, 168 * HOURS,
                    336 * HOURS, 720 * HOURS)
METRICS = {
    "return_cycle_seconds": Histogram(
        "orderops_return_cycle_seconds", "Return requested to every refund of it succeeded (event time)",
        ["channel", "policy_version"], buckets=DURATION_BUCKETS),
    "refund_completion_seconds": Histogram(
        "orderops_refund_completion_seconds", "Refund requested to refund succeeded (event time)",
        ["channel", "policy_version"], buckets=DURATION_BUCKETS),
}
