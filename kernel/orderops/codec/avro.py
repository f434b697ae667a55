"""Avro with its writer schema named in every message, in either of two framings.

- Single-object encoding (the Avro specification's): ``C3 01`` + the writer schema's CRC-64-AVRO
  fingerprint (little-endian) + body. A reader knows the writer schemas it was built with and
  every released one (``schemas/fingerprints/``); any other is an unknown writer. Schemas evolve
  without a registry service: readers ship first.
- Confluent framing: ``00`` + the schema id (4 bytes, big-endian) + body, the schema kept in a
  Schema Registry (orderops.codec.registry). A reader fetches a writer schema it has not seen
  from the registry, so an upstream team may add an optional field before every reader ships.

Either way the body is resolved from the writer's schema to the one the reader was built with.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from orderops.codec.registry import RegistryError, SchemaRegistryClient
from orderops.codec.schemas import ResolvedSchema, SchemaRegistry
from orderops.model.envelope import Envelope

__all__ = [
    "Codec",
    "DecodeError",
    "Decoded",
    "EncodeError",
    "Envelope",
    "Head",
    "KeyNotOrderId",
    "NotSingleObjectEncoded",
    "SchemaMismatch",
    "UnknownFingerprint",
    "WriterSchemaUnavailable",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_SIZE = 5
FRAMINGS = ("single-object", "confluent")


class DecodeError(Exception):
    """Bytes that cannot become an event. ``reason`` is a stable code for dead-letter headers."""

    reason = "undecodable"


class NotSingleObjectEncoded(DecodeError):
    reason = "not-single-object-encoded"


class UnknownFingerprint(DecodeError):
    reason = "unknown-writer-schema"


class SchemaMismatch(DecodeError):
    reason = "body-does-not-match-schema"


class WriterSchemaUnavailable(DecodeError):
    """A Confluent-framed message whose schema id the registry could not give (unknown id, the
    registry down, none configured): ``reason`` says which."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyNotOrderId(DecodeError):
    """A message of an order-scoped topic keyed by something else than its envelope's order id: the
    key decides the partition, so the order's events would meet different state, or another worker."""

    reason = "key-is-not-the-order-id"


class EncodeError(Exception):
    """A record that does not fit its schema: a programming error in the writing service."""


@dataclass(frozen=True)
class Decoded:
    """A decoded record and the schema that wrote it."""

    writer: str
    record: dict[str, Any]


@dataclass(frozen=True)
class Head:
    """What comes first in an envelope's body: its ids, source and payload type."""

    event_id: str
    order_id: str
    source: str
    type: str  # the payload's full type name


ENVELOPE_HEAD = (("event_id", "string"), ("order_id", "string"), ("occurred_at", "long"), ("source", "string"))


