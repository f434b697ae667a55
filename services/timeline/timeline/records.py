"""What the timeline publishes: entries and escalations of each event, and the latest view (pure: dicts)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from orderops.model.catalog import SUPPORT_ESCALATIONS, SUPPORT_TIMELINE, Topic
from orderops.model.envelope import Envelope
from timeline.domain import Outputs

SOURCE = "timeline"
NS = "orderops.timeline."


def publishable(view: dict, out: Outputs, cause: Envelope) -> Iterator[tuple[Topic, dict]]:
    for entry in out.entries:
        payload = {k: entry[k] for k in ("entry_id", "domain", "type", "summary", "cause_event_id", "cause_topic")}
        yield SUPPORT_TIMELINE, Envelope(entry["entry_id"], view["order_id"], entry["occurred_at"], SOURCE,
                                         NS + "TimelineEntry", payload).to_record()
    for escalation_id, kind, facts in out.escalations:
        escalation = view["escalations"][escalation_id]
        facts = dict(facts)
        at, action = facts.pop("at"), facts.pop("action", cause.event_id)
        suffix = {"EscalationOpened": f"opened:{escalation.get('times_opened', 1)}",
                  "EscalationResolved": f"resolved:{escalation.get('times_opened', 1)}"}.get(kind, action)
        yield SUPPORT_ESCALATIONS, Envelope(f"{escalation_id}:{suffix}", view["order_id"], at, SOURCE, NS + kind,
                                            {"escalation_id": escalation_id, **facts}).to_record()


def changes_view(out: Outputs) -> bool:
    """Whether the event changed what support.order-views shows (entries and escalations are what it shows of)."""
    return bool(out.entries or out.escalations)


def view_record(view: dict, cause: Envelope, now: datetime) -> dict:
    """The order's latest view on SUPPORT_ORDER_VIEWS, as the view after ``cause``."""
    return Envelope(f"{cause.event_id}:view", view["order_id"], view["last_event_at"] or now, SOURCE,
                    NS + "OrderView", order_view(view)).to_record()


def order_view(view: dict) -> dict:
    """The view as the support.order-views contract carries it."""
    def line(line_id: str, x: dict) -> dict:
        return {"line_id": line_id, "name": x.get("name", line_id), "fulfillment": {
            "line_id": line_id, "ordered": x.get("ordered", 0), "unfulfilled": x.get("unfulfilled", 0),
            "backordered": x.get("backordered", 0), "in_shipment": x.get("in_shipment", 0),
            "shipped": x.get("shipped", 0), "delivered": x.get("delivered", 0), "cancelled": x.get("cancelled", 0),
            "returned": 0, "shipment_ids": x.get("shipment_ids", []), "backorder_eta": x.get("backorder_eta"),
            "delivered_at": x.get("delivered_at"), "waiting_for": x.get("waiting_for", "")}}

    return {
        "order_state": view["order"]["state"],
        "payment_states": {k: v.get("state", "unknown") for k, v in view["payments"].items()},
        "fulfillment_status": view["fulfillment"]["status"],
        "lines": [line(k, v) for k, v in sorted(view["lines"].items())],
        "return_states": {k: v.get("state", "unknown") for k, v in view["returns"].items()},
        "refund_states": {k: v.get("state", "unknown") for k, v in view["refunds"].items()},
        "open_escalations": sorted(k for k, v in view["escalations"].items() if v["state"] != "resolved"),
        "tags": sorted(view["tags"]), "contacts": len(view["contacts"]),
        "last_event_at": view["last_event_at"] or datetime.fromtimestamp(0).astimezone(),
    }
