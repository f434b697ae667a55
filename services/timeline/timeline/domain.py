"""timeline's pure domain: one view of an order joined from every domain's events, the timeline
entries, root-cause tags, communication accuracy, and escalations from rules that are data.

No Kafka here. ``apply(view, event, topic, now, rules)`` returns the new view and what to publish.
The view is a plain JSON-friendly dict (values restored by orderops.model.envelope's JSON form).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from orderops.model.catalog import SUPPORT_ESCALATIONS
from orderops.model.contract import web_link
from orderops.model.envelope import Envelope

# Timeline entries an order keeps for the API (the topic keeps all). They are kept apart from the
# view, one table key each (``entry_key``): a view rewritten at every event must not grow with them.
MAX_ENTRIES = 500
MAX_TRUTHS = 50  # fulfillment snapshots kept to judge what messages claimed
TRUTH_FIELDS = ("backordered", "cancelled", "shipped", "delivered", "backorder_eta")  # of a line, what _accuracy reads
UPSTREAM_SHIPMENT_STATES = {"ShipmentDelivered": "delivered",
                            "DeliveryFailed": "delivery_failed", "ReturnedToSender": "returned_to_sender"}
SHIPMENT_PROGRESS = {None: 0, "created": 1, "dispatched": 2, "in_transit": 3, "out_for_delivery": 4,
                     "delivery_failed": 5, "delivered": 6, "returned_to_sender": 6, "cancelled": 6}
NON_TERMINAL_REFUNDS = ("requested", "failed")


# -- rules ----------------------------------------------------------------------------------------

View = dict[str, Any]  # an order's unified view (new_view): plain data
# What a condition finds: (subject, when it comes due or None for at once, the reason in words)
Conditions = Iterator[tuple[str, datetime | None, str]]

@dataclass(frozen=True)
class EscalationRule:
    rule_id: str
    description: str
    kind: str
    params: dict[str, Any]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class TagRule:
    tag: str
    type: str
    path: str | None = None
    equals: str | None = None
    contains: str | None = None

    def matches(self, event: Envelope) -> bool:
        if event.short_type != self.type:
            return False
        if self.path is None:
            return True
        values = [str(v) for v in _reach(event.payload, self.path)]
        if self.equals is not None:
            return self.equals in values
        return any(self.contains.lower() in v.lower() for v in values) if self.contains else bool(values)


@dataclass(frozen=True)
class Rules:
    escalations: tuple[EscalationRule, ...]
    tags: tuple[TagRule, ...]

    @classmethod
    def load(cls, path: Path) -> Rules:
        document = yaml.safe_load(path.read_text())
        escalations = []
        for spec in document["escalations"]:
            if spec["kind"] not in CONDITIONS:
                raise ValueError(f"{path}: rule {spec['id']}: unknown kind {spec['kind']!r}; known: {sorted(CONDITIONS)}")
            params = {k: v for k, v in spec.items() if k not in ("id", "description", "kind", "tags")}
            escalations.append(EscalationRule(spec["id"], spec["description"], spec["kind"], params,
                                              tuple(spec.get("tags", []))))
        return cls(tuple(escalations), tuple(TagRule(**t) for t in document.get("tags", [])))


def _reach(value: Any, path: str) -> list[Any]:
    """``a.b`` or ``list[].field``: every value at that path."""
    values = [value]
    for part in path.split("."):
        many = part.endswith("[]")
        name = part.removesuffix("[]")
        nxt: list[Any] = []
        for v in values:
            if isinstance(v, dict) and name in v:
                nxt.extend(v[name] if many and isinstance(v[name], list) else [v[name]])
        values = nxt
    return values


# -- the view -------------------------------------------------------------------------------------

def new_view(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "customer": None, "placed_at": None, "total": None,
            "order": {"state": "unknown", "hold_reason": ""}, "payments": {}, "fulfillment": {"status": "unknown",
                                                                                          "backordered": False},
            "lines": {}, "shipments": {}, "returns": {}, "refunds": {}, "notifications": [], "contacts": [],
            "escalations": {}, "tags": {}, "entry_count": 0, "last_event_at": None, "last_change_at": None,
            "eta_slips": {}, "truths": [], "seen": []}


@dataclass
class Outputs:
    entries: list[dict[str, Any]] = field(default_factory=list)  # new timeline entries, each with its "seq" (entry_key)
    escalations: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (escalation id, type, payload)
    # (accurate|inaccurate, reason class) when a message is judged; (broken, claim) when later truth
    # breaks a promise it made
    accuracy: list[tuple[str, str]] = field(default_factory=list)
    contacts: list[tuple[bool, tuple[str, ...]]] = field(default_factory=list)  # (repeat?, tags)
    duplicate: bool = False


def apply(view: dict[str, Any] | None, event: Envelope, topic: str, now: datetime,
          rules: Rules, in_place: bool = False) -> tuple[dict[str, Any], Outputs]:
    """The view after ``event`` at ``now``, and what it publishes. The given view is left as it
    was (a copy is changed) unless ``in_place``: then it is changed, and the caller owns it (the
    batch path's working copy, made once per order per batch)."""
    view = (view if in_place else copied(view)) if view else new_view(event.order_id)
    out = Outputs()
    if event.event_id in view["seen"]:
        out.duplicate = True
        return view, out
    if event.short_type != "TimerFired":  # ticks only make time pass; they are not remembered
        view["seen"].append(event.event_id)
        _fold(view, event, topic, out)
        summary = SUMMARIES.get(event.short_type)
        if summary is not None:
            domain, text = summary(event.payload, topic)
            seq = view.get("entry_count", 0)
            out.entries.append({"entry_id": f"{event.event_id}:entry", "domain": domain, "type": event.short_type,
                                "summary": text, "cause_event_id": event.event_id, "cause_topic": topic,
                                "occurred_at": event.occurred_at, "seq": seq})
            view["entry_count"] = seq + 1
        for rule in rules.tags:
            if rule.matches(event):
                view["tags"].setdefault(rule.tag, {"source": "rule", "by": event.short_type, "at": event.occurred_at})
        if view["last_event_at"] is None or event.occurred_at > view["last_event_at"]:
            view["last_event_at"] = event.occurred_at
    _escalate(view, event, now, rules, out)
    _escalation_entries(view, out)
    return view, out


def _escalation_entries(view: dict[str, Any], out: Outputs) -> None:
    """An escalation a rule opened or resolved is on the order's timeline too (what agents did to
    one is there already: their actions are events). The entry says what the published escalation
    record says (rule, subject, when), which every replay agrees on."""
    for escalation_id, kind, payload in out.escalations:
        if kind == "EscalationOpened":
            summary, step = f"escalation opened: {payload['reason']}", "opened"
        elif kind == "EscalationResolved" and payload.get("by") == "rule":
            summary, step = f"escalation closed, its condition cleared: {escalation_id.split(':', 1)[1]}", "resolved"
        else:
            continue
        seq = view.get("entry_count", 0)
        # Its cause is the escalation's own record (records.publishable names it so), whichever
        # event or timer tick found the rule due.
        record_id = f"{escalation_id}:{step}:{view['escalations'][escalation_id]['times_opened']}"
        out.entries.append({"entry_id": f"{record_id}:entry", "domain": "escalation", "type": kind, "summary": summary,
                            "cause_event_id": record_id, "cause_topic": SUPPORT_ESCALATIONS.name,
                            "occurred_at": payload["at"], "seq": seq})
        view["entry_count"] = seq + 1


def entry_key(order_id: str, seq: int) -> str:
    """The entries table's key of an order's ``seq``-th entry (from 0, in the order applied)."""
    return f"{order_id}#{seq}"


def entry_writes(order_id: str, new_entries: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """What the entries table gets for an event's new entries: each under its key, and the one that
    falls out of the order's last ``MAX_ENTRIES`` deleted (None)."""
    for entry in new_entries:
        yield entry_key(order_id, entry["seq"]), entry
        if entry["seq"] >= MAX_ENTRIES:
            yield entry_key(order_id, entry["seq"] - MAX_ENTRIES), None


def kept_entries(view: dict[str, Any]) -> range:
    """The seqs of the entries an order keeps: its last ``MAX_ENTRIES``."""
    count = view.get("entry_count", 0)
    return range(max(0, count - MAX_ENTRIES), count)


# Parts of a view that apply replaces and never changes in place (nor their items): a new view may
# share them with the one it came from. "entries": views written before entries moved to
# their own table still carry them, and nothing adds to them.
SHARED_PARTS = frozenset({"entries", "truths"})


def copied(view: dict[str, Any]) -> dict[str, Any]:
    """A copy of a view to change, the given one left as it was (the batch path's cache holds it)."""
    return {k: v if k in SHARED_PARTS else _copied_value(v) for k, v in view.items()}


def _copied_value(value: Any) -> Any:
    """A view is plain data: dicts, lists and tuples are copied, the rest (str, numbers, Decimal,
    datetime) is immutable and shared; several times faster than copy.deepcopy."""
    if type(value) is dict:
        return {k: _copied_value(v) for k, v in value.items()}
    if type(value) is list:
        return [_copied_value(v) for v in value]
    if type(value) is tuple:
        return tuple(_copied_value(v) for v in value)
    return value


def _fold(view: dict[str, Any], event: Envelope, topic: str, out: Outputs) -> None:
    """What the event tells the view."""
    p, kind, at = event.payload, event.short_type, event.occurred_at
    if kind == "OrderPlaced":
        view.update(customer=p["customer"], placed_at=at, total=p["total"])
        for x in p["lines"]:
            view["lines"].setdefault(x["line_id"], {})
            view["lines"][x["line_id"]].update(name=x["name"], ordered=x["quantity"])
        for i in p["instruments"]:
            payment = view["payments"].setdefault(i["instrument_id"], {})
            payment.setdefault("state", "pending")  # a payment event may have come first
            payment["channel"] = i["channel"]
    elif kind in ("StateTransition", "PaymentTransition"):
        t = p["transition"] if kind == "PaymentTransition" else p
        machine, entity = t["machine"], t["entity_id"]
        if machine == "order":
            view["order"]["state"] = t["to_state"]
            view["order"]["hold_reason"] = t["reason"] if t["to_state"] == "on_hold" else ""
        elif machine == "payment":
            payment = view["payments"].setdefault(entity, {})
            payment["state"] = t["to_state"]
            if kind == "PaymentTransition":
                b = p["balance"]
                payment.update(channel=b["channel"], authorized=b["authorized"]["amount"],
                               captured=b["captured"]["amount"], refunded=b["refunded"]["amount"])
        elif machine == "fulfillment":
            view["fulfillment"]["status"] = t["to_state"]
        elif machine == "shipment":
            shipment = view["shipments"].setdefault(entity, {"delayed": False})
            if SHIPMENT_PROGRESS.get(t["to_state"], 0) >= SHIPMENT_PROGRESS.get(shipment.get("state"), 0):
                shipment["state"] = t["to_state"]  # never back behind what the warehouse already said
            shipment["last_update_at"] = max(at, shipment.get("last_update_at") or at)
        elif machine == "return":
            view["returns"].setdefault(entity, {})["state"] = t["to_state"]
            if t["to_state"] == "received":
                view["returns"][entity]["received_at"] = at
        elif machine == "refund":
            view["refunds"].setdefault(entity, {}).update(state=t["to_state"], changed_at=at)
            _recheck_promises(view, out)
        if t["from_state"] != t["to_state"]:
            view["last_change_at"] = at
    elif kind == "FulfillmentStatusChanged":
        view["fulfillment"].update(status=p["status"], backordered=p["backordered"])
        # Only what a verdict reads: the snapshots are a view's largest part, written at every event.
        truth = {"at": at, "lines": {x["line_id"]: {k: x[k] for k in TRUTH_FIELDS if k in x} for x in p["lines"]}}
        view["truths"] = sorted(view["truths"] + [truth], key=lambda t: t["at"])[-MAX_TRUTHS:]
        _judge_notifications(view, out)
        _recheck_promises(view, out)
        for x in p["lines"]:
            line = view["lines"].setdefault(x["line_id"], {})
            previous_eta = line.get("backorder_eta")
            line.update({k: v for k, v in x.items() if k != "line_id"})
            if previous_eta and x["backorder_eta"] and x["backorder_eta"] > previous_eta:
                view["eta_slips"][x["line_id"]] = {"at": at, "eta": x["backorder_eta"], "notified": False}
    elif kind == "TrackingUpdated":
        shipment = view["shipments"].setdefault(p["shipment_id"], {"delayed": False})
        shipment["last_update_at"] = at
        if p["status"] == "DELAYED":
            shipment["delayed"] = True
    elif kind in UPSTREAM_SHIPMENT_STATES:
        # The warehouse's own word, as soon as it is said: fulfillment's transition for it comes one
        # processor later, and an aging rule must not see a delivered parcel as silent meanwhile.
        shipment = view["shipments"].setdefault(p["shipment_id"], {"delayed": False})
        shipment.update(state=UPSTREAM_SHIPMENT_STATES[kind], last_update_at=at)
    elif kind == "PaymentCaptured":
        payment = view["payments"].setdefault(p["instrument_id"], {})
        payment["captured_upstream"] = payment.get("captured_upstream", 0) + p["amount"]["amount"]
    elif kind == "ShipmentDispatched":
        shipment = view["shipments"].setdefault(p["shipment_id"], {"delayed": False})
        shipment.update(carrier=p["carrier"], tracking_number=p["tracking_number"],
                        tracking_url=web_link(p.get("tracking_url")), last_update_at=at)
        if SHIPMENT_PROGRESS.get(shipment.get("state"), 0) < SHIPMENT_PROGRESS["dispatched"]:
            shipment["state"] = "dispatched"
    elif kind == "PaymentAuthorized" and p.get("expires_at"):
        view["payments"].setdefault(p["instrument_id"], {})["expires_at"] = p["expires_at"]
    elif kind == "ReturnAuthorizationDecided":
        view["returns"].setdefault(p["return_id"], {}).update(decision=p["decision"], policy=p["policy"],
                                                              trace=p["trace"], reason=p["reason"], decided_at=at)
    elif kind == "RefundRequested" and topic.endswith("state-changes"):
        refund_id = p["refund_id"].rsplit("#", 1)[0]
        view["refunds"].setdefault(refund_id, {}).update(
            channel=p["channel"], method=p["method"], amount=p["amount"]["amount"], return_id=p["return_id"],
            instrument_id=p["instrument_id"],
            requested_at=view["refunds"].get(refund_id, {}).get("requested_at") or at, sla_hours=p.get("sla_hours"))
    elif kind == "NotificationRequested":
        view.setdefault("decided", {})[p["notification_id"]] = at
        _judge_notifications(view, out)
        _recheck_promises(view, out)
    elif kind == "NotificationDelivered":
        view["notifications"].append({"type": p["type"], "channel": p["channel"], "outcome": p["outcome"],
                                      "subject": p["subject"], "body": p["body"], "at": at, "accurate": None,
                                      "accuracy": "", "delivery_id": p["delivery_id"], "claims": p["lines"],
                                      "amounts": p.get("amounts", []), "notification_ids": list(p["notification_ids"])})
        _judge_notifications(view, out)
        _recheck_promises(view, out)
        if p["type"] == "backorder_eta_changed" and p["outcome"] == "SENT":
            for slip in view["eta_slips"].values():
                slip["notified"] = True
    elif kind == "ContactOpened" or kind == "ContactLogged":
        contact_id = p["contact_id"]
        previous = [c for c in view["contacts"] if c["at"] >= at - timedelta(days=7)]
        repeat = bool(previous) and not (view["last_change_at"] and view["last_change_at"] > previous[-1]["at"])
        tags = tuple(sorted(view["tags"]))
        view["contacts"].append({"contact_id": contact_id, "channel": p["channel"], "reason": p["reason"], "at": at,
                                 "repeat": repeat, "tags": list(tags),
                                 "by": p["actor"]["user_id"] if "actor" in p else "support-desk"})
        out.contacts.append((repeat, tags))
    elif kind == "TagApplied":
        view["tags"][p["tag"]] = {"source": "agent", "by": p["actor"]["user_id"], "at": at}
    elif kind == "TagRemoved":
        view["tags"].pop(p["tag"], None)
    elif kind in ("EscalationAcknowledged", "EscalationAssigned", "EscalationResolvedByAgent"):
        action = {"kind": kind, "payload": p, "at": at, "event_id": event.event_id}
        if p["escalation_id"] in view["escalations"]:
            _agent_action(view, action, out)
        else:  # it overtook the escalation it is about (another topic): applied when that opens
            view.setdefault("pending_actions", {}).setdefault(p["escalation_id"], []).append(action)
    elif kind == "PolicyExceptionApproved":
        view["returns"].setdefault(p["return_id"], {})["exception_by"] = p["actor"]["user_id"]


def _agent_action(view: dict[str, Any], action: dict[str, Any], out: Outputs) -> None:
    p, kind, at = action["payload"], action["kind"], action["at"]
    escalation = view["escalations"][p["escalation_id"]]
    user = p["actor"]["user_id"]
    if kind == "EscalationResolvedByAgent":
        escalation.update(state="resolved", resolved_by=user, note=p["note"])
        out.escalations.append((p["escalation_id"], "EscalationResolved", {"by": user, "note": p["note"], "at": at}))
    else:
        state = "acknowledged" if kind == "EscalationAcknowledged" else "assigned"
        escalation.update(state=state, assignee=p.get("assignee", escalation.get("assignee")))
        out.escalations.append((p["escalation_id"], "EscalationUpdated", {
            "state": state, "by": user, "note": p.get("note", p.get("assignee", "")), "at": at,
            "action": action["event_id"]}))


def _judge_notifications(view: dict[str, Any], out: Outputs) -> None:
    """Judge each sent message's item-level claims against the fulfillment truth at the moment the
    message was decided: its request's event time (the cause's), the latest requested if the
    notifier merged several. Event time, not the send time on the notifier's clock: the verdict is
    then the same live, in a replay and under a time-compressing simulator.

    A verdict is given once it is settled — the request is known and a truth snapshot at or after
    that moment has arrived (snapshots come in order on one topic; the cause's own snapshot, when
    its lines changed, has the same time) — and counted once, then."""
    for note in view["notifications"]:
        if note["outcome"] != "SENT" or not note["claims"] or note["accurate"] is not None:
            continue
        requested = [view.get("decided", {}).get(n) for n in note.get("notification_ids", ())]
        if not requested or None in requested:
            continue
        decided_at = max(requested)
        truths = [t for t in view["truths"] if t["at"] <= decided_at]
        if not truths or view["truths"][-1]["at"] < decided_at:
            continue
        accurate, reason = _accuracy(truths[-1]["lines"], note["claims"])
        out.accuracy.append(("accurate" if accurate else "inaccurate", reason or "ok"))
        note["accurate"], note["accuracy"], note["decided_at"] = accurate, reason, decided_at


def _recheck_promises(view: dict[str, Any], out: Outputs) -> None:
    """A message judged accurate also promised what was still to come: that its backordered units
    would follow (not be cancelled) and, with an ETA, by then. Each later fulfillment snapshot
    is checked against those promises; the first that contradicts one marks the message's promise
    broken (which claim, which line, since when) and counts it once. A message that said money is
    on its way to an instrument (a refund) promised it would arrive: the refund to that instrument
    failing for good breaks it. A message sent later that speaks of the line, or of money on the
    instrument, corrects it (``_mark_corrections``). Snapshots are taken in event-time order, so the
    verdict is the same whatever order the topics arrive in."""
    for note in view["notifications"]:
        if not note.get("broken") and note["outcome"] == "SENT" and note.get("amounts") \
                and note["type"] in MONEY_PROMISES:
            broken = next((b for claim in note["amounts"] if (b := _broken_refund(claim, note, view["refunds"]))), None)
            if broken is not None:
                note["broken"] = {**broken, "corrected_at": None}
                out.accuracy.append(("broken", broken["claim"]))
        if note.get("accurate") is not True or note.get("broken") or note.get("decided_at") is None:
            continue
        promised = [c for c in note["claims"] if c["quantity_backordered"]]
        if not promised:
            continue
        for truth in view["truths"]:
            if truth["at"] <= note["decided_at"]:
                continue
            broken = next((b for c in promised if (b := _broken_promise(c, truth["lines"].get(c["line_id"])))), None)
            if broken is not None:
                note["broken"] = {**broken, "at": truth["at"], "corrected_at": None}
                out.accuracy.append(("broken", broken["claim"]))
                break
    _mark_corrections(view)


def _broken_promise(claim: dict[str, Any], line: dict[str, Any] | None) -> dict[str, Any] | None:
    """What of ``claim``'s promise ``line`` (a later snapshot of it) contradicts, if anything."""
    if line is None:
        return None
    name = claim.get("name") or claim["line_id"]
    if line.get("cancelled", 0) > claim["quantity_cancelled"]:
        return {"claim": "cancelled", "line_id": claim["line_id"],
                "detail": f"said {claim['quantity_backordered']} × {name} would follow; "
                          f"{line['cancelled'] - claim['quantity_cancelled']} cancelled since"}
    eta, now_eta = claim.get("eta"), line.get("backorder_eta")
    if eta and now_eta and line.get("backordered") and now_eta > eta:
        return {"claim": "eta", "line_id": claim["line_id"],
                "detail": f"promised {name} by {eta:%d %b}; now expected {now_eta:%d %b}"}
    return None


# Messages that promise money to come, by the instrument it goes to: a refund of that instrument
# failing for good breaks the promise.
MONEY_PROMISES = frozenset({"refund_issued"})


def _broken_refund(claim: dict[str, Any], note: dict[str, Any], refunds: dict[str, Any]) -> dict[str, Any] | None:
    """The refund ``claim`` (money on one instrument, said in ``note``) spoke of, if it failed for
    good since: one of that instrument and amount, asked for by the time the message went."""
    for refund in refunds.values():
        if refund.get("instrument_id") == claim["instrument_id"] and refund.get("amount") == claim["amount"]["amount"] \
                and refund.get("requested_at") and refund["requested_at"] <= note["at"] and refund.get("state") == "gave_up":
            amount = f"{claim['amount']['amount']:.2f} {claim['amount']['currency']}"
            return {"claim": "refund", "instrument_id": claim["instrument_id"], "at": refund["changed_at"],
                    "detail": f"said {amount} was on its way to {claim['channel'].lower().replace('_', ' ')} "
                              f"{claim['instrument_id']}; that refund failed for good"}
    return None


def _spoken_of(note: dict[str, Any], broken: dict[str, Any]) -> bool:
    """Whether a message speaks of what a broken promise was about: its line, or money on its instrument."""
    if "line_id" in broken:
        return any(c["line_id"] == broken["line_id"] for c in note["claims"])
    return any(a["instrument_id"] == broken.get("instrument_id") for a in note.get("amounts", ()))


def _mark_corrections(view: dict[str, Any]) -> None:
    """A broken promise is corrected by the first message sent at or after the break that speaks of
    the line again (a new ETA, the cancellation, the shipment), or of money on the instrument."""
    for note in view["notifications"]:
        broken = note.get("broken")
        if not broken or broken["corrected_at"] is not None:
            continue
        later = [n["at"] for n in view["notifications"] if n is not note and n["outcome"] == "SENT" and n["at"] >= broken["at"]
                 and _spoken_of(n, broken)]
        broken["corrected_at"] = min(later, default=None)


def _accuracy(lines: dict[str, Any], claims: list[dict[str, Any]]) -> tuple[bool, str]:
    """Do the message's item-level claims match these line quantities?"""
    for claim in claims:
        truth = lines.get(claim["line_id"])
        if truth is None:
            continue
        shipped = truth.get("shipped", 0) + truth.get("delivered", 0)
        if claim["quantity_backordered"] != truth.get("backordered", 0):
            return False, "backorder_quantity"
        if claim["quantity_cancelled"] != truth.get("cancelled", 0):
            return False, "cancelled_quantity"
        if claim["quantity_shipped"] > shipped:
            return False, "shipped_quantity"
        if claim["eta"] and truth.get("backorder_eta") and claim["eta"] != truth["backorder_eta"]:
            return False, "eta"
    return True, ""


# -- escalations ----------------------------------------------------------------------------------

def _hours(params: dict[str, Any], key: str) -> timedelta:
    return timedelta(hours=float(params[key]))


def _return_awaiting_inspection(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for return_id, r in view["returns"].items():
        if r.get("state") == "received" and r.get("received_at"):
            due = r["received_at"] + _hours(rule.params, "after_hours")
            yield return_id, due, f"return {return_id} received {r['received_at']:%d %b %H:%M} and not inspected"


def _return_needs_review(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for return_id, r in view["returns"].items():
        waiting = r.get("state") in (None, "requested", "needs_review") and not r.get("exception_by")
        if r.get("decision") == "NEEDS_REVIEW" and waiting and r.get("decided_at"):
            yield return_id, r["decided_at"] + _hours(rule.params, "after_hours"), \
                f"return {return_id} has waited for a lead's review since {r['decided_at']:%d %b %H:%M}: {r.get('reason', '')}"


def _refund_past_sla(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for refund_id, r in view["refunds"].items():
        # The SLA is the refund's policy version's, as the command carries it (none: not judged).
        if r.get("state") in NON_TERMINAL_REFUNDS and r.get("requested_at") and r.get("sla_hours") is not None:
            sla = timedelta(hours=r["sla_hours"])
            yield refund_id, r["requested_at"] + sla, f"refund {refund_id} ({r.get('channel')}) past its {sla} SLA"


def _refund_failed(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for refund_id, r in view["refunds"].items():
        if r.get("state") == "gave_up":
            yield refund_id, None, f"refund {refund_id} failed for good"


def _refund_overpaid(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for refund_id, r in view["refunds"].items():
        if r.get("state") == "overpaid":
            yield refund_id, None, f"refund {refund_id} was paid twice: ask the provider to reverse the surplus"


def _promise_broken_uncorrected(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    claims = rule.params.get("claims")  # of which claims the rule takes broken promises (all if not given)
    for note in view["notifications"]:
        broken = note.get("broken")
        if broken and broken["corrected_at"] is None and (claims is None or broken["claim"] in claims):
            subject = broken.get("line_id") or broken.get("instrument_id")
            yield f"{note['delivery_id']}:{subject}", broken["at"] + _hours(rule.params, "grace_hours"), \
                f"the {note['type'].replace('_', ' ')} message of {note['at']:%d %b %H:%M} {broken['detail']}, " \
                "and no message told the customer since"


def _backorder_past_eta(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for line_id, x in view["lines"].items():
        if x.get("backordered") and x.get("backorder_eta"):
            yield line_id, x["backorder_eta"], f"{x.get('name', line_id)} still backordered past its ETA " \
                                               f"{x['backorder_eta']:%d %b}"


def _eta_slipped_without_notice(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for line_id, slip in view["eta_slips"].items():
        if not slip["notified"]:
            yield line_id, slip["at"] + _hours(rule.params, "grace_hours"), \
                f"the ETA of {view['lines'].get(line_id, {}).get('name', line_id)} slipped to {slip['eta']:%d %b} " \
                "and the customer was not told"


def _shipment_silent(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for shipment_id, s in view["shipments"].items():
        if s.get("state") in ("dispatched", "in_transit", "out_for_delivery") and s.get("last_update_at"):
            yield shipment_id, s["last_update_at"] + _hours(rule.params, "after_hours"), \
                f"parcel {shipment_id} had no tracking update since {s['last_update_at']:%d %b %H:%M}"


def _delivery_failed(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for shipment_id, s in view["shipments"].items():
        if s.get("state") == "delivery_failed":
            yield shipment_id, None, f"parcel {shipment_id} could not be delivered"


def _auth_expiring_unshipped(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    unshipped = any(x.get("unfulfilled", x.get("ordered", 0)) or x.get("backordered") for x in view["lines"].values())
    for instrument_id, pay in view["payments"].items():
        if pay.get("expires_at") and pay.get("state") == "authorized" and not pay.get("captured_upstream") and unshipped:
            yield instrument_id, pay["expires_at"] - _hours(rule.params, "before_hours"), \
                f"authorization on {instrument_id} expires {pay['expires_at']:%d %b %H:%M} with lines unshipped"


def _repeat_contact(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for contact in view["contacts"]:
        if contact["repeat"]:
            yield contact["contact_id"], None, f"repeat contact {contact['contact_id']} ({contact['reason']}) with no " \
                                               "change since the previous one"


def _policy_exception_approved(view: View, rule: EscalationRule, now: datetime) -> Conditions:
    for return_id, r in view["returns"].items():
        if r.get("exception_by"):
            yield return_id, None, f"return {return_id} approved as a policy exception by {r['exception_by']}"


CONDITIONS: dict[str, Callable[[View, EscalationRule, datetime], Conditions]] = {
    "return_awaiting_inspection": _return_awaiting_inspection, "return_needs_review": _return_needs_review,
    "refund_past_sla": _refund_past_sla,
    "refund_failed": _refund_failed, "refund_overpaid": _refund_overpaid, "backorder_past_eta": _backorder_past_eta,
    "eta_slipped_without_notice": _eta_slipped_without_notice,
    "promise_broken_uncorrected": _promise_broken_uncorrected, "shipment_silent": _shipment_silent,
    "delivery_failed": _delivery_failed, "auth_expiring_unshipped": _auth_expiring_unshipped,
    "repeat_contact": _repeat_contact, "policy_exception_approved": _policy_exception_approved,
}


def _escalate(view: dict[str, Any], event: Envelope, now: datetime, rules: Rules, out: Outputs) -> None:
    """Open escalations whose condition holds and is due; resolve rule-opened ones that cleared."""
    holding: set[str] = set()
    for rule in rules.escalations:
        for subject, due, reason in CONDITIONS[rule.kind](view, rule, now):
            if due is not None and due > now:
                continue
            escalation_id = f"{view['order_id']}:{rule.rule_id}:{subject}"
            holding.add(escalation_id)
            current = view["escalations"].get(escalation_id)
            if current is None or (current["state"] == "resolved" and current.get("resolved_by") == "rule"):
                opened = (current or {}).get("times_opened", 0) + 1
                # Stamped with when it became due (or its cause's event time), not when it was processed.
                opened_at = due or event.occurred_at
                view["escalations"][escalation_id] = {
                    "rule": rule.rule_id, "state": "open", "reason": reason, "opened_at": opened_at,
                    "tags": list(rule.tags),
                    "times_opened": opened, "assignee": None, "subject": subject}
                for tag in rule.tags:
                    view["tags"].setdefault(tag, {"source": "rule", "by": rule.rule_id, "at": opened_at})
                # The record carries only what every replay agrees on (rule, subject, when it became
                # due); the sentence built from the view's current details is in the view and API.
                out.escalations.append((escalation_id, "EscalationOpened", {
                    "rule": rule.rule_id, "reason": f"{rule.description} ({subject})", "tags": list(rule.tags),
                    "at": opened_at}))
                for action in view.get("pending_actions", {}).pop(escalation_id, []):
                    _agent_action(view, action, out)
    for escalation_id, escalation in view["escalations"].items():
        if escalation["state"] != "resolved" and escalation_id not in holding:
            escalation.update(state="resolved", resolved_by="rule")
            out.escalations.append((escalation_id, "EscalationResolved", {"by": "rule", "note": "the condition cleared",
                                                                         "at": event.occurred_at}))


# Age of an open escalation, for the open-escalations gauge: (upper bound, label), youngest first.
AGE_BUCKETS = ((timedelta(hours=4), "under-4h"), (timedelta(days=1), "4h-1d"), (timedelta(days=3), "1d-3d"),
               (None, "over-3d"))


def age_bucket(age: timedelta) -> str:
    return next(label for bound, label in AGE_BUCKETS if bound is None or age < bound)


@dataclass(frozen=True)
class IndexedOrder:
    """What the support queries need of one order's view."""

    customer_keys: frozenset[str]  # its customer's id and e-mail, lower case
    summary: dict[str, Any]  # the order as a customer search lists it
    escalations: dict[str, Any]  # escalation id -> the escalation, as the view holds it


class SupportIndex:
    """The orders a worker holds, indexed for the console's queries: orders by customer, the
    escalation queue, open escalations by rule and age. Kept beside the views (updated as each is
    written), so that no query scans the table; rebuilt from the table after each recovery."""

    def __init__(self) -> None:
        self._orders: dict[str, IndexedOrder] = {}
        self._by_customer: dict[str, set[str]] = {}

    def update(self, order_id: str, view: dict[str, Any]) -> None:
        """Called at every view write: the customer's keys are indexed again only if they changed,
        and the view's escalations are kept as they are (a written view is never changed:
        ``apply`` works on a copy)."""
        customer = view.get("customer") or {}
        keys = frozenset(k for k in (str(customer.get("customer_id") or "").lower(),
                                     str(customer.get("email") or "").lower()) if k)
        known = self._orders.get(order_id)
        if known is None or known.customer_keys != keys:
            self._forget(order_id)
            for key in keys:
                self._by_customer.setdefault(key, set()).add(order_id)
        escalations = view.get("escalations") or {}
        summary = {"order_id": order_id, "placed_at": view.get("placed_at"),
                   "order_state": (view.get("order") or {}).get("state"),
                   "fulfillment_status": (view.get("fulfillment") or {}).get("status"),
                   "open_escalations": sum(e["state"] != "resolved" for e in escalations.values())}
        self._orders[order_id] = IndexedOrder(keys, summary, escalations)

    def _forget(self, order_id: str) -> None:
        known = self._orders.pop(order_id, None)
        if known is not None:
            for key in known.customer_keys:
                orders = self._by_customer.get(key)
                if orders is not None:
                    orders.discard(order_id)
                    if not orders:
                        del self._by_customer[key]

    def rebuild(self, views: Any) -> None:
        """From ``(order id, view)`` pairs: the views this worker holds after a rebalance."""
        self._orders.clear()
        self._by_customer.clear()
        for order_id, view in views:
            self.update(order_id, view)

    def orders_of(self, customer: str) -> list[dict[str, Any]]:
        """The orders of a customer (by id or e-mail, any case), newest first."""
        found = [self._orders[o].summary for o in self._by_customer.get(customer.strip().lower(), ())]
        return sorted(found, key=lambda o: o["placed_at"] or datetime.min.replace(tzinfo=UTC), reverse=True)

    def escalations(self, state: str, rule: str | None) -> list[dict[str, Any]]:
        """The queue: escalations in ``state`` ("open": not resolved; "all"), of ``rule`` if given,
        oldest first."""
        queue = []
        for order_id, order in self._orders.items():
            for escalation_id, e in order.escalations.items():
                matches = state == "all" or e["state"] == state or (state == "open" and e["state"] != "resolved")
                if matches and rule in (None, e["rule"]):
                    queue.append({"escalation_id": escalation_id, "order_id": order_id, **e})
        return sorted(queue, key=lambda e: e["opened_at"])

    def counts(self, now: datetime, rules: Rules) -> dict[tuple[str, str], int]:
        """Open escalations by (rule, age bucket); every rule and bucket present, zero or not."""
        counts = {(rule.rule_id, label): 0 for rule in rules.escalations for _, label in AGE_BUCKETS}
        for order in self._orders.values():
            for e in order.escalations.values():
                if e["state"] != "resolved":
                    key = (e["rule"], age_bucket(now - e["opened_at"]))
                    counts[key] = counts.get(key, 0) + 1
        return counts


# -- what the order waits for --------------------------------------------------------------------

ORDER_WAITS = {"pending_payment": "waiting for the payment", "on_hold": "on hold", "cancelled": "cancelled"}
RETURN_WAITS = {"requested": "waits for its decision", "needs_review": "waits for a lead's review",
                "authorized": "is on its way back to us", "received": "waits for inspection"}


def order_summary(view: dict[str, Any]) -> str:
    """One line for the agent: what the order as a whole is waiting for, from the view alone
    ("2 of 5 items delivered; the Teapot is backordered until 11 Dec; the refund of 40.00 EUR is with
    the card provider since 03 Dec")."""
    lines = view["lines"].values()
    active = sum(x.get("ordered", 0) - x.get("cancelled", 0) for x in lines)
    delivered = sum(x.get("delivered", 0) for x in lines)
    on_the_way = sum(x.get("shipped", 0) for x in lines)
    state = view["order"]["state"]
    parts = []
    if state in ORDER_WAITS:
        reason = view["order"].get("hold_reason")
        parts.append(ORDER_WAITS[state] + (f" ({reason})" if state == "on_hold" and reason else ""))
    if active and state != "cancelled":
        if delivered == active:
            parts.append(f"all {active} item{'s' if active != 1 else ''} delivered")
        else:
            said = [f"{delivered} of {active} items delivered"] if delivered else []
            said += [f"{on_the_way} on the way" if said else f"{on_the_way} of {active} items on the way"] \
                if on_the_way else []
            parts.append(", ".join(said) or f"{active} item{'s' if active != 1 else ''} not shipped yet")
    for x in lines:
        if x.get("backordered"):
            eta = x.get("backorder_eta")
            parts.append(f"the {x.get('name', 'item')} is backordered " + (f"until {eta:%d %b}" if eta else "without a date"))
    for return_id, r in view["returns"].items():
        if r.get("state") in RETURN_WAITS:
            parts.append(f"return {return_id} {RETURN_WAITS[r['state']]}")
    for r in view["refunds"].values():
        if r.get("state") in NON_TERMINAL_REFUNDS and r.get("requested_at"):
            who = (r.get("channel") or "payment").lower().replace("_", " ")
            currency = (view.get("total") or {}).get("currency", "")
            parts.append(f"the refund of {r.get('amount', 0):.2f} {currency}".rstrip()
                         + f" is with the {who} provider since {r['requested_at']:%d %b}")
    return "; ".join(parts) or "nothing is waiting"


def next_deadline(view: dict[str, Any], now: datetime, rules: Rules) -> datetime | None:
    dues = [due for rule in rules.escalations for _, due, _ in CONDITIONS[rule.kind](view, rule, now)
            if due is not None and due > now]
    return min(dues, default=None)


# -- one line per thing that happened -------------------------------------------------------------

def _money(m: dict[str, Any]) -> str:
    return f"{m['amount']:.2f} {m['currency']}"


def _transition(p: dict[str, Any], topic: str) -> tuple[str, str]:
    t = p.get("transition", p)
    text = f"{t['machine']} {t['entity_id']}: {t['from_state']} → {t['to_state']}"
    return t["machine"], text + (f" ({t['reason']})" if t.get("reason") else "")


SUMMARIES: dict[str, Callable[[dict[str, Any], str], tuple[str, str]]] = {
    "OrderPlaced": lambda p, t: ("order", f"order placed: {len(p['lines'])} line(s), {_money(p['total'])}"),
    "OrderCancelled": lambda p, t: ("order", f"cancellation requested by {p['requested_by']}: {p['reason']}"),
    "LineCancelled": lambda p, t: ("order", f"{p['quantity']} of line {p['line_id']} cancelled: {p['reason']}"),
    "PaymentAuthorized": lambda p, t: ("payment", f"{_money(p['amount'])} authorized on {p['instrument_id']}"),
    "AuthorizationFailed": lambda p, t: ("payment", f"authorization failed on {p['instrument_id']}: {p['reason']}"),
    "AuthorizationExpired": lambda p, t: ("payment", f"authorization expired on {p['instrument_id']}"),
    "PaymentCaptured": lambda p, t: ("payment", f"{_money(p['amount'])} captured on {p['instrument_id']}"),
    "CaptureFailed": lambda p, t: ("payment", f"capture failed on {p['instrument_id']}: {p['reason']}"),
    "PaymentVoided": lambda p, t: ("payment", f"authorization voided on {p['instrument_id']}"),
    "RefundSucceeded": lambda p, t: ("refund", f"{_money(p['amount'])} refunded on {p['instrument_id']}"),
    "RefundFailed": lambda p, t: ("refund", f"refund failed on {p['instrument_id']}: {p['reason']}"),
    "Chargeback": lambda p, t: ("payment", f"chargeback of {_money(p['amount'])}: {p['reason']}"),
    "ShipmentCreated": lambda p, t: ("fulfillment", f"parcel {p['shipment_id']} packed: " + ", ".join(
        f"{x['quantity']} × {x['line_id']}" for x in p["lines"])),
    "ShipmentDispatched": lambda p, t: ("fulfillment", f"parcel {p['shipment_id']} dispatched with {p['carrier']} "
                                                       f"({p['tracking_number']})"),
    "TrackingUpdated": lambda p, t: ("fulfillment", f"parcel {p['shipment_id']}: {p['status'].lower()} {p['detail']}"),
    "ShipmentDelivered": lambda p, t: ("fulfillment", f"parcel {p['shipment_id']} delivered"),
    "DeliveryFailed": lambda p, t: ("fulfillment", f"parcel {p['shipment_id']} delivery failed: {p['reason']}"),
    "ReturnedToSender": lambda p, t: ("fulfillment", f"parcel {p['shipment_id']} returned to sender"),
    "LineBackordered": lambda p, t: ("fulfillment", f"{p['quantity']} of line {p['line_id']} backordered until "
                                                    f"{p['eta']:%d %b}"),
    "BackorderEtaChanged": lambda p, t: ("fulfillment", f"line {p['line_id']} now expected {p['eta']:%d %b}"),
    "LineShortShipped": lambda p, t: ("fulfillment", f"{p['quantity']} of line {p['line_id']} short-shipped"),
    "LineCancelledByWarehouse": lambda p, t: ("fulfillment", f"{p['quantity']} of line {p['line_id']} cancelled by "
                                                             f"the warehouse: {p['reason']}"),
    "ReturnRequested": lambda p, t: ("return", f"return {p['return_id']} requested: " + ", ".join(
        f"{x['quantity']} × {x['line_id']} ({x['reason'].lower()})" for x in p["lines"])),
    "ReturnReceived": lambda p, t: ("return", f"return {p['return_id']} received"),
    "InspectionCompleted": lambda p, t: ("return", f"return {p['return_id']} inspected: " + ", ".join(
        f"{x['quantity']} × {x['line_id']} {x['outcome'].lower()}" for x in p["results"])),
    "ContactOpened": lambda p, t: ("support", f"customer contact by {p['channel'].lower()}: {p['reason']}"),
    "ContactResolved": lambda p, t: ("support", f"contact {p['contact_id']} resolved: {p['resolution']}"),
    "ContactLogged": lambda p, t: ("support", f"{p['actor']['user_id']} logged a {p['channel'].lower()} contact: "
                                              f"{p['reason']}"),
    "NoteAdded": lambda p, t: ("support", f"{p['actor']['user_id']}: {p['note']}"),
    "TagApplied": lambda p, t: ("support", f"{p['actor']['user_id']} tagged {p['tag']}"),
    "TagRemoved": lambda p, t: ("support", f"{p['actor']['user_id']} removed tag {p['tag']}"),
    "EscalationAcknowledged": lambda p, t: ("escalation", f"{p['actor']['user_id']} acknowledged {p['escalation_id']}"),
    "EscalationAssigned": lambda p, t: ("escalation", f"{p['escalation_id']} assigned to {p['assignee']}"),
    "EscalationResolvedByAgent": lambda p, t: ("escalation", f"{p['actor']['user_id']} resolved {p['escalation_id']}: "
                                                             f"{p['note']}"),
    "PolicyExceptionApproved": lambda p, t: ("return", f"{p['actor']['user_id']} approved return {p['return_id']} as "
                                                       f"an exception: {p['reason']}"),
    "StateTransition": _transition,
    "PaymentTransition": _transition,
    "EventParked": lambda p, t: ("audit", f"{p['cause_type'].rsplit('.', 1)[-1]} waits for {p['waiting_for']}"),
    "EventRejected": lambda p, t: ("audit", f"{p['cause_type'].rsplit('.', 1)[-1]} rejected ({p['reason_code']}): "
                                            f"{p['reason']}"),
    "ReturnAuthorizationDecided": lambda p, t: ("return", f"return {p['return_id']} {p['decision'].lower()} under "
                                                          f"{p['policy']}: {p['reason']}"),
    "NotificationDelivered": lambda p, t: ("notification", f"{p['type'].replace('_', ' ')} by {p['channel']}: "
                                                           f"{p['outcome'].lower()}"
                                                           + (f" ({p['reason']})" if p["reason"] else "")),
}
