"""fulfillment's app: the kernel's Service and its table."""

from __future__ import annotations

from orderops.model.catalog import FULFILLMENT, WEB_PORTS
from orderops.service import Service

service = Service(FULFILLMENT, default_web_port=WEB_PORTS[FULFILLMENT])
app = service.app

# order id -> FulfillmentState.to_json(): line buckets, parcels, parked events, history.
orders = service.table("orders", default=None, help="Line quantities and parcels per order")
