"""A throwaway processor built with the kernel, used only by test_kernel_on_kafka.py.

It joins storefront.orders and payments.events (co-partitioned by order id) into a RocksDB table
keyed by order, and serves the table at /probe/orders/{order_id}. Only orders whose id starts
with PROBE_ORDER_PREFIX are recorded, so leftovers of other tests on the topics are ignored.
"""

import os

import faust

from orderops.catalog import PAYMENTS_EVENTS, STOREFRONT_ORDERS
from orderops.service import Service

PREFIX = os.environ["PROBE_ORDER_PREFIX"]
service = Service(os.environ["PROBE_SERVICE_NAME"], default_web_port=6099)
orders = service.table("orders", default=dict)


@service.app.agent(service.topic(STOREFRONT_ORDERS, PAYMENTS_EVENTS))
async def join_orders_and_payments(stream):
    async for event in stream.events():
        if not event.message.key.decode().startswith(PREFIX):
            continue  # other tests' orders (and their poison) share these topics
        async with service.dead_letter_on_error(event):
            envelope = service.decode(event)
            if envelope.payload.get("reason") == "raise-in-processing":
                raise ValueError("the probe was told to fail on this event")
            seen = orders[envelope.order_id]
            applied = {**seen.get("applied", {}), envelope.event_id: envelope.short_type}
            orders[envelope.order_id] = {"applied": applied, "partition": event.message.partition}


@service.app.page("/probe/orders/{order_id}")
class ProbeOrder(faust.web.View):
    async def get(self, request, order_id):
        return self.json(orders.get(order_id) or {})


if __name__ == "__main__":
    service.run()
