"""Avro schema resolution rules (specification, "Schema Resolution"), as a checker.

``problems(writer, reader)`` lists why data written with ``writer`` could not be read with
``reader``. A schema change is compatible both ways when neither direction has problems: old
readers read new data (forward) and new readers read old data (backward).
Inputs are expanded schemas (``ResolvedSchema.schema``): named types inline at first use.
"""

from __future__ import annotations

from typing import Any

PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def problems(writer: Any, reader: Any) -> list[str]:
    found: list[str] = []
    _check(writer, reader, _Names(), _Names(), "", found)
    return found


class _Names(dict[str, Any]):
    """Named types seen so far while walking a schema, so references can be followed."""

    def resolve(self, node: Any) -> Any:
        if isinstance(node, str) and node in self:
            return self[node]
        if isinstance(node, dict) and node.get("type") in ("record", "error", "enum", "fixed"):
            self[_full_name(node)] = node
            if node.get("type") in ("record", "error"):
                for field in node["fields"]:
                    self._register(field["type"])
        return node

    def _register(self, node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                self._register(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                self.resolve(node)
            elif kind == "array":
                self._register(node["items"])
            elif kind == "map":
                self._register(node["values"])


def _full_name(node: dict[str, Any]) -> str:
    name = node["name"]
    return name if "." in name or not node.get("namespace") else f"{node['namespace']}.{name}"


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, dict):
        kind = node["type"]
        return kind if isinstance(kind, str) and kind in {"record", "error", "enum", "fixed", "array", "map"} else _kind(kind)
    return str(node)


def _logical(node: Any) -> tuple[Any, ...] | None:
    if isinstance(node, dict) and node.get("logicalType") == "decimal":
        return ("decimal", node.get("precision"), node.get("scale", 0))
    return None


def _check(writer: Any, reader: Any, wnames: _Names, rnames: _Names, path: str, found: list[str]) -> None:
    writer, reader = wnames.resolve(writer), rnames.resolve(reader)
    wk, rk = _kind(writer), _kind(reader)
    where = path or "<root>"
    if wk == "union":
        for branch in writer:
            if rk == "union":
                if not any(_matches(wnames.resolve(branch), rnames.resolve(r)) for r in reader):
                    found.append(f"{where}: writer union branch {_describe(branch)} has no counterpart in the reader union")
                    continue
                target = next(r for r in reader if _matches(wnames.resolve(branch), rnames.resolve(r)))
                _check(branch, target, wnames, rnames, path, found)
            else:
                _check(branch, reader, wnames, rnames, path, found)
        return
    if rk == "union":
        target = next((r for r in reader if _matches(writer, rnames.resolve(r))), None)
        if target is None:
            found.append(f"{where}: writer type {_describe(writer)} matches no branch of the reader union")
            return
        _check(writer, target, wnames, rnames, path, found)
        return
    if not _matches(writer, reader):
        found.append(f"{where}: writer {_describe(writer)} cannot be read as {_describe(reader)}")
        return
    if _logical(writer) != _logical(reader):
        found.append(f"{where}: logical type changed from {_logical(writer)} to {_logical(reader)}")
    if wk in ("record", "error"):
        wfields = {f["name"]: f for f in writer["fields"]}
        for rfield in reader["fields"]:
            names = [rfield["name"], *rfield.get("aliases", [])]
            wfield = next((wfields[n] for n in names if n in wfields), None)
            if wfield is None:
                if "default" not in rfield:
                    found.append(f"{path}.{rfield['name']}: reader field has no default and the writer does not write it")
                continue
            _check(wfield["type"], rfield["type"], wnames, rnames, f"{path}.{rfield['name']}", found)
    elif wk == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            found.append(f"{where}: enum symbols {missing} unknown to the reader, which has no default symbol")
    elif wk == "fixed":
        if writer["size"] != reader["size"]:
            found.append(f"{where}: fixed size changed from {writer['size']} to {reader['size']}")
    elif wk == "array":
        _check(writer["items"], reader["items"], wnames, rnames, f"{path}[]", found)
    elif wk == "map":
        _check(writer["values"], reader["values"], wnames, rnames, f"{path}{{}}", found)


def _matches(writer: Any, reader: Any) -> bool:
    wk, rk = _kind(writer), _kind(reader)
    if wk in ("record", "error", "enum", "fixed") or rk in ("record", "error", "enum", "fixed"):
        if wk != rk:
            return False
        return _full_name(writer) == _full_name(reader) or _full_name(writer) in _aliases(reader)
    if wk in ("array", "map"):
        return wk == rk
    return wk == rk or rk in PROMOTIONS.get(wk, set())


def _aliases(node: dict[str, Any]) -> set[str]:
    namespace = node.get("namespace")
    return {a if "." in a or not namespace else f"{namespace}.{a}" for a in node.get("aliases", [])}


def _describe(node: Any) -> str:
    if isinstance(node, dict) and "name" in node:
        return f"{node['type']} {_full_name(node)}"
    if isinstance(node, dict):
        return _describe(node["type"]) if not isinstance(node["type"], str) else str(node["type"])
    return str(node)
