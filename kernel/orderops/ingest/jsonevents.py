"""An upstream event given as JSON, made the Avro record its topic's schema describes.

The JSON follows the schema field by field, with the forms a webhook sender can write:

- the envelope: ``event_id``, ``order_id``, ``occurred_at``, ``type`` (the payload's record name,
  short ``OrderPlaced`` or full ``orderops.storefront.OrderPlaced``) and ``payload`` (its fields);
  ``source`` is not given: it is the system the caller's token belongs to;
- a timestamp: an ISO 8601 string with its offset (``2026-12-07T10:15:00Z``), or milliseconds since
  the epoch;
- a decimal (every amount of money): a string (``"12.50"``) or an integer, never a JSON fraction,
  which may not survive a JSON parser as written;
- an optional field (a union with null): the value, or null, or left out when it has a default;
- any other union of several named types: ``{"<type name>": value}``, as Avro's JSON encoding has it;
- an enum: its symbol; bytes and fixed: base64.

Anything else is refused with the path of the first value that does not fit
(``payload.lines[0].quantity: expected an integer, got "two"``), before anything is written.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from orderops.codec.schemas import ResolvedSchema

ENVELOPE_FIELDS = ("event_id", "order_id", "occurred_at", "type", "payload")
MAX_DEPTH = 32  # no schema here nests deeper; a body that does is refused before it is walked
_INTEGERS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class EventProblem(ValueError):
    """What is wrong with an event, at which path of its JSON."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message


def envelope_record(schema: ResolvedSchema, event: Any, source: str) -> dict[str, Any]:
    """The Avro record of one event of a topic whose value schema is ``schema`` (an envelope)."""
    if not isinstance(event, dict):
        raise EventProblem("", f"an event is a JSON object, not {_kind(event)}")
    unknown = sorted(set(event) - set(ENVELOPE_FIELDS))
    if unknown:
        raise EventProblem(unknown[0], f"is not a field of an event (fields: {', '.join(ENVELOPE_FIELDS)})")
    for name in ENVELOPE_FIELDS:
        if name not in event:
            raise EventProblem(name, "is missing")
    names = _named_types(schema.schema)
    fields = {f["name"]: f for f in schema.schema["fields"]}
    branches = {_full(b, schema.schema.get("namespace", "")): b for b in fields["payload"]["type"]}
    wanted = event["type"]
    if not isinstance(wanted, str):
        raise EventProblem("type", f"expected the payload's type name, got {_kind(wanted)}")
    full = next((n for n in branches if n == wanted or n.rsplit(".", 1)[-1] == wanted), None)
    if full is None:
        short = ", ".join(sorted(n.rsplit(".", 1)[-1] for n in branches))
        raise EventProblem("type", f"{wanted!r} is not an event of this topic (its events: {short})")
    convert = _Converter(names)
    return {
        "event_id": convert.value(fields["event_id"]["type"], event["event_id"], "event_id", ""),
        "order_id": convert.value(fields["order_id"]["type"], event["order_id"], "order_id", ""),
        "occurred_at": convert.value(fields["occurred_at"]["type"], event["occurred_at"], "occurred_at", ""),
        "source": source,
        "payload": (full, convert.value(names[full], event["payload"], "payload", "")),
    }


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"[:60]
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _full(node: Any, namespace: str) -> str:
    name = node["name"] if isinstance(node, dict) else node
    if "." in name or not namespace:
        return str(name)
    return f"{namespace}.{name}"


