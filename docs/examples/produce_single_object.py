"""Write one OrderPlaced to storefront.orders in Avro single-object encoding, with confluent-kafka.

    python docs/examples/produce_single_object.py <order id> [bootstrap]

The writer schema is the topic's own (`orderops schemas show storefront.orders`); a value is
C3 01, the schema's CRC-64-AVRO fingerprint (8 bytes, little-endian), then the Avro body.
"""

import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

TOPIC = "storefront.orders"
order_id = sys.argv[1]
bootstrap = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:9092"

schema = parse_schema(json.loads(subprocess.check_output(["orderops", "schemas", "show", TOPIC])))
header = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))

price = {"amount": Decimal("12.50"), "currency": "EUR"}
event = {
    "event_id": f"{order_id}:placed",  # unique and stable: a retry sends the same id
    "order_id": order_id,
    "occurred_at": datetime(2026, 12, 7, 10, 15, tzinfo=UTC),  # when it happened, not when it is sent
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
body = io.BytesIO()
schemaless_writer(body, schema, event)

# murmur2, as Java clients and orderops partition: every event of an order on one partition.
producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all",
                     "enable.idempotence": True})
producer.produce(TOPIC, key=order_id.encode(), value=header + body.getvalue())
assert producer.flush(30) == 0, "not acknowledged"
print(f"written {event['event_id']} to {TOPIC}")
