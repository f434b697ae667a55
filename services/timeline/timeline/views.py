"""The support API (JSON; described in /openapi.json, built from timeline.api) and the console (/).

Every endpoint needs a signed-in user with the role timeline.api gives it (bearer tokens:
orderops.http.auth), and every body is validated against its schema before anything is done. A read
of one order is answered by the worker that owns it; a query over many orders (a customer's orders,
the escalation queue) by every worker, each from its own partitions (orderops.http.peers). Every
write becomes an event on support.actions carrying the signed-in user as its actor — never a direct
state edit — and the view changes when the timeline processes it, like any other event.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from faust import web

from orderops.http.app import SECURITY_HEADERS, signed_in
from orderops.http.limits import PerCallerLimit
from orderops.http.peers import asked_by_peer, gather
from orderops.model.catalog import SUPPORT_ACTIONS
from orderops.model.envelope import Envelope, from_json
from timeline import api
from timeline.app import RULES, app, entries, service, support_index, views
from timeline.domain import entry_key, kept_entries, order_summary

STATIC = Path(__file__).parent / "static"


class PerUserLimit(PerCallerLimit):
    """At most ``per_minute`` calls a minute per user: each open console tab polls the queue, and a
    script could poll far faster. Over it: 429, saying how long to wait."""

    def take_or_refuse(self, user_id: str) -> None:
        wait = self.take(user_id)
        if wait is not None:
            raise BadRequest(f"{user_id} asked more than {self.per_minute:g} times a minute: wait {wait:.0f} s", 429)


# Searches and the escalation queue, per user (ORDEROPS_SUPPORT_QUERIES_PER_MINUTE, default 60: a
# console tab polls every 15 s, so that is fifteen tabs and the searches between).
searches = PerUserLimit(float(os.environ.get("ORDEROPS_SUPPORT_QUERIES_PER_MINUTE", "60")))


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


# How soon an agent should take up an escalation of each rule (its ``respond_hours`` in rules.yaml):
# the queue shows each one's age against it. The clock is the processor's (event time when replaying).
DEFAULT_RESPOND_HOURS = 24.0
RESPOND_WITHIN = {r.rule_id: float(r.params.get("respond_hours", DEFAULT_RESPOND_HOURS)) for r in RULES.escalations}


def describe(view: dict) -> dict:
    """The view as the API serves it, with ``summary``: what the order as a whole waits for."""
    hidden = ("seen", "entries", "entry_count", "eta_slips", "truths", "pending_actions", "decided")
    return _plain({**{k: v for k, v in view.items() if k not in hidden}, "summary": order_summary(view)})


def timeline_of(view: dict, domain: str | None = None) -> list[dict]:
    """The order's kept entries (from the entries table; a view written before they moved there
    still carries its earlier ones), in event time."""
    stored = (entries.get(entry_key(view["order_id"], seq)) for seq in kept_entries(view))
    kept = view.get("entries", []) + [from_json(e) for e in stored if e is not None]
    ordered = sorted(kept, key=lambda e: (e["occurred_at"], e["entry_id"]))
    return _plain([{k: v for k, v in e.items() if k != "seq"} for e in ordered if domain in (None, e["domain"])])


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


async def _act(request: web.Request, order_id: str, type_name: str, payload: dict) -> dict:
    """Write one support action by the signed-in user; ``Idempotency-Key`` makes a retried request
    the same event. The key is scoped to the order and the action: the same key sent with another
    action or for another order is another event (a console reusing a key must not lose an action)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", key):
        raise BadRequest("Idempotency-Key must be 1-100 of letters, digits, . _ : -")
    event_id = f"console:{order_id}:{type_name}:{key}" if key else f"console:{uuid.uuid4()}"
    envelope = Envelope(event_id, order_id, action_time(order_id), service.name, f"orderops.support.{type_name}",
                        {"actor": signed_in(request).as_actor(), **payload})
    await service.emit_all(order_id, [(SUPPORT_ACTIONS, envelope.to_record())])
    return {"accepted": True, "event_id": event_id, "type": type_name, "order_id": order_id}


