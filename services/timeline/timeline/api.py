"""The support API's contract: every endpoint, the role it needs, and the schema of its body.

The views validate every request body against these schemas, and /openapi.json is built from
them, so the description a client (or a fuzzer) reads is the one the server enforces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

DOMAINS = ["order", "payment", "fulfillment", "shipment", "return", "refund", "notification", "support",
           "escalation", "audit"]
CHANNELS = ["EMAIL", "PHONE", "CHAT", "SOCIAL", "OTHER"]
ESCALATION_STATES = ["open", "acknowledged", "assigned", "resolved", "all"]
ID = {"type": "string", "minLength": 1, "maxLength": 200}
TAG = {"type": "string", "pattern": r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$", "maxLength": 60}
PATH_PARAMETERS = {"tag": TAG}  # every other path parameter is an ID


def text(limit: int) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": limit, "pattern": r"\S"}


def _body(required: list[str], **properties: dict) -> dict:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    role: str
    body: dict | None = None
    query: dict[str, tuple[dict, bool]] = field(default_factory=dict)  # name: (schema, required)
    responses: dict[str, str] = field(default_factory=dict)


LIMITED = "the signed-in user asked more than ORDEROPS_SUPPORT_QUERIES_PER_MINUTE times a minute"
INCOMPLETE = "complete is false when a worker did not answer in time, and its orders are missing"
ACCEPTED = {"202": "accepted: written to support.actions with the signed-in user as its actor"}
ENDPOINTS = [
    Endpoint("get", "/session", "Who the token belongs to (the console's sign-in)", "agent",
             responses={"200": "user_id and role"}),
    Endpoint("get", "/orders/{order_id}", "The unified view of an order", "agent",
             responses={"200": "order, payments, fulfillment, lines, shipments, returns (decision and trace), "
                               "refunds, notifications, contacts, escalations, tags", "404": "unknown order"}),
    Endpoint("get", "/orders/{order_id}/timeline", "Everything that happened to the order, in event-time order",
             "agent", query={"domain": ({"type": "string", "enum": DOMAINS}, False)},
             responses={"200": "entries", "404": "unknown order"}),
    Endpoint("get", "/orders", "Find orders by customer id or e-mail", "agent",
             query={"customer": (text(320), True)},
             responses={"200": "the customer's orders, newest first, from every timeline worker; " + INCOMPLETE,
                        "429": LIMITED}),
    Endpoint("get", "/escalations", "The escalation work queue, oldest first", "agent",
             query={"state": ({"type": "string", "enum": ESCALATION_STATES, "default": "open"}, False),
                    "rule": ({"type": "string"}, False)},
             responses={"200": "escalations, from every timeline worker; " + INCOMPLETE, "429": LIMITED}),
    Endpoint("post", "/orders/{order_id}/contacts", "Log a customer contact", "agent",
             _body(["reason"], channel={"type": "string", "enum": CHANNELS}, reason=text(2000),
                   note={"type": "string", "maxLength": 2000},
                   contact_id={"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,100}$"}), responses=ACCEPTED),
    Endpoint("post", "/orders/{order_id}/tags", "Tag the order with a root cause", "agent",
             _body(["tag"], tag=TAG), responses=ACCEPTED),
    Endpoint("delete", "/orders/{order_id}/tags/{tag}", "Remove a root-cause tag from the order (a rule may apply "
             "it again at a later matching event)", "agent", responses=ACCEPTED),
    Endpoint("post", "/escalations/{escalation_id}/ack", "Acknowledge an escalation", "agent",
             _body([], note={"type": "string", "maxLength": 2000}), responses={**ACCEPTED, "404": "not an escalation id"}),
    Endpoint("post", "/escalations/{escalation_id}/assign", "Assign an escalation", "agent",
             _body(["assignee"], assignee=text(100)), responses={**ACCEPTED, "404": "not an escalation id"}),
    Endpoint("post", "/escalations/{escalation_id}/resolve", "Resolve an escalation", "lead",
             _body(["note"], note=text(2000)), responses={**ACCEPTED, "404": "not an escalation id"}),
    Endpoint("post", "/returns/{return_id}/approve-exception", "Approve a return as a policy exception", "lead",
             _body(["order_id", "reason"], order_id=ID, reason=text(2000)), responses=ACCEPTED),
]
BY_ROUTE = {(e.method, e.path): e for e in ENDPOINTS}
_VALIDATORS = {(e.method, e.path): Draft7Validator(e.body) for e in ENDPOINTS if e.body}


def problems(method: str, path: str, body: Any) -> str | None:
    """What is wrong with ``body`` for the endpoint, in one sentence; ``None`` if nothing."""
    error = best_match(_VALIDATORS[(method, path)].iter_errors(body))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{'the body' if not where else repr(where)}: {error.message[:300]}"


def openapi() -> dict:
    paths: dict[str, dict] = {}
    for e in ENDPOINTS:
        parameters = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS.get(name, ID)}
                      for name in _path_names(e.path)]
        parameters += [{"name": name, "in": "query", "required": required, "schema": schema}
                       for name, (schema, required) in e.query.items()]
        responses = {code: {"description": why} for code, why in e.responses.items()}
        responses.update({
            "400": {"description": "the request is invalid; the message says what is wrong"},
            "401": {"description": "no token, or one nobody holds"},
            "403": {"description": f"the signed-in user's role is below {e.role}"},
        })
        operation: dict[str, Any] = {"summary": f"{e.summary} ({e.role} or above)", "parameters": parameters,
                                     "responses": responses, "security": [{"bearer": []}]}
        if e.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": e.body}}}
        paths.setdefault(e.path, {})[e.method] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "orderops support API", "version": "2",
                 "description": "The timeline's unified view of orders, their timelines and escalations. Every "
                                "write becomes an event on support.actions carrying the signed-in user."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