class Codec:
    def __init__(self, registry: SchemaRegistry | None = None,
                 schema_registry: SchemaRegistryClient | None = None) -> None:
        """``schema_registry``: the Schema Registry of the Confluent framing (default: the one
        ``ORDEROPS_SCHEMA_REGISTRY_URL`` names, if any)."""
        self.registry = registry or SchemaRegistry()
        self.schema_registry = schema_registry if schema_registry is not None else SchemaRegistryClient.from_env()
        self._payload_types: dict[str, str] = {}
        # writer fingerprint -> the payload's branch names and whether it is a union (an index first); None: not an envelope
        self._payload_branches: dict[bytes, tuple[tuple[str, ...], bool] | None] = {}

    def encode(self, schema_name: str, record: dict[str, Any]) -> bytes:
        schema = self.registry.get(schema_name)
        return self._framed(MAGIC + schema.fingerprint, schema, record)

    def encode_confluent(self, topic: str, schema_name: str, record: dict[str, Any]) -> bytes:
        """``record`` in the Confluent framing, its schema registered under the topic's subject."""
        if self.schema_registry is None:
            raise EncodeError("the Confluent framing needs a Schema Registry: set ORDEROPS_SCHEMA_REGISTRY_URL")
        schema = self.registry.get(schema_name)
        header = bytes([CONFLUENT_MAGIC]) + self.schema_registry.id_of(topic, schema).to_bytes(4, "big")
        return self._framed(header, schema, record)

    @staticmethod
    def _framed(header: bytes, schema: ResolvedSchema, record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, schema.compiled, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(f"record does not fit {schema.name}: {exc}") from exc
        return out.getvalue()

    def encode_framed(self, framing: str, topic: str, schema_name: str, record: dict[str, Any]) -> bytes:
        """``record`` in ``framing`` (one of FRAMINGS)."""
        if framing == "confluent":
            return self.encode_confluent(topic, schema_name, record)
        return self.encode(schema_name, record)

    def decode(self, data: bytes | None, reader_name: str) -> Decoded:
        data = _present(data)
        writer, start = self._writer_and_start(data)
        reader = self.registry.get(reader_name)
        stream = io.BytesIO(data)
        stream.seek(start)
        try:
            same = writer.fingerprint == reader.fingerprint
            if same and not writer.has_named_union:
                # Nothing to name: the options below would change nothing, and cost a sixth of a decode.
                record = schemaless_reader(stream, writer.compiled, None)
            else:
                record = schemaless_reader(
                    stream,
                    writer.compiled,
                    None if same else reader.compiled,
                    # Unions of several records come back as (full name, record); a nullable union
                    # returns the plain value. A one-branch envelope payload is named again below.
                    return_record_name=True,
                    return_record_name_override=True,
                    return_named_type_override=True,
                )
        except Exception as exc:  # fastavro raises many types for garbage bodies
            raise SchemaMismatch(
                f"body does not decode as {writer.name} (writer) read as {reader_name}: {type(exc).__name__}: {exc}"
            ) from exc
        if stream.tell() != len(data):
            raise SchemaMismatch(
                f"{len(data) - stream.tell()} bytes left over after decoding {writer.name}: body does not match its schema"
            )
        if not isinstance(record, dict):
            raise SchemaMismatch(f"{writer.name} decoded to {type(record).__name__}, expected a record")
        if isinstance(record.get("payload"), dict):
            # An envelope whose payload union has one event type: say which, like the others do.
            record["payload"] = (self._single_payload_type(reader_name), record["payload"])
        return Decoded(writer.name, record)

    def head(self, data: bytes | None) -> Head:
        """An envelope's event id, order id, source and payload type, read from the front of its body
        without decoding the payload: what a tool indexing millions of records needs of each (the
        rebuild, by event id). The writer schema must begin as every envelope does (``ENVELOPE_HEAD``,
        then ``payload``); anything else, or a body too short, is a DecodeError."""
        data = _present(data)
        writer, start = self._writer_and_start(data)
        if writer.fingerprint not in self._payload_branches:
            fields = writer.schema.get("fields") or []
            kinds = tuple((f["name"], f["type"] if isinstance(f["type"], str) else f["type"].get("type"))
                          for f in fields[:len(ENVELOPE_HEAD)])
            envelope = kinds == ENVELOPE_HEAD and len(fields) > len(ENVELOPE_HEAD) \
                and fields[len(ENVELOPE_HEAD)]["name"] == "payload"
            payload = fields[len(ENVELOPE_HEAD)]["type"] if envelope else None
            self._payload_branches[writer.fingerprint] = (_branch_names(payload), isinstance(payload, list)) \
                if envelope else None
        layout = self._payload_branches[writer.fingerprint]
        if layout is None:
            raise SchemaMismatch(f"{writer.name} is not an envelope (event_id, order_id, occurred_at, source, payload)")
        branches, union = layout
        try:
            event_id, at = _avro_string(data, start)
            order_id, at = _avro_string(data, at)
            _, at = _avro_long(data, at)
            source, at = _avro_string(data, at)
            branch = _avro_long(data, at)[0] if union else 0
            if not 0 <= branch < len(branches):
                raise IndexError(f"payload branch {branch} of {len(branches)}")
            return Head(event_id, order_id, source, branches[branch])
        except (IndexError, UnicodeDecodeError) as exc:
            raise SchemaMismatch(f"body too short or not UTF-8 where {writer.name}'s head is: {exc}") from exc

    def _single_payload_type(self, reader_name: str) -> str:
        if reader_name not in self._payload_types:
            payload = next(f for f in self.registry.get(reader_name).schema["fields"] if f["name"] == "payload")
            self._payload_types[reader_name] = _branch_names(payload["type"])[0]
        return self._payload_types[reader_name]

    def writer_of(self, data: bytes | None) -> ResolvedSchema:
        return self._writer_and_start(data)[0]

    def _writer_and_start(self, data: bytes | None) -> tuple[ResolvedSchema, int]:
        """The schema that wrote ``data``, and where its body starts."""
        if data is None:
            raise NotSingleObjectEncoded("message has no value (a tombstone or a null)")
        if len(data) > CONFLUENT_HEADER_SIZE and data[0] == CONFLUENT_MAGIC:
            return self._registered_writer(int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")), CONFLUENT_HEADER_SIZE
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise NotSingleObjectEncoded(
                f"value starts with neither the Avro single-object marker C3 01 nor the Confluent framing's 00 "
                f"(starts {data[:4].hex() or 'empty'})"
            )
        fingerprint = bytes(data[2:HEADER_SIZE])
        writer = self.registry.writer_schemas().get(fingerprint)
        if writer is None:
            raise UnknownFingerprint(
                f"no known writer schema has fingerprint {fingerprint.hex()}: a writer with a newer contract? "
                "Update this service's schemas/ (schemas/fingerprints/ holds every released writer schema)"
            )
        return writer, HEADER_SIZE

    def _registered_writer(self, schema_id: int) -> ResolvedSchema:
        if self.schema_registry is None:
            raise WriterSchemaUnavailable(
                f"value is in the Confluent framing (schema id {schema_id}) but no Schema Registry is configured: "
                "set ORDEROPS_SCHEMA_REGISTRY_URL and re-drive it", "no-schema-registry")
        try:
            found = self.schema_registry.schema(schema_id)
        except RegistryError as exc:
            raise WriterSchemaUnavailable(str(exc), exc.reason) from exc
        # A registered schema that is one of ours is ours (its compiled form and fast path, once).
        return self.registry.writer_schemas().get(found.fingerprint, found)


def _present(data: bytes | None) -> bytes:
    if data is None:
        raise NotSingleObjectEncoded("message has no value (a tombstone or a null)")
    return data


def _branch_names(union: Any) -> tuple[str, ...]:
    """The full names of a union's branches (or of the one type that is not a union)."""
    def full(branch: dict[str, Any] | str) -> str:
        if isinstance(branch, str):
            return branch
        name = branch["name"]
        return name if "." in name or not branch.get("namespace") else f"{branch['namespace']}.{name}"
    return tuple(full(b) for b in (union if isinstance(union, list) else [union]))


def _avro_long(data: bytes, at: int) -> tuple[int, int]:
    """A zig-zag varint (Avro int and long) at ``at``, and where the next value starts."""
    byte = data[at]
    value, shift, at = byte & 0x7F, 7, at + 1
    while byte & 0x80:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        shift, at = shift + 7, at + 1
    return (value >> 1) ^ -(value & 1), at


def _avro_string(data: bytes, at: int) -> tuple[str, int]:
    size, at = _avro_long(data, at)
    if size < 0 or at + size > len(data):
        raise IndexError(f"a string of {size} bytes at {at} in {len(data)}")
    return data[at:at + size].decode(), at + size