def action_time(order_id: str) -> datetime:
    """When an agent's action happened, on the clock the processors run by (docs/operations.md,
    "Clocks"). Live: the wall clock. In event-time mode: one millisecond after the order's latest
    event as this worker holds it — the agent acted on what its view showed, so the action sorts
    after it and ages the order no further — else the timeline's event clock. Never the wall clock
    there: the real time is far from simulated or replayed time, and an action stamped with it
    sorted before the contact it answered."""
    if service.settings.clock == "wall":
        return datetime.now(UTC)
    stored = views.get(order_id)
    last = from_json(stored)["last_event_at"] if stored is not None else None
    return last + timedelta(milliseconds=1) if last is not None else service.clock.now()


def endpoint(method: str, path: str, routed: bool = False, combine: Callable[[list[dict]], dict] | None = None):
    """The view method for one endpoint of timeline.api: its role, its body's schema, 4xx for the
    caller's mistakes. ``routed``: answered by the worker owning the order. ``combine``: a query
    over many orders, answered from every worker's partitions (orderops.http.peers); ``combine``
    makes one answer of theirs, and ``complete`` says whether every worker answered."""
    spec = api.BY_ROUTE[(method, path)]

    def decorate(handler):
        @functools.wraps(handler)
        async def run(self: web.View, request: web.Request, **kwargs: Any) -> web.Response:
            try:
                if spec.body is not None:
                    body = await _body(request)
                    problem = api.problems(method, path, body)
                    if problem:
                        raise BadRequest(problem)
                    kwargs["body"] = body
                status, answer = await handler(self, request, **kwargs)
                if combine is not None and status == 200 and not asked_by_peer(request):
                    found = await gather(app, request, answer)
                    if found.refused is not None:
                        status, answer = found.refused
                    else:
                        answer = {**combine(found.answers), "complete": not found.unanswered}
                return self.json(answer, status=status)
            except BadRequest as exc:
                return self.json({"error": str(exc)}, status=exc.status)

        inner = service.routed_by_order("order_id")(run) if routed else run
        return service.requires(spec.role)(inner)

    return decorate


@app.page("/session")
class Session(web.View):
    @endpoint("get", "/session")
    async def get(self, request: web.Request):
        return 200, signed_in(request).as_actor()


@app.page("/orders/{order_id}")
class Order(web.View):
    @endpoint("get", "/orders/{order_id}", routed=True)
    async def get(self, request: web.Request, order_id: str):
        return 200, describe(_view(order_id))


@app.page("/orders/{order_id}/timeline")
class OrderTimeline(web.View):
    @endpoint("get", "/orders/{order_id}/timeline", routed=True)
    async def get(self, request: web.Request, order_id: str):
        domain = request.query.get("domain")
        if domain is not None and domain not in api.DOMAINS:
            raise BadRequest(f"domain must be one of {', '.join(api.DOMAINS)}")
        return 200, {"order_id": order_id, "entries": timeline_of(_view(order_id), domain)}


def _customer_orders(answers: list[dict]) -> dict:
    """Every worker's orders of the customer, once each, newest first."""
    found = {o["order_id"]: o for answer in answers for o in answer["orders"]}
    newest_first = sorted(found.values(), key=lambda o: (o["placed_at"] or "", o["order_id"]), reverse=True)
    return {**answers[0], "orders": newest_first}


def _queue(answers: list[dict]) -> dict:
    """Every worker's escalations, once each, oldest first."""
    found = {e["escalation_id"]: e for answer in answers for e in answer["escalations"]}
    return {**answers[0], "escalations": sorted(found.values(), key=lambda e: (e["opened_at"], e["escalation_id"]))}


@app.page("/orders")
class Orders(web.View):
    @endpoint("get", "/orders", combine=_customer_orders)
    async def get(self, request: web.Request):
        wanted = request.query.get("customer", "").strip().lower()
        if not wanted:
            raise BadRequest("give ?customer=<customer id or e-mail>")
        searches.take_or_refuse(signed_in(request).user_id)
        found = support_index.orders_of(wanted)
        return 200, {"customer": wanted, "orders": _plain(found)}


@app.page("/escalations")
class Escalations(web.View):
    @endpoint("get", "/escalations", combine=_queue)
    async def get(self, request: web.Request):
        state = request.query.get("state", "open")
        if state not in api.ESCALATION_STATES:
            raise BadRequest(f"state must be one of {', '.join(api.ESCALATION_STATES)}")
        rule = request.query.get("rule")
        if rule and rule not in {r.rule_id for r in RULES.escalations}:
            raise BadRequest(f"unknown rule {rule!r}; rules: {', '.join(r.rule_id for r in RULES.escalations)}")
        searches.take_or_refuse(signed_in(request).user_id)
        now = service.clock.now()
        queue = [{**e, "age_hours": round((now - e["opened_at"]).total_seconds() / 3600, 2),
                  "respond_within_hours": RESPOND_WITHIN.get(e["rule"], DEFAULT_RESPOND_HOURS)}
                 for e in support_index.escalations(state, rule)]
        return 200, {"state": state, "rule": rule, "escalations": _plain(queue)}


