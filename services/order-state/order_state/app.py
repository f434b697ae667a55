"""order-state's app: the kernel's Service and its table."""

from __future__ import annotations

from orderops.model.catalog import ORDER_STATE, WEB_PORTS
from orderops.service import Service

service = Service(ORDER_STATE, default_web_port=WEB_PORTS[ORDER_STATE])
app = service.app

# order id -> OrderState.to_json(): both machines, the lines, parked events, history.
orders = service.table("orders", default=None, help="Order and payment state per order")
