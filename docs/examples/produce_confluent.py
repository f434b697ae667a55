"""Write one OrderPlaced to storefront.orders in the Confluent framing, with confluent-kafka's own
Avro serializer and a Schema Registry (`pip install "confluent-kafka[avro,schemaregistry]"`).

    python docs/examples/produce_confluent.py <order id> <registry URL> [bootstrap]

The serializer registers the schema under storefront.orders-value (or finds it there) and frames
each value as 00, the schema id (4 bytes, big-endian), then the Avro body. make run's registry:
http://127.0.0.1:6108/apis/ccompat/v7.
"""

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

TOPIC = "storefront.orders"
order_id, registry = sys.argv[1], sys.argv[2]
bootstrap = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1:9092"

schema = subprocess.check_output(["orderops", "schemas", "show", TOPIC], text=True)
serialize = AvroSerializer(SchemaRegistryClient({"url": registry}), schema)

price = {"amount": Decimal("12.50"), "currency": "EUR"}
event = {
    "event_id": f"{order_id}:placed",
    "order_id": order_id,
    "occurred_at": datetime(2026, 12, 7, 10, 15, tzinfo=UTC),
    "source": "storefront",
    "payload": ("orderops.storefront.OrderPlaced", {
        "customer": {"customer_id": "c-42", "email": "ada@example.com", "name": "Ada Lovelace", "locale": "en"},
        "lines": [{"line_id": "l1", "sku": "MUG-BLUE", "name": "Blue mug", "category": "kitchen", "quantity": 2,
                   "unit_price": price, "final_sale": False}],
        "instruments": [{"instrument_id": "card-1", "channel": "CARD", "amount": {**price, "amount": Decimal("25.00")},
                         "provider": "visa"}],
        "shipping_address": {"name": "Ada Lovelace", "line1": "12 St James's Square", "line2": "", "city": "London",
                             "postal_code": "SW1Y 4JH", "country": "GB"},
        "total": {"amount": Decimal("25.00"), "currency": "EUR"},
    }),
}
producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all",
                     "enable.idempotence": True})
producer.produce(TOPIC, key=order_id.encode(), value=serialize(event, SerializationContext(TOPIC, MessageField.VALUE)))
assert producer.flush(30) == 0, "not acknowledged"
print(f"written {event['event_id']} to {TOPIC}")