@app.page("/orders/{order_id}/contacts")
class Contacts(web.View):
    @endpoint("post", "/orders/{order_id}/contacts")
    async def post(self, request: web.Request, order_id: str, body: dict):
        return 202, await _act(request, order_id, "ContactLogged", {
            "contact_id": body.get("contact_id") or f"console-{uuid.uuid4().hex[:12]}",
            "channel": body.get("channel", "OTHER"), "reason": body["reason"].strip(), "note": body.get("note", "")})


@app.page("/orders/{order_id}/tags")
class Tags(web.View):
    @endpoint("post", "/orders/{order_id}/tags")
    async def post(self, request: web.Request, order_id: str, body: dict):
        return 202, await _act(request, order_id, "TagApplied", {"tag": body["tag"].lower(), "target_kind": "order",
                                                                 "target_id": order_id})


@app.page("/orders/{order_id}/tags/{tag}")
class Tag(web.View):
    @endpoint("delete", "/orders/{order_id}/tags/{tag}")
    async def delete(self, request: web.Request, order_id: str, tag: str):
        tag = tag.lower()
        if not re.fullmatch(api.TAG["pattern"], tag) or len(tag) > api.TAG["maxLength"]:
            raise BadRequest(f"{tag[:60]!r} is not a tag: words of letters and digits joined by -, at most 60")
        return 202, await _act(request, order_id, "TagRemoved", {"tag": tag, "target_kind": "order",
                                                                "target_id": order_id})


def _order_of(escalation_id: str) -> str:
    for rule in RULES.escalations:
        marker = f":{rule.rule_id}:"
        if marker in escalation_id:
            return escalation_id.split(marker, 1)[0]
    raise BadRequest(f"{escalation_id} is not an escalation id (<order id>:<rule id>:<subject>)", 404)


# What each action on an escalation writes: its event type, and the body fields it carries.
ESCALATION_ACTIONS = {
    "ack": ("EscalationAcknowledged", lambda body: {"note": body.get("note", "")}),
    "assign": ("EscalationAssigned", lambda body: {"assignee": body["assignee"].strip()}),
    "resolve": ("EscalationResolvedByAgent", lambda body: {"note": body["note"].strip()}),
}


def _escalation_page(action: str) -> None:
    type_name, fields = ESCALATION_ACTIONS[action]
    path = f"/escalations/{{escalation_id}}/{action}"

    class EscalationAction(web.View):
        @endpoint("post", path)
        async def post(self, request: web.Request, escalation_id: str, body: dict):
            return 202, await _act(request, _order_of(escalation_id), type_name,
                                   {"escalation_id": escalation_id, **fields(body)})

    app.page(path, name=f"escalation-{action}")(EscalationAction)


for _action in ESCALATION_ACTIONS:
    _escalation_page(_action)


@app.page("/returns/{return_id}/approve-exception")
class ApproveException(web.View):
    @endpoint("post", "/returns/{return_id}/approve-exception")
    async def post(self, request: web.Request, return_id: str, body: dict):
        return 202, await _act(request, body["order_id"], "PolicyExceptionApproved", {
            "return_id": return_id, "reason": body["reason"].strip()})


@app.page("/openapi.json")
class OpenApi(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.json(api.openapi())


CONSOLE = (STATIC / "console.html").read_text()
_SCRIPT = re.search(r"<script>(.*?)</script>", CONSOLE, re.S).group(1)
# The console's one script is allowed by its hash: nothing injected into the page can run.
CONSOLE_POLICY = ("default-src 'none'; script-src 'sha256-" + base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest())
                  .decode() + "'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'self'; "
                  "base-uri 'none'; frame-ancestors 'none'")


@app.page("/")
class Console(web.View):
    async def get(self, request: web.Request) -> web.Response:
        return self.html(CONSOLE, headers={**SECURITY_HEADERS, "Content-Security-Policy": CONSOLE_POLICY})
