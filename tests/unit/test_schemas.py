"""The event contract: every schema loads, follows the naming rules, and is frozen."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from orderops.codec.schemas import SchemaError, SchemaRegistry, crc64_avro
from orderops.model import catalog
from orderops.ops.cli import main as cli
from orderops.ops.cli import writer_schema_names

REGISTRY = SchemaRegistry()
ENVELOPE_FIELDS = ["event_id", "order_id", "occurred_at", "source", "payload"]


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_schema_parses_stand_alone(name):
    resolved = REGISTRY.get(name)
    assert resolved.parsed
    assert len(resolved.fingerprint) == 8


@pytest.mark.parametrize("name", REGISTRY.names())
def test_one_documented_named_type_per_file(name):
    source = REGISTRY.sources[name]
    assert source["type"] in ("record", "enum"), name
    assert source.get("doc"), f"{name} needs a doc string: the contract is read by other teams"
    assert name.startswith("orderops.")


def test_every_order_scoped_topic_carries_the_envelope():
    for topic in catalog.DATA_TOPICS:
        if not topic.order_scoped:
            continue
        fields = REGISTRY.sources[topic.value_schema]["fields"]
        assert [f["name"] for f in fields] == ENVELOPE_FIELDS, topic.name
        occurred_at = fields[2]["type"]
        assert occurred_at == {"type": "long", "logicalType": "timestamp-millis"}
        assert isinstance(fields[4]["type"], list), f"{topic.name}: the payload is a union of event types"


def test_money_is_a_decimal_with_currency_never_a_float():
    money = REGISTRY.sources["orderops.common.Money"]
    amount = next(f for f in money["fields"] if f["name"] == "amount")
    assert amount["type"]["logicalType"] == "decimal"
    currency = next(f for f in money["fields"] if f["name"] == "currency")
    assert currency["type"] == "string"
    for name, source in REGISTRY.sources.items():
        assert '"float"' not in json.dumps(source) and '"double"' not in json.dumps(source), name


def test_every_enum_has_a_default_so_new_symbols_do_not_break_old_readers():
    for name, source in REGISTRY.sources.items():
        if source["type"] == "enum":
            assert source.get("default") in source["symbols"], name


def test_every_writer_schema_is_frozen_so_readers_can_resolve_it_later():
    frozen = REGISTRY.frozen()
    missing = [n for n in writer_schema_names() if REGISTRY.get(n).fingerprint not in frozen]
    assert not missing, f"run `orderops schemas freeze` and commit schemas/fingerprints/: {missing}"
    assert cli(["schemas", "check"]) == 0


def test_crc64_avro_matches_the_specification():
    # The Avro specification's reference fingerprint of the schema "null".
    assert crc64_avro('"null"') == (0x63DD24E7CC258F8A).to_bytes(8, "little")


def test_file_name_must_be_the_full_name(tmp_path):
    (tmp_path / "orderops.x.Wrong.avsc").write_text(json.dumps(
        {"type": "record", "name": "Right", "namespace": "orderops.x", "fields": []}))
    with pytest.raises(SchemaError, match="must be named orderops.x.Right.avsc"):
        SchemaRegistry(tmp_path)


def test_unknown_reference_is_reported_with_its_context(tmp_path):
    (tmp_path / "orderops.x.A.avsc").write_text(json.dumps(
        {"type": "record", "name": "A", "namespace": "orderops.x", "fields": [{"name": "b", "type": "orderops.x.B"}]}))
    with pytest.raises(SchemaError, match="unknown type 'orderops.x.B'"):
        SchemaRegistry(tmp_path).get("orderops.x.A")


def test_decimal_precision_is_enough_for_order_totals():
    amount = REGISTRY.get("orderops.common.Money").schema["fields"][0]["type"]
    largest = Decimal(10) ** (amount["precision"] - amount["scale"]) - 1
    assert largest >= Decimal("999999999999"), "money must hold totals up to a trillion"
