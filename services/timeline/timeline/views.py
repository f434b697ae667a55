"""The support API (JSON; described in /openapi.json) and the support console (/).

Reads are answered by the worker that owns the order (Faust routes them). Every write becomes an
event on support.actions carrying the acting user — never a direct state edit — and the view
changes when the timeline processes it, like any other event.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from faust import web

from orderops.catalog import SUPPORT_ACTIONS
from orderops.envelope import Envelope, from_json
from timeline.app import RULES, app, service, views

STATIC = Path(__file__).parent / "static"
ROLES = ("agent", "lead", "admin")
CHANNELS = ("EMAIL", "PHONE", "CHAT", "SOCIAL", "OTHER")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def describe(view: dict) -> dict:
    shown = {k: v for k, v in view.items() if k not in ("seen", "entries", "eta_slips", "truths", "pending_actions", "decided")}
    return _plain(shown)


def timeline_of(view: dict, domain: str | None = None) -> list[dict]:
    entries = sorted(view["entries"], key=lambda e: (e["occurred_at"], e["entry_id"]))
    return _plain([e for e in entries if domain in (None, e["domain"])])


def _view(order_id: str) -> dict:
    stored = views.get(order_id)
    if stored is None:
        raise BadRequest(f"order {order_id} is unknown to the timeline", 404)
    return from_json(stored)


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body must be JSON: {exc}") from exc
    except RecursionError as exc:  # found by the hostile-input test: 5,000 nested brackets gave a 500
        raise BadRequest("the body nests too deeply to be a request of this API") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _actor(body: dict) -> dict:
    actor = body.get("actor")
    if not isinstance(actor, dict) or not str(actor.get("user_id", "")).strip():
        raise BadRequest("'actor' is required: {\"user_id\": \"...\", \"role\": \"agent|lead|admin\"}")
    if actor.get("role") not in ROLES:
        raise BadRequest(f"actor.role must be one of {', '.join(ROLES)}")
    return {"user_id": str(actor["user_id"]), "role": actor["role"]}


def _text(body: dict, key: str, limit: int = 2000) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"'{key}' is required (non-empty text)")
    if len(value) > limit:
        raise BadRequest(f"'{key}' is longer than {limit} characters")
    return value.strip()


async def _act(request: web.Request, order_id: str, type_name: str, payload: dict) -> dict:
    """Write one support action; ``Idempotency-Key`` makes a retried request the same event."""
    key = request.headers.get("Idempotency-Key")
    event_id = f"console:{key}" if key else f"console:{uuid.uuid4()}"
    envelope = Envelope(event_id, order_id, datetime.now(UTC), service.name,
                        f"orderops.support.{type_name}", payload)
    await service.emit_all(order_id, [(SUPPORT_ACTIONS, envelope.to_record())])
    return {"accepted": True, "event_id": event_id, "type": type_name, "order_id": order_id}


def _guarded(handler):
    async def run(self: web.View, request: web.Request, **kwargs: Any) -> web.Response:
        try:
            status, body = await handler(self, request, **kwargs)
            return self.json(body, status=status)
        except BadRequest as exc:
            return self.json({"error": str(exc)}, status=exc.status)
    return run


@app.page("/orders/{order_id}")
class Order(web.View):
    @service.routed_by_order("order_id")
    @_guarded
    async def get(self, request: web.Request, order_id: str):
        return 200, describe(_view(order_id))


@app.page("/orders/{order_id}/timeline")
class OrderTimeline(web.View):
    @service.routed_by_order("order_id")
    @_guarded
    async def get(self, request: web.Request, order_id: str):
        return 200, {"order_id": order_id, "entries": timeline_of(_view(order_id), request.query.get("domain"))}


@app.page("/orders")
class Orders(web.View):
    @_guarded
    async def get(self, request: web.Request):
        wanted = request.query.get("customer", "").strip().lower()
        if not wanted:
            raise BadRequest("give ?customer=<customer id or e-mail>")
        found = []
        for order_id, stored in list(views.items()):
            customer = (stored or {}).get("customer") or {}
            if wanted in (str(customer.get("customer_id", "")).lower(), str(customer.get("email", "")).lower()):
                view = from_json(stored)
                found.append({"order_id": order_id, "placed_at": view["placed_at"], "order_state": view["order"]["state"],
                              "fulfillment_status": view["fulfillment"]["status"],
                              "open_escalations": sum(e["state"] != "resolved" for e in view["escalations"].values())})
        found.sort(key=lambda o: o["placed_at"] or datetime.min.replace(tzinfo=UTC), reverse=True)
        return 200, {"customer": wanted, "orders": _plain(found)}

    @_guarded
    async def post(self, request: web.Request):
        raise BadRequest("use POST /orders/{order_id}/contacts or /tags", 405)


@app.page("/escalations")
class Escalations(web.View):
    @_guarded
    async def get(self, request: web.Request):
        state = request.query.get("state", "open")
        if state not in ("open", "acknowledged", "assigned", "resolved", "all"):
            raise BadRequest("state must be open, acknowledged, assigned, resolved or all")
        rule = request.query.get("rule")
        if rule and rule not in {r.rule_id for r in RULES.escalations}:
            raise BadRequest(f"unknown rule {rule!r}; rules: {', '.join(r.rule_id for r in RULES.escalations)}")
        queue = []
        for order_id, stored in list(views.items()):
            for escalation_id, e in (stored or {}).get("escalations", {}).items():
                matches = state == "all" or e["state"] == state or (state == "open" and e["state"] != "resolved")
                if matches and rule in (None, e["rule"]):
                    queue.append({"escalation_id": escalation_id, "order_id": order_id, **from_json(e)})
        queue.sort(key=lambda e: e["opened_at"])
        return 200, {"state": state, "rule": rule, "escalations": _plain(queue)}


@app.page("/orders/{order_id}/contacts")
class Contacts(web.View):
    @_guarded
    async def post(self, request: web.Request, order_id: str):
        body = await _body(request)
        channel = body.get("channel", "OTHER")
        if channel not in CHANNELS:
            raise BadRequest(f"channel must be one of {', '.join(CHANNELS)}")
        return 202, await _act(request, order_id, "ContactLogged", {
            "actor": _actor(body), "contact_id": body.get("contact_id") or f"console-{uuid.uuid4().hex[:12]}",
            "channel": channel, "reason": _text(body, "reason"), "note": str(body.get("note", ""))})


@app.page("/orders/{order_id}/tags")
class Tags(web.View):
    @_guarded
    async def post(self, request: web.Request, order_id: str):
        body = await _body(request)
        tag = _text(body, "tag", 60).lower()
        if not all(c.isalnum() or c == "-" for c in tag):
            raise BadRequest("a tag is lowercase words joined by '-', like carrier-delay")
        return 202, await _act(request, order_id, "TagApplied", {"actor": _actor(body), "tag": tag,
                                                                 "target_kind": "order", "target_id": order_id})


def _order_of(escalation_id: str) -> str:
    for rule in RULES.escalations:
        marker = f":{rule.rule_id}:"
        if marker in escalation_id:
            return escalation_id.split(marker, 1)[0]
    raise BadRequest(f"{escalation_id} is not an escalation id (<order id>:<rule id>:<subject>)", 404)


@app.page("/escalations/{escalation_id}/{action}")
class EscalationAction(web.View):
    @_guarded
    async def post(self, request: web.Request, escalation_id: str, action: str):
        body = await _body(request)
        actor = _actor(body)
        order_id = _order_of(escalation_id)
        if action == "ack":
            return 202, await _act(request, order_id, "EscalationAcknowledged", {
                "actor": actor, "escalation_id": escalation_id, "note": str(body.get("note", ""))})
        if action == "assign":
            return 202, await _act(request, order_id, "EscalationAssigned", {
                "actor": actor, "escalation_id": escalation_id, "assignee": _text(body, "assignee", 100)})
        if action == "resolve":
            if actor["role"] not in ("lead", "admin"):
                raise BadRequest("resolving an escalation needs the lead or admin role", 403)
            return 202, await _act(request, order_id, "EscalationResolvedByAgent", {
                "actor": actor, "escalation_id": escalation_id, "note": _text(body, "note")})
        raise BadRequest(f"unknown action {action!r}: ack, assign or resolve", 404)


@app.page("/returns/{return_id}/approve-exception")
class ApproveException(web.View):
    @_guarded
    async def post(self, request: web.Request, return_id: str):
        body = await _body(request)
        actor = _actor(body)
        if actor["role"] not in ("lead", "admin"):
            raise BadRequest("approving a policy exception needs the lead or admin role", 403)
        return 202, await _act(request, _text(body, "order_id", 200), "PolicyExceptionApproved", {
            "actor": actor, "return_id": return_id, "reason": _text(body, "reason")})


@app.page("/openapi.json")
class OpenApi(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.bytes((Path(__file__).parent / "openapi.json").read_bytes(), content_type="application/json")


@app.page("/")
class Console(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.html((STATIC / "console.html").read_text())
