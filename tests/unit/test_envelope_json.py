"""The JSON form every processor keeps its state in (orderops.model.envelope.to_json / from_json)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import orjson
from faust.serializers import codecs

from orderops.model.catalog import PAYMENTS_EVENTS
from orderops.model.envelope import Envelope, _to_json, from_json, to_json, to_json_bytes
from orderops.model.workflow import Parked
from orderops.service import TABLE_VALUE_CODEC

STATE = {
    "order_id": "o-1", "total": Decimal("19.990"), "placed_at": datetime(2026, 11, 26, 8, 0, 1, 250, tzinfo=UTC),
    "eta": datetime(2026, 12, 1, 9, tzinfo=timezone(timedelta(hours=-5))), "lines": ({"id": "l1", "n": 2}, ["x", 1.5]),
    "nested": {"deep": [{"at": datetime(2026, 1, 5, tzinfo=UTC), "amount": Decimal("-0.01")}], "none": None,
               "flag": True, "big": 2 ** 63 - 1},
}


def test_tagged_values_come_back_exactly():
    stored = to_json(STATE)
    assert stored["total"] == {"$decimal": "19.990"}
    assert stored["placed_at"] == {"$datetime": "2026-11-26T08:00:01.000250+00:00"}
    back = from_json(orjson.loads(orjson.dumps(stored)))
    assert back == {**STATE, "lines": [{"id": "l1", "n": 2}, ["x", 1.5]]}  # tuples are lists in JSON
    assert back["eta"].utcoffset() == timedelta(hours=-5) and str(back["total"]) == "19.990"


def test_orjson_walk_gives_what_the_python_walk_gives():
    assert to_json(STATE) == _to_json(STATE)
    assert to_json(date(2026, 1, 5)) == "2026-01-05"


def test_what_orjson_refuses_takes_the_python_walk():
    for value in ({1: Decimal("1")}, {"n": 2 ** 70, "at": datetime(2026, 1, 5, tzinfo=UTC)}):
        assert to_json(value) == _to_json(value)


def test_the_json_text_is_what_faust_writes_of_the_tagged_value():
    faust_json = codecs.get_codec("json")
    for value in (STATE, {1: Decimal("1"), "at": date(2026, 1, 5)}, [STATE, None]):
        assert to_json_bytes(value) == faust_json.dumps(to_json(value))  # the changelogs' bytes do not change


def test_a_table_stores_json_text_as_it_is_and_reads_it_parsed():
    table_codec = codecs.get_codec(TABLE_VALUE_CODEC)
    text = to_json_bytes(STATE)
    assert table_codec.dumps(text) is text
    assert table_codec.dumps(to_json(STATE)) == text  # a value not yet encoded: Faust's JSON, as before
    assert table_codec.loads(text) == to_json(STATE)


def test_a_stored_value_is_written_in_one_pass_as_faust_would_write_its_tagged_form():
    event = Envelope("e-1", "o-1", datetime(2026, 11, 26, 8, 0, 1, 250, tzinfo=UTC), "payments",
                     "orderops.payments.PaymentCaptured", {"amount": Decimal("19.990"), "lines": ["l1", "l2"]},
                     PAYMENTS_EVENTS.name)
    parked = Parked(event, PAYMENTS_EVENTS.name, "payment", "card-1", "authorization", datetime(2026, 11, 27, tzinfo=UTC))
    faust_json = codecs.get_codec("json")
    # What the processors stored before: the event tagged, then the parked event around it tagged again.
    nested = to_json({**vars(parked), "event": event.to_json()})
    assert parked.to_json() == nested
    assert parked.to_json_bytes() == faust_json.dumps(nested)  # the changelogs' bytes do not change
    assert Parked.from_json(orjson.loads(parked.to_json_bytes())) == parked
