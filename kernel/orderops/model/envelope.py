"""The envelope every order-scoped event carries, as a plain value (no Kafka, no Avro here),
and a lossless JSON form for keeping values with Decimals and datetimes in tables."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import orjson


class StoredAsJson:
    """A value a table keeps as JSON (``to_json``). A subclass says what it is as plain values
    (``json_value``: Decimals and datetimes as they are); the table's text is then written in one
    orjson pass (``to_json_bytes``), not walked into tagged values and encoded again."""

    def json_value(self) -> Any:
        raise NotImplementedError

    def to_json(self) -> Any:
        return to_json(self.json_value())

    def to_json_bytes(self) -> bytes:
        return to_json_bytes(self.json_value())


@dataclass(frozen=True)
class Envelope(StoredAsJson):
    event_id: str
    order_id: str
    occurred_at: datetime
    source: str
    type: str  # full Avro name of the payload, e.g. orderops.payments.PaymentCaptured
    payload: dict[str, Any]
    # For a record another processor derived from an event this processor also reads: that event's
    # topic (from the record's header, see orderops.model.workflow.cause_pending). Not part of the Avro.
    cause_topic: str | None = None

    @property
    def short_type(self) -> str:
        return _short_type(self.type)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Envelope:
        type_name, payload = record["payload"]
        return cls(record["event_id"], record["order_id"], record["occurred_at"], record["source"], type_name, payload)

    def to_record(self) -> dict[str, Any]:
        return as_record(self.event_id, self.order_id, self.occurred_at, self.source, self.type, self.payload)

    def json_value(self) -> dict[str, Any]:
        extra = {"cause_topic": self.cause_topic} if self.cause_topic else {}
        return {**self.to_record(), "payload": {"type": self.type, "value": self.payload}, **extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        record = from_json(data)
        return cls(record["event_id"], record["order_id"], record["occurred_at"], record["source"],
                   record["payload"]["type"], record["payload"]["value"], record.get("cause_topic"))

    @property
    def cause_id(self) -> str | None:
        return cause_of(self.event_id, self.source)


@functools.lru_cache(maxsize=1024)  # a few dozen event types, asked several times per event
def _short_type(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def as_record(event_id: str, order_id: str, occurred_at: datetime, source: str, type_name: str,
              payload: dict[str, Any]) -> dict[str, Any]:
    """An envelope as its Avro record (the payload union's value as (type name, payload)); processors
    make one per output without building the Envelope first."""
    return {"event_id": event_id, "order_id": order_id, "occurred_at": occurred_at, "source": source,
            "payload": (type_name, payload)}


def cause_of(event_id: str, writer: str) -> str | None:
    """For a record derived by a processor (id ``<cause id>:<processor>:<kind>:<n>``): its cause's id."""
    marker = f":{writer}:"
    return event_id.split(marker, 1)[0] if marker in event_id else None


def to_json(value: Any) -> Any:
    """Decimals and datetimes as tagged strings, so ``from_json`` restores them exactly.

    Every processor stores its whole state this way at every event: the walk is orjson's (in Rust),
    not Python's, which took a fifth of the timeline's time. Values orjson refuses (keys
    that are not strings, integers beyond 64 bits) take the Python walk, to the same result.
    """
    try:
        return orjson.loads(orjson.dumps(value, default=_tagged, option=orjson.OPT_PASSTHROUGH_DATETIME))
    except TypeError:
        return _to_json(value)


# How Faust's JSON codec calls orjson (faust.utils.json.dumps): the same bytes without importing Faust here.
FAUST_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


def to_json_bytes(value: Any) -> bytes:
    """``to_json(value)`` as the JSON text a table stores, byte for byte what Faust's JSON codec
    writes of it, without building the tagged Python value first and encoding it again (a tenth of
    the timeline's time was its view's ``to_json``). A table takes it as it is
    (orderops.service: PreEncodedJson)."""
    try:
        return orjson.dumps(value, default=_tagged, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError:
        return orjson.dumps(_to_json(value), option=FAUST_JSON_OPTIONS)


def _tagged(value: Any) -> Any:
    """orjson's hook for what it does not write itself (or is told to pass through)."""
    if isinstance(value, Decimal | datetime):
        return _tag(value)
    if isinstance(value, date | time):
        return value.isoformat()  # as orjson writes them, had they not been passed through
    raise TypeError(f"{type(value).__name__} is not JSON")


def _tag(value: Decimal | datetime) -> dict[str, str]:
    return {"$decimal": str(value)} if isinstance(value, Decimal) else {"$datetime": value.isoformat()}


def _to_json(value: Any) -> Any:
    if isinstance(value, Decimal | datetime):
        return _tag(value)
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            if "$decimal" in value:
                return Decimal(value["$decimal"])
            if "$datetime" in value:
                return datetime.fromisoformat(value["$datetime"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