def _named_types(schema: Any, namespace: str = "", found: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every named type of an expanded schema by full name, wherever it is defined."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, namespace, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            namespace = schema.get("namespace", namespace) if "." not in schema["name"] else \
                schema["name"].rsplit(".", 1)[0]
            found.setdefault(_full(schema, namespace), {**schema, "_namespace": namespace})
            for field in schema.get("fields", ()):
                _named_types(field["type"], namespace, found)
        elif kind == "array":
            _named_types(schema["items"], namespace, found)
        elif kind == "map":
            _named_types(schema["values"], namespace, found)
        elif isinstance(kind, (dict, list)):
            _named_types(kind, namespace, found)
    return found


class _Converter:
    def __init__(self, names: dict[str, dict[str, Any]]) -> None:
        self.names = names

    def _resolve(self, schema: Any, namespace: str) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            for candidate in (schema, _full(schema, namespace)):
                if candidate in self.names:
                    return self.names[candidate]
            raise EventProblem("", f"the schema names an unknown type {schema}")  # a defect of schemas/, not input
        return schema

    def value(self, schema: Any, value: Any, path: str, namespace: str, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise EventProblem(path, f"nests deeper than {MAX_DEPTH} levels")
        schema = self._resolve(schema, namespace)
        if isinstance(schema, list):
            return self._union(schema, value, path, namespace, depth)
        if isinstance(schema, str):
            return _primitive(schema, value, path)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in _COMPLEX and logical is None):
            return self.value(kind, value, path, namespace, depth + 1)
        if logical in ("timestamp-millis", "timestamp-micros"):
            return _timestamp(value, path)
        if logical == "decimal":
            return _decimal(value, path, schema)
        if kind == "record" or kind == "error":
            return self._record(schema, value, path, _namespace_of(schema, namespace), depth)
        if kind == "enum":
            if not isinstance(value, str) or value not in schema["symbols"]:
                raise EventProblem(path, f"expected one of {', '.join(schema['symbols'])}, got {_kind(value)}")
            return value
        if kind == "array":
            if not isinstance(value, list):
                raise EventProblem(path, f"expected an array, got {_kind(value)}")
            return [self.value(schema["items"], item, f"{path}[{n}]", namespace, depth + 1)
                    for n, item in enumerate(value)]
        if kind == "map":
            if not isinstance(value, dict):
                raise EventProblem(path, f"expected an object, got {_kind(value)}")
            return {k: self.value(schema["values"], v, f"{path}.{k}", namespace, depth + 1) for k, v in value.items()}
        if kind == "fixed":
            data = _bytes(value, path)
            if len(data) != schema["size"]:
                raise EventProblem(path, f"expected {schema['size']} bytes, got {len(data)}")
            return data
        return _primitive(kind, value, path)

    def _record(self, schema: dict[str, Any], value: Any, path: str, namespace: str, depth: int) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise EventProblem(path, f"expected an object ({schema['name']}), got {_kind(value)}")
        fields = {f["name"]: f for f in schema["fields"]}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise EventProblem(_join(path, unknown[0]), f"is not a field of {schema['name']} "
                                                        f"(its fields: {', '.join(fields)})")
        record = {}
        for name, field in fields.items():
            where = _join(path, name)
            if name in value:
                record[name] = self.value(field["type"], value[name], where, namespace, depth + 1)
            elif "default" in field:
                record[name] = self.value(field["type"], field["default"], where, namespace, depth + 1)
            else:
                raise EventProblem(where, "is missing")
        return record

    def _union(self, branches: list[Any], value: Any, path: str, namespace: str, depth: int) -> Any:
        if value is None:
            if "null" in branches:
                return None
            raise EventProblem(path, "must not be null")
        others = [b for b in branches if b != "null"]
        if len(others) == 1:
            return self.value(others[0], value, path, namespace, depth + 1)
        if not (isinstance(value, dict) and len(value) == 1):
            raise EventProblem(path, "expected {\"<type name>\": value}, one of the union's types")
        [(name, inner)] = value.items()
        for branch in others:
            resolved = self._resolve(branch, namespace)
            if name in _labels(resolved, namespace):
                return self.value(resolved, inner, f"{path}.{name}", namespace, depth + 1)
        raise EventProblem(path, f"{name[:60]!r} is not one of the union's types")


def _namespace_of(schema: dict[str, Any], enclosing: str) -> str:
    if "_namespace" in schema:
        return str(schema["_namespace"])
    if "." in schema["name"]:
        return str(schema["name"].rsplit(".", 1)[0])
    return str(schema.get("namespace", enclosing))


def _labels(schema: Any, namespace: str) -> set[str]:
    """The names a union's branch is given by in JSON: a named type's short and full name, else its type."""
    if isinstance(schema, str):
        return {schema}
    if "name" in schema:
        return {schema["name"], _full(schema, _namespace_of(schema, namespace))}
    return {schema["type"]} if isinstance(schema["type"], str) else set()


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_COMPLEX = {"record", "error", "enum", "array", "map", "fixed"}


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _primitive(kind: str, value: Any, path: str) -> Any:
    if kind == "string":
        if not isinstance(value, str):
            raise EventProblem(path, f"expected a string, got {_kind(value)}")
        return value
    if kind in _INTEGERS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventProblem(path, f"expected an integer, got {_kind(value)}")
        low, high = _INTEGERS[kind]
        if not low <= value <= high:
            raise EventProblem(path, f"{value} does not fit a{'n' if kind == 'int' else ''} {kind}")
        return value
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventProblem(path, f"expected a number, got {_kind(value)}")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise EventProblem(path, f"expected true or false, got {_kind(value)}")
        return value
    if kind == "null":
        if value is not None:
            raise EventProblem(path, f"expected null, got {_kind(value)}")
        return None
    if kind == "bytes":
        return _bytes(value, path)
    raise EventProblem(path, f"the schema's type {kind} is not known here")


def _bytes(value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise EventProblem(path, f"expected base64 text, got {_kind(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventProblem(path, "is not base64") from exc


def _timestamp(value: Any, path: str) -> datetime:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise EventProblem(path, f"{value} ms is not a time") from exc
    if not isinstance(value, str):
        raise EventProblem(path, f"expected an ISO 8601 time with its offset, or milliseconds, got {_kind(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise EventProblem(path, f"{value[:40]!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise EventProblem(path, f"{value[:40]!r} has no offset: add Z or +hh:mm (the time must say where it was)")
    return moment.astimezone(UTC)


def _decimal(value: Any, path: str, schema: dict[str, Any]) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EventProblem(path, f"expected a decimal as a string (\"12.50\"), got {_kind(value)}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation as exc:
        raise EventProblem(path, f"{str(value)[:40]!r} is not a decimal number") from exc
    if not amount.is_finite():
        raise EventProblem(path, f"{value!r} is not a finite number")
    scale, precision = schema.get("scale", 0), schema.get("precision", 38)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > scale:
        raise EventProblem(path, f"{value} has more than {scale} decimal places")
    quantized = amount.quantize(Decimal(1).scaleb(-scale))
    if len(quantized.as_tuple().digits) > precision:
        raise EventProblem(path, f"{value} has more than {precision} digits")
    return quantized


def event_json(event_id: str, order_id: str, occurred_at: datetime, type_name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An event in the JSON form ``envelope_record`` takes: what a webhook sender writes."""
    return {"event_id": event_id, "order_id": order_id, "occurred_at": _plain(occurred_at),
            "type": type_name.rsplit(".", 1)[-1], "payload": _plain(payload)}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
