"""orderops.model.contract: upstream events that fit their schema but mean nothing are rejected by every
state machine with a precise code, before any handler can change an order."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from fulfillment import domain as fulfillment
from order_state import domain as order_state
from orderops.model import contract
from orderops.model.catalog import FULFILLMENT_STATE_CHANGES, PAYMENTS_EVENTS, STOREFRONT_ORDERS
from orderops.model.envelope import Envelope
from orderops.model.workflow import Rejected

PLACED_AT = datetime(2026, 11, 2, 9, tzinfo=UTC)


def money(amount: str, currency: str = "EUR") -> dict:
    return {"amount": Decimal(amount), "currency": currency}


def order_placed(**changes) -> Envelope:
    line = {"line_id": "l1", "sku": "SKU-1", "name": "Mug", "category": "home", "quantity": 2,
            "unit_price": money("9.5000"), "final_sale": False}
    payload = {"customer": {"customer_id": "c1", "name": "Ann", "email": "ann@example.com"},
               "lines": [{**line, **changes.pop("line", {})}], "total": money("19.0000"),
               "instruments": [], **changes.pop("payload", {})}
    return Envelope("e1", "o1", changes.pop("occurred_at", PLACED_AT), "storefront", "orderops.storefront.OrderPlaced",
                    payload)


@pytest.mark.parametrize(("event", "code", "says"), [
    (order_placed(line={"quantity": -3}), "quantity_out_of_range", "lines[0].quantity is -3"),
    (order_placed(line={"quantity": 10**9}), "quantity_out_of_range", "a quantity is 1 to 10000"),
    (order_placed(line={"quantity": 0}), "quantity_out_of_range", "lines[0].quantity is 0"),
    (order_placed(line={"unit_price": money("-1")}), "amount_out_of_range", "lines[0].unit_price is -1 EUR"),
    (order_placed(line={"unit_price": money("9.5000", "USD")}), "currency_mismatch", "EUR, USD"),
    (order_placed(line={"unit_price": money("9.5", "euro")}, payload={"total": money("19", "euro")}), "currency_mismatch",
     "not an ISO 4217 code"),
    (order_placed(line={"name": "x" * 5000}), "text_too_long", "lines[0].name has 5000 characters"),
    (order_placed(occurred_at=datetime(1970, 1, 1, tzinfo=UTC)), "implausible_event_time", "before 2000"),
    # Values straight inside an array are checked too (the walk reaches every value).
    (order_placed(payload={"gift_notes": ["ok", "x" * 3000]}), "text_too_long", "gift_notes[1] has 3000 characters"),
    (order_placed(payload={"instruments": [money("-2")]}), "amount_out_of_range", "instruments[0] is -2 EUR"),
])
def test_each_check_names_what_is_wrong(event, code, says):
    found = contract.violation(event, PLACED_AT)
    assert found is not None and found[0] == code and says in found[1], found


def test_a_valid_event_passes_and_time_is_judged_against_the_order():
    assert contract.violation(order_placed(), PLACED_AT) is None
    late = order_placed(occurred_at=PLACED_AT + timedelta(days=401))
    assert contract.violation(late, PLACED_AT)[0] == "implausible_event_time"
    assert contract.violation(late, PLACED_AT + timedelta(days=2)) is None  # within 400 days of when it began
    assert contract.violation(late, None) is None  # nothing to judge it against


def test_only_what_upstream_systems_write_is_checked():
    assert contract.checks_topic(STOREFRONT_ORDERS.name) and contract.checks_topic(PAYMENTS_EVENTS.name)
    assert not contract.checks_topic(FULFILLMENT_STATE_CHANGES.name)  # written by fulfillment: this code
    assert not contract.checks_topic("no.such-topic")


@pytest.mark.parametrize("machine", [order_state, fulfillment], ids=["order-state", "fulfillment"])
def test_every_state_machine_rejects_a_meaningless_event_before_its_handlers(machine):
    now = PLACED_AT + timedelta(seconds=1)
    hostile = replace(order_placed(line={"quantity": -3}), event_id="hostile-1")
    outcome = machine.apply(None, hostile, STOREFRONT_ORDERS.name, now, timedelta(hours=1))
    rejected = outcome.of(Rejected)
    assert [(r.reason_code, r.machine, r.entity_id) for r in rejected] == [("quantity_out_of_range", "event", "hostile-1")]
    nothing = machine.apply(None, replace(hostile, type="orderops.storefront.NoSuchEvent"), STOREFRONT_ORDERS.name,
                            now, timedelta(hours=1)).state
    assert outcome.state == nothing  # no handler ran: the order was not placed, only the id is remembered
    assert "hostile-1" in outcome.state.seen  # and it is not judged twice
    assert machine.apply(outcome.state, hostile, STOREFRONT_ORDERS.name, now, timedelta(hours=1)).duplicate

    valid = machine.apply(outcome.state, order_placed(), STOREFRONT_ORDERS.name, now, timedelta(hours=1))
    assert replace(valid.state, seen=nothing.seen) != nothing and not valid.of(Rejected)  # the real order is placed


def test_only_http_and_https_links_with_a_host_are_kept():
    from orderops.model.contract import web_link

    assert web_link("https://track.example/JD1") == "https://track.example/JD1"
    assert web_link(" http://track.example/x ") == "http://track.example/x"
    for unsafe in ("javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<script>", "//evil.example/x",
                   "https:///nohost", "vbscript:x", "", None, "track.example/JD1"):
        assert web_link(unsafe) == "", unsafe
