"""The event contract: every ``schemas/*.avsc`` file, one named type per file.

A file's name is the full name of the type it defines; types refer to each other by full name.
The registry expands those references so that any named type can be used as a complete, stand-
alone Avro schema (for encoding, decoding and fingerprinting).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from orderops.ops.paths import source_root

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class SchemaError(Exception):
    """A schema file is missing, malformed, or refers to a type that does not exist."""


def default_schemas_dir() -> Path:
    """``ORDEROPS_SCHEMAS_DIR`` if set, else the ``schemas/`` folder of the source tree."""
    configured = os.environ.get("ORDEROPS_SCHEMAS_DIR")
    if configured:
        return Path(configured)
    root = source_root()
    if root is not None:
        return root / "schemas"
    raise SchemaError("cannot find the schemas/ folder: set ORDEROPS_SCHEMAS_DIR to its path")


def full_name(schema: dict[str, Any]) -> str:
    name = schema["name"]
    if "." in name or not schema.get("namespace"):
        return str(name)
    return f"{schema['namespace']}.{name}"


def crc64_avro(canonical_form: str) -> bytes:
    """CRC-64-AVRO (the Rabin fingerprint of the Avro specification) of a schema's parsing canonical
    form, as single-object encoding writes it: 8 bytes, little-endian (fastavro's own)."""
    return bytes.fromhex(fingerprint(canonical_form, "CRC-64-AVRO"))


@dataclass(frozen=True)
class ResolvedSchema:
    """A named type with every reference expanded: usable on its own."""

    name: str
    schema: dict[str, Any]

    @cached_property
    def parsed(self) -> Any:
        return parse_schema(self.schema, _write_hint=False)

    @cached_property
    def compiled(self) -> Any:
        """Parsed once for fastavro's reader and writer. Given ``parsed`` (no hint), they parse the
        schema again at every call: two thirds of a decode's time and most of an encode's."""
        return parse_schema(self.schema)

    @cached_property
    def has_named_union(self) -> bool:
        """Whether a union anywhere in it has two or more named branches (records, enums, fixed):
        only such a union's value needs its branch's name to be told apart."""
        return _has_named_union(self.schema)

    @cached_property
    def canonical_form(self) -> str:
        return str(to_parsing_canonical_form(self.parsed))

    @cached_property
    def fingerprint(self) -> bytes:
        """The 8 bytes single-object encoding puts after ``C3 01``: CRC-64-AVRO, little-endian."""
        return crc64_avro(self.canonical_form)


def _has_named_union(schema: Any) -> bool:
    if isinstance(schema, list):
        named = [b for b in schema if (isinstance(b, dict) and b.get("type") in ("record", "enum", "fixed"))
                 or (isinstance(b, str) and b not in PRIMITIVES)]
        return len(named) > 1 or any(_has_named_union(b) for b in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            return any(_has_named_union(f["type"]) for f in schema["fields"])
        if kind == "array":
            return _has_named_union(schema["items"])
        if kind == "map":
            return _has_named_union(schema["values"])
        return isinstance(kind, list | dict) and _has_named_union(kind)
    return False


class SchemaRegistry:
    """All named types of a schemas folder, plus frozen historical writer schemas.

    ``fingerprints/`` holds every writer schema that ever shipped, so a
    reader can still decode what an older (or newer) writer wrote: the fingerprint in a message
    names its writer schema without a registry service.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_schemas_dir()
        self.sources: dict[str, dict[str, Any]] = {}
        for path in sorted(self.directory.glob("*.avsc")):
            try:
                schema = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{path}: not valid JSON: {exc}") from exc
            name = full_name(schema)
            if path.stem != name:
                raise SchemaError(f"{path}: defines {name}; the file must be named {name}.avsc")
            self.sources[name] = schema
        self._resolved: dict[str, ResolvedSchema] = {}
        self._writers: dict[bytes, ResolvedSchema] | None = None

    def names(self) -> list[str]:
        return sorted(self.sources)

    def get(self, name: str) -> ResolvedSchema:
        if name not in self._resolved:
            if name not in self.sources:
                raise SchemaError(f"no schema named {name} in {self.directory}")
            expanded = _expand(self.sources[name], self.sources, set(), name)
            self._resolved[name] = ResolvedSchema(name, expanded)
        return self._resolved[name]

    def dependencies(self, name: str) -> set[str]:
        """Named types that ``name`` uses, directly or not (itself excluded)."""
        found: set[str] = set()
        _collect_refs(self.sources[name], found, self.sources)
        found.discard(name)
        return found

    @property
    def frozen_dir(self) -> Path:
        return self.directory / "fingerprints"

    def frozen(self) -> dict[bytes, ResolvedSchema]:
        """Writer schemas recorded under ``fingerprints/``, by fingerprint."""
        frozen: dict[bytes, ResolvedSchema] = {}
        for path in sorted(self.frozen_dir.glob("*.json")) if self.frozen_dir.is_dir() else []:
            schema = json.loads(path.read_text())
            resolved = ResolvedSchema(full_name(schema), schema)
            frozen[resolved.fingerprint] = resolved
        return frozen

    def writer_schemas(self) -> dict[bytes, ResolvedSchema]:
        """Every writer schema a message may name: historical (frozen) ones and current ones."""
        if self._writers is None:
            self._writers = self.frozen() | {self.get(n).fingerprint: self.get(n) for n in self.names()}
        return self._writers

    def freeze(self, names: list[str]) -> list[Path]:
        """Record these writer schemas under ``fingerprints/``, fully expanded.

        Not the Parsing Canonical Form: that drops logical types and defaults, and a writer
        read back from it would decode money as raw bytes. The file name carries the fingerprint
        of the canonical form, which is what messages name.
        """
        self.frozen_dir.mkdir(exist_ok=True)
        written = []
        for name in names:
            resolved = self.get(name)
            path = self.frozen_dir / f"{resolved.name}-{resolved.fingerprint.hex()}.json"
            if not path.exists():
                path.write_text(json.dumps(resolved.schema, indent=1) + "\n")
                written.append(path)
        self._writers = None
        return written


def _expand(node: Any, sources: dict[str, dict[str, Any]], defined: set[str], context: str) -> Any:
    """Inline named-type references: the first use is expanded, later uses stay by name."""
    if isinstance(node, str):
        if node in PRIMITIVES:
            return node
        if node in defined:
            return node
        if node not in sources:
            raise SchemaError(f"{context}: refers to unknown type {node!r}")
        return _expand(sources[node], sources, defined, context)
    if isinstance(node, list):
        return [_expand(branch, sources, defined, context) for branch in node]
    if isinstance(node, dict):
        kind = node.get("type")
        if kind in ("record", "error"):
            defined.add(full_name(node))
            out = dict(node)
            out["fields"] = [
                {**fld, "type": _expand(fld["type"], sources, defined, context)} for fld in node["fields"]
            ]
            return out
        if kind in ("enum", "fixed"):
            defined.add(full_name(node))
            return dict(node)
        if kind == "array":
            return {**node, "items": _expand(node["items"], sources, defined, context)}
        if kind == "map":
            return {**node, "values": _expand(node["values"], sources, defined, context)}
        return {**node, "type": _expand(kind, sources, defined, context)}
    raise SchemaError(f"{context}: unexpected schema node {node!r}")


def _collect_refs(node: Any, found: set[str], sources: dict[str, dict[str, Any]]) -> None:
    if isinstance(node, str):
        if node not in PRIMITIVES and node not in found and node in sources:
            found.add(node)
            _collect_refs(sources[node], found, sources)
    elif isinstance(node, list):
        for branch in node:
            _collect_refs(branch, found, sources)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in ("record", "error"):
            for fld in node["fields"]:
                _collect_refs(fld["type"], found, sources)
        elif kind == "array":
            _collect_refs(node["items"], found, sources)
        elif kind == "map":
            _collect_refs(node["values"], found, sources)
        elif not isinstance(kind, str) or kind not in ("enum", "fixed"):
            _collect_refs(kind, found, sources)
