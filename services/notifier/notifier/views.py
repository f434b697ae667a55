"""notifier's HTTP: GET /orders/{order_id}/notifications — the order's delivery ledger."""

from __future__ import annotations

from notifier.app import ledgers, service
from notifier.ledger import Ledger


def describe(stored: dict) -> dict:
    ledger = Ledger.from_json(stored)
    return {"order_id": ledger.order_id, "deliveries": [
        {"delivery_id": d.delivery_id, "channel": d.channel, "type": d.type, "state": d.status,
         "attempts": d.attempts, "in_doubt_attempts": d.in_doubt, "notification_ids": list(d.notification_ids),
         "due_at": d.due_at.isoformat() if d.due_at else None, "last_error": d.last_error}
        for d in ledger.deliveries]}


service.order_page("/orders/{order_id}/notifications", ledgers, describe,
                   "The order's notification deliveries and their outcomes")
