"""returns' app: the kernel's Service, its table, the global view of policies, and metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from orderops.model.catalog import RETURNS, RETURNS_POLICIES, WEB_PORTS
from orderops.runtime.metrics import initialise
from orderops.service import Service
from returns.domain import Policies
from returns.policy import Policy
from returns.processor import policy_id

service = Service(RETURNS, default_web_port=WEB_PORTS[RETURNS])
app = service.app

# order id -> ReturnsState.to_json(): the order as returns sees it, its returns and refunds.
orders = service.table("orders", default=None, help="Returns and refunds per order")
# policy_id@version -> Policy, every version, on every worker.
policies = service.global_view(RETURNS_POLICIES, lambda record: _measured(Policy.from_record(record)),
                               remedy="orderops policies drop-unreadable")

POLICY_ID = policy_id()


def current_policies() -> Policies:
    return Policies(dict(policies.items), POLICY_ID)


HOURS = 3600.0
# The refund SLAs of the standard policies (24, 72, 96, 120 h) are bucket bounds.
DURATION_BUCKETS = (HOURS, 6 * HOURS, 12 * HOURS, 24 * HOURS, 48 * HOURS, 72 * HOURS, 96 * HOURS, 120 * HOURS,
                    168 * HOURS, 336 * HOURS, 720 * HOURS)
METRICS = {
    "return_cycle_seconds": Histogram(
        "orderops_return_cycle_seconds", "Return requested to every refund of it succeeded (event time)",
        ["channel", "policy_version"], buckets=DURATION_BUCKETS),
    "refund_completion_seconds": Histogram(
        "orderops_refund_completion_seconds", "Refund requested to refund succeeded (event time)",
        ["channel", "policy_version"], buckets=DURATION_BUCKETS),
}
REFUNDS_COMPLETED = Counter(
    "orderops_refunds_completed_total", "Refunds the provider confirmed, and whether within the SLA the policy "
    "version sets for the channel", ["channel", "policy_version", "within_sla"])


def _measured(policy: Policy) -> Policy:
    """Each policy version's series start at zero, so that the first refund under it is counted by rate()."""
    for channel in policy.refund_routes:
        METRICS["refund_completion_seconds"].labels(channel, policy.ref)
        METRICS["return_cycle_seconds"].labels(channel, policy.ref)
        initialise(REFUNDS_COMPLETED, [(channel, policy.ref, within) for within in ("true", "false")])
    return policy
