#!/usr/bin/env bash
# Send one OrderPlaced to storefront.orders through `orderops ingest` (make run serves it on 6107).
#   docs/examples/ingest.sh <order id> <token> [base URL]
# make run writes a development token per upstream system to .run/secrets/ingest-principals.tokens:
#   token=$(awk '$1 == "storefront-dev" {print $2}' .run/secrets/ingest-principals.tokens)
set -euo pipefail
order_id=$1 token=$2 base=${3:-http://127.0.0.1:6107}
curl -sS --fail-with-body -X POST "$base/topics/storefront.orders/events" \
  -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
  --data @- <<JSON
{"events": [{
  "event_id": "$order_id:placed",
  "order_id": "$order_id",
  "occurred_at": "2026-12-07T10:15:00Z",
  "type": "OrderPlaced",
  "payload": {
    "customer": {"customer_id": "c-42", "email": "ada@example.com", "name": "Ada Lovelace", "locale": "en"},
    "lines": [{"line_id": "l1", "sku": "MUG-BLUE", "name": "Blue mug", "category": "kitchen", "quantity": 2,
               "unit_price": {"amount": "12.50", "currency": "EUR"}, "final_sale": false}],
    "instruments": [{"instrument_id": "card-1", "channel": "CARD", "amount": {"amount": "25.00", "currency": "EUR"},
                     "provider": "visa"}],
    "shipping_address": {"name": "Ada Lovelace", "line1": "12 St James's Square", "line2": "", "city": "London",
                         "postal_code": "SW1Y 4JH", "country": "GB"},
    "total": {"amount": "25.00", "currency": "EUR"}
  }
}]}
JSON
echo
