"""Schema evolution rules: the checker itself, and every schema change in git history."""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from orderops.codec.compat import problems
from orderops.codec.schemas import SchemaRegistry

REPO = Path(__file__).resolve().parents[2]
CURRENT = SchemaRegistry()
ENVELOPE = CURRENT.get("orderops.storefront.OrderEvent").schema


def _changed(change) -> dict:
    schema = copy.deepcopy(ENVELOPE)
    change(schema)
    return schema


def _placed(schema) -> dict:
    return next(b for b in schema["fields"][4]["type"] if isinstance(b, dict) and b["name"] == "OrderPlaced")


def test_identical_schemas_are_compatible():
    for name in CURRENT.names():
        schema = CURRENT.get(name).schema
        assert problems(schema, schema) == []


def test_adding_a_field_with_default_is_compatible_both_ways():
    new = _changed(lambda s: _placed(s)["fields"].append({"name": "gift", "type": "string", "default": ""}))
    assert problems(ENVELOPE, new) == [] and problems(new, ENVELOPE) == []


def test_adding_a_field_without_default_breaks_old_data():
    new = _changed(lambda s: _placed(s)["fields"].append({"name": "gift", "type": "string"}))
    assert problems(new, ENVELOPE) == []
    assert any("gift" in p and "no default" in p for p in problems(ENVELOPE, new))


def test_changing_a_type_is_caught_with_its_path():
    def retype(schema):
        fields = _placed(schema)["fields"]
        fields[[f["name"] for f in fields].index("customer")]["type"] = "string"
    found = problems(ENVELOPE, _changed(retype))
    assert any(".payload.customer" in p for p in found), found


def test_changing_money_scale_is_caught():
    money = CURRENT.get("orderops.common.Money").schema
    rescaled = copy.deepcopy(money)
    rescaled["fields"][0]["type"]["scale"] = 2
    assert any("logical type" in p for p in problems(money, rescaled))


def test_promotions_follow_the_specification():
    record = {"type": "record", "name": "R", "fields": [{"name": "n", "type": "int"}]}
    widened = {"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}
    assert problems(record, widened) == []
    assert problems(widened, record) != []


def test_removing_a_union_branch_breaks_data_written_with_it():
    new = _changed(lambda s: s["fields"][4]["type"].pop())
    assert problems(new, ENVELOPE) == []
    assert any("no counterpart" in p for p in problems(ENVELOPE, new))


def test_enum_symbols_need_the_reader_default():
    old = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
    new = {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}
    assert problems(new, old) != []
    assert problems(new, {**old, "default": "A"}) == []


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def _previous_contract() -> tuple[str, SchemaRegistry] | None:
    """The most recent committed schemas/ that differs from the working tree's."""
    try:
        revisions = _git("log", "--format=%H", "--", "schemas").split()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    for revision in revisions:
        if _git("diff", "--stat", revision, "--", "schemas").strip():
            folder = Path(tempfile.mkdtemp(prefix="schemas-"))
            archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "schemas"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
            return revision, SchemaRegistry(folder / "schemas")
    return None


def test_every_schema_change_since_the_previous_commit_resolves_both_ways():
    previous = _previous_contract()
    if previous is None:
        pytest.skip("no earlier committed version of schemas/ differs from this one (or no git history)")
    revision, old = previous
    try:
        failures = []
        for name in old.names():
            if name not in CURRENT.sources:
                failures.append(f"{name}: removed, but data written with it may still be on the topics")
                continue
            before, after = old.get(name), CURRENT.get(name)
            if before.canonical_form == after.canonical_form:
                continue
            failures += [f"{name} old writer -> new reader: {p}" for p in problems(before.schema, after.schema)]
            failures += [f"{name} new writer -> old reader: {p}" for p in problems(after.schema, before.schema)]
        assert not failures, f"incompatible with schemas/ at {revision[:10]}:\n" + "\n".join(failures)
    finally:
        shutil.rmtree(old.directory.parent, ignore_errors=True)
