"""fulfillment: where every unit of every line is (split shipments, backorders, cancellations),
each parcel's journey, and what the customer should be told about it, item by item."""
