"""A throwaway processor built with the kernel, used only by test_kernel_on_kafka.py: the batch
path's shape at its smallest.

It joins storefront.orders and payments.events (co-partitioned by order id) into a RocksDB table
keyed by order, and serves the table at /probe/orders/{order_id}. Only orders whose id starts
with PROBE_ORDER_PREFIX are recorded, so leftovers of other tests on the topics are ignored.
"""

import os
from typing import Any

import faust

from orderops.model.catalog import PAYMENTS_EVENTS, STOREFRONT_ORDERS
from orderops.runtime.batch import Batch
from orderops.service import Service

PREFIX = os.environ["PROBE_ORDER_PREFIX"]
service = Service(os.environ["PROBE_SERVICE_NAME"], default_web_port=6099)
orders = service.table("orders", default=None)


class JoinOrdersAndPayments:
    def apply(self, batch: Batch, record: Any) -> None:
        if not record.key.decode().startswith(PREFIX):
            return  # other tests' orders (and their poison) share these topics
        try:
            envelope = service.read(record.topic, record.partition, record.offset, record.key, record.value,
                                    record.headers)
            if envelope.payload.get("reason") == "raise-in-processing":
                raise ValueError("the probe was told to fail on this event")
            seen = batch.load(orders, envelope.order_id, dict, record.partition) or {}
            value = {"applied": {**seen.get("applied", {}), envelope.event_id: envelope.short_type},
                     "partition": record.partition}
            batch.put(orders, envelope.order_id, service.table_value(value), value, record.partition)
        except Exception as exc:  # one bad record never stops the processor: it is dead-lettered
            self.dead_letter(batch, record, exc)

    def finish(self, batch: Batch) -> None:
        pass

    def dead_letter(self, batch: Batch, record: Any, error: BaseException) -> None:
        service.dead_letter_in(batch, record, error)


service.batches(JoinOrdersAndPayments(), (STOREFRONT_ORDERS, PAYMENTS_EVENTS))


@service.app.page("/probe/orders/{order_id}")
class ProbeOrder(faust.web.View):
    async def get(self, request, order_id):
        return self.json(orders.get(order_id) or {})


if __name__ == "__main__":
    service.run()
