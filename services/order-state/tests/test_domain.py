"""order-state's domain, without a broker: the tables, the guards, parking, idempotency."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from stories import (
    ORDER_ID,
    T0,
    TRIGGER_EVENTS,
    auth_expired,
    auth_failed,
    authorized,
    cancelled,
    captured,
    chargeback,
    event,
    fulfillment,
    line_cancelled,
    placed,
    refunded,
)

from order_state import domain
from order_state.domain import OrderState, PaymentInstrument
from order_state.machines import BY_AMOUNT, ORDER, PAYMENT, RESUME
from orderops.model import workflow
from orderops.model.catalog import STOREFRONT_ORDERS
from orderops.model.workflow import ANY, CustomerNotice, ParkedRecord, Rejected, Transitioned

NOW = T0 + timedelta(hours=1)
PARK_FOR = timedelta(hours=24)
TOPIC = "input"


def run(*events, state=None, now=NOW):
    records = []
    for e in events:
        outcome = domain.apply(state, e, TOPIC, now, PARK_FOR)
        state = outcome.state
        records.extend(outcome.records)
        assert domain.violated_invariants(state) == []
    return state, records


def kinds(records, kind):
    return [r.what for r in records if isinstance(r.what, kind)]


# -- the tables as data ---------------------------------------------------------------------------

@pytest.mark.parametrize("machine", [ORDER, PAYMENT], ids=lambda m: m.name)
def test_every_pair_is_allowed_parked_or_rejected_and_terminal_states_have_no_exit(machine):
    for state in machine.states:
        for trigger in machine.triggers:
            target, waits = machine.next(state, trigger), machine.waits_for(state, trigger)
            assert not (target and waits), f"{state} + {trigger} is both allowed and parked"
            if state in machine.terminal:
                assert waits is None, f"terminal {state} must never park"
                assert target in (None, state), f"terminal {state} left by {trigger}"
    for _, _, target in machine.rows:
        assert target in machine.states or target in (RESUME, BY_AMOUNT)
    for state, trigger, _ in machine.parks:
        assert state == ANY or state in machine.states
        assert trigger == ANY or trigger in machine.triggers


def test_reversible_states_can_be_left():
    for machine in (ORDER, PAYMENT):
        for state in machine.reversible:
            assert any(s == state and n != state for s, _, n in machine.rows), state


# -- the payment table, driven through apply() for every (state, trigger) -------------------------

AMOUNTS = {  # (authorized, captured, refunded) that fit each payment state
    "pending": (0, 0, 0), "authorized": (100, 0, 0), "partially_captured": (100, 40, 0), "captured": (100, 100, 0),
    "partially_refunded": (100, 60, 30), "refunded": (100, 100, 100), "failed": (0, 0, 0),
    "auth_expired": (0, 0, 0), "voided": (0, 0, 0), "charged_back": (100, 100, 0),
}
BY_AMOUNT_RESULT = {  # what BY_AMOUNT rows resolve to, with the amounts above and 10 per event
    ("authorized", "captured"): "partially_captured", ("partially_captured", "captured"): "partially_captured",
    ("partially_captured", "auth_expired"): "captured", ("partially_captured", "voided"): "captured",
    ("partially_captured", "refunded"): "partially_refunded", ("captured", "refunded"): "partially_refunded",
    ("partially_refunded", "captured"): "partially_refunded", ("partially_refunded", "refunded"): "partially_refunded",
    ("partially_refunded", "auth_expired"): "partially_refunded", ("partially_refunded", "voided"): "partially_refunded",
}


def _order_with_payment(status: str) -> OrderState:
    state, _ = run(placed())
    a, c, r = (Decimal(x) for x in AMOUNTS[status])
    return state.with_instrument(replace(state.instrument("card-1"), status=status, authorized=a, captured=c, refunded=r))


@pytest.mark.parametrize("status", PAYMENT.states)
@pytest.mark.parametrize("trigger", PAYMENT.triggers)
def test_payment_table(status, trigger):
    state = _order_with_payment(status)
    outcome = domain.apply(state, TRIGGER_EVENTS[trigger](), TOPIC, NOW, PARK_FOR)
    after = outcome.state.instrument("card-1").status
    target = PAYMENT.next(status, trigger)
    if target is not None:
        expected = BY_AMOUNT_RESULT[(status, trigger)] if target == BY_AMOUNT else target
        assert after == expected
        assert not kinds(outcome.records, Rejected) and outcome.waiting is None
    elif PAYMENT.waits_for(status, trigger):
        assert after == status
        assert outcome.waiting.waiting_for == PAYMENT.waits_for(status, trigger)
    else:
        assert after == status
        [rejected] = kinds(outcome.records, Rejected)
        assert rejected.reason_code == "invalid_transition" and status in rejected.reason
    assert domain.violated_invariants(outcome.state) == []


# -- the order machine through events -------------------------------------------------------------

def test_happy_path_place_authorize_capture_ship_deliver():
    state, records = run(placed(), authorized(100), captured(100), fulfillment("shipped"), fulfillment("delivered", n=7))
    assert state.status == "completed" and state.completed_at == T0 + timedelta(minutes=7)
    order_moves = [(t.from_state, t.to_state) for t in kinds(records, Transitioned) if t.machine == "order"]
    assert order_moves == [("new", "pending_payment"), ("pending_payment", "confirmed"),
                           ("confirmed", "in_fulfillment"), ("in_fulfillment", "completed")]
    assert [n.type for n in kinds(records, CustomerNotice)] == ["order_confirmed"]
    payment = [t for t in kinds(records, Transitioned) if t.machine == "payment"]
    assert payment[-1].to_state == "captured" and payment[-1].detail.captured == Decimal(100)


def test_cash_on_delivery_is_confirmed_when_placed():
    state, records = run(placed(instruments=(("cod-1", "CASH_ON_DELIVERY", 100),)))
    assert state.status == "confirmed"
    assert [n.type for n in kinds(records, CustomerNotice)] == ["order_confirmed"]


def test_two_instruments_confirm_only_when_both_are_authorized():
    two = (("gift-1", "GIFT_CARD", 30), ("card-1", "CARD", 70))
    state, _ = run(placed(instruments=two), authorized(30, instrument="gift-1"))
    assert state.status == "pending_payment"
    state, _ = run(authorized(70, instrument="card-1", n=2), state=state)
    assert state.status == "confirmed"


def test_failed_authorization_holds_the_order_tells_the_customer_and_a_new_one_releases_it():
    state, records = run(placed(), auth_failed())
    assert state.status == "on_hold" and "insufficient funds" in state.hold_reason
    [notice] = kinds(records, CustomerNotice)
    assert notice.type == "payment_failed" and notice.facts["customer_action"] == "use another card"
    state, records = run(authorized(100, n=2), state=state)
    assert state.status == "confirmed" and state.held_from is None
    moves = [(t.from_state, t.to_state) for t in kinds(records, Transitioned) if t.machine == "order"]
    assert moves == [("on_hold", "pending_payment"), ("pending_payment", "confirmed")]
    assert [n.type for n in kinds(records, CustomerNotice)] == ["order_confirmed"]


def test_a_released_hold_during_fulfillment_does_not_confirm_again():
    state, _ = run(placed(), authorized(100), fulfillment("shipped", n=2), auth_expired(n=3))
    state, records = run(authorized(100, n=4), state=state)
    assert state.status == "in_fulfillment" and kinds(records, CustomerNotice) == []


def test_expired_authorization_during_fulfillment_holds_and_reauthorization_resumes_where_it_was():
    state, _ = run(placed(), authorized(100), fulfillment("partially_shipped", n=2), auth_expired(n=3))
    assert state.status == "on_hold" and state.held_from == "in_fulfillment"
    state, _ = run(authorized(100, n=4), state=state)
    assert state.status == "in_fulfillment"


def test_cancellation_tells_what_will_be_refunded_per_instrument():
    two = (("gift-1", "GIFT_CARD", 30), ("card-1", "CARD", 70))
    state, records = run(placed(instruments=two), authorized(30, "gift-1"), authorized(70, "card-1", n=2),
                         captured(30, "gift-1", n=3), cancelled(n=4), fulfillment("cancelled", n=5))
    assert state.status == "cancelled"
    [notice] = [n for n in kinds(records, CustomerNotice) if n.type == "order_cancelled"]
    assert notice.amounts == (("gift-1", "GIFT_CARD", Decimal(30), "EUR"),)
    assert notice.facts["released_authorizations"] == "card-1"


def test_a_cancellation_is_a_request_fulfillment_decides():
    """order-state's view of fulfillment may be a snapshot behind: the cancellation is recorded, and
    the order follows fulfillment's snapshot of it (cancelled, or in fulfillment with the rest
    cancelled); it never rejects what the warehouse reports next."""
    state, records = run(placed(), authorized(100), cancelled(n=3))
    assert state.status == "confirmed" and not kinds(records, Rejected)
    assert state.history[-1].reason.startswith("cancellation requested by customer")
    shipped, records = run(fulfillment("partially_shipped", n=4), fulfillment("shipped", n=5), state=state)
    assert shipped.status == "in_fulfillment" and not kinds(records, Rejected)
    cancelled_order, _ = run(fulfillment("cancelled", n=4), state=state)
    assert cancelled_order.status == "cancelled"
    _, records = run(cancelled(n=6), state=cancelled_order)
    assert kinds(records, Rejected)[0].reason_code == "invalid_transition"


def test_capture_on_a_cancelled_order_is_rejected():
    state, records = run(placed(), authorized(100), cancelled(n=2), fulfillment("cancelled", n=3), captured(100, n=4))
    assert kinds(records, Rejected)[0].reason_code == "capture_on_cancelled_order"
    assert state.instrument("card-1").captured == 0


def test_line_cancellations_follow_fulfillment_and_over_cancelling_is_rejected():
    """A line cancellation is a request: the units fulfillment cancelled (those that had not left)
    are what the order's lines say, and the order is cancelled when fulfillment cancelled all."""
    state, records = run(placed(), authorized(100), line_cancelled("l1", 2, n=2), line_cancelled("l2", 1, n=3))
    assert [x.cancelled for x in state.lines] == [0, 0] and state.status == "confirmed"
    snapshot = event("FulfillmentStatusChanged", {"status": "cancelled", "backordered": False, "lines": [
        {"line_id": "l1", "cancelled": 2}, {"line_id": "l2", "cancelled": 1}]}, 4)
    state, _ = run(snapshot, state=state)
    assert [x.cancelled for x in state.lines] == [2, 1] and state.status == "cancelled"
    state, records = run(placed(), line_cancelled("l1", 3, n=1))
    assert kinds(records, Rejected)[0].reason_code == "cancel_exceeds_line"
    assert state.line("l1").cancelled == 0


# -- guards on amounts ----------------------------------------------------------------------------

def test_refund_larger_than_captured_is_rejected_and_state_unchanged():
    state, records = run(placed(), authorized(100), captured(100), refunded(150))
    [rejected] = kinds(records, Rejected)
    assert rejected.reason_code == "refund_exceeds_captured" and "150" in rejected.reason
    assert state.instrument("card-1").refunded == 0


def test_refund_waiting_for_further_captures_is_parked_then_applied():
    state, _ = run(placed(), authorized(100), captured(40), refunded(60, n=3))
    assert state.parked[0].waiting_for == "further captures covering the refund"
    state, _ = run(captured(60, n=4), state=state)
    assert state.instrument("card-1").refunded == 60 and state.parked == ()


def test_capture_beyond_authorization_is_rejected():
    _, records = run(placed(), authorized(100), captured(80), captured(30, n=3))
    assert kinds(records, Rejected)[0].reason_code == "capture_exceeds_authorization"


def test_partial_captures_are_recorded_in_the_amount_ledger():
    _, records = run(placed(), authorized(100), captured(40), captured(20, n=3))
    ledger = [(t.to_state, t.detail.captured) for t in kinds(records, Transitioned) if t.machine == "payment"]
    assert ledger[-2:] == [("partially_captured", 40), ("partially_captured", 60)]


def test_chargeback_is_terminal():
    state, _ = run(placed(), authorized(100), captured(100), chargeback(100))
    assert state.instrument("card-1").status == "charged_back"
    _, records = run(refunded(10, n=9), state=state)
    assert kinds(records, Rejected)[0].reason_code == "invalid_transition"


# -- out of order, duplicates, deadlines ----------------------------------------------------------

def test_capture_before_authorization_is_parked_then_applied_when_it_arrives():
    state, records = run(placed(), captured(100))
    [parked] = state.parked
    assert parked.waiting_for == "the authorization" and parked.deadline == NOW + PARK_FOR
    state, records = run(authorized(100), state=state)
    assert state.instrument("card-1").status == "captured" and state.parked == ()
    assert [t.to_state for t in kinds(records, Transitioned) if t.machine == "payment"] == ["authorized", "captured"]


def test_payment_before_the_order_is_parked_until_the_order_is_placed():
    state, records = run(authorized(100), captured(100))
    assert len(state.parked) == 2 and state.status == "new"
    assert [p.parked.event.short_type for p in kinds(records, ParkedRecord)] == ["PaymentAuthorized"], \
        "the authorization really waits (the capture after it left it waiting): recorded; the capture not yet"
    state, records = run(placed(), state=state)
    assert state.status == "confirmed" and state.instrument("card-1").status == "captured"


def test_a_parked_event_says_what_it_waits_for_now_and_keeps_its_deadline():
    state, _ = run(captured(100))
    assert state.parked[0].waiting_for == "the order to be placed"
    state, records = run(placed(), state=state, now=NOW + timedelta(hours=2))
    assert state.parked[0].waiting_for == "the authorization" and state.parked[0].deadline == NOW + PARK_FOR
    assert [p.parked.waiting_for for p in kinds(records, ParkedRecord)] == ["the authorization"], \
        "recorded once the next input left it waiting, as what it waits for then"
    state, records = run(line_cancelled(), state=state, now=NOW + timedelta(hours=3))
    assert kinds(records, ParkedRecord) == [], "re-parking is not a second audit record"


def test_a_duplicate_changes_nothing_and_emits_nothing():
    state, _ = run(placed(), authorized(100))
    outcome = domain.apply(state, authorized(100), TOPIC, NOW, PARK_FOR)
    assert outcome.duplicate and outcome.records == () and outcome.state == state


def test_parked_event_past_its_deadline_is_rejected_with_an_audit_record():
    state, _ = run(placed(), captured(100))
    state = domain.expire(state, NOW + workflow.ANNOUNCE_AFTER, timedelta(days=90), "timers").state
    assert domain.next_deadline(state, timedelta(days=90)) == NOW + PARK_FOR
    early = domain.expire(state, NOW + PARK_FOR - timedelta(seconds=1), timedelta(days=90), "timers")
    assert early.records == () and len(early.state.parked) == 1
    late = domain.expire(state, NOW + PARK_FOR, timedelta(days=90), "timers")
    [rejected] = kinds(late.records, Rejected)
    assert rejected.reason_code == "park_deadline_passed" and "the authorization" in rejected.reason
    assert late.state.parked == () and domain.next_deadline(late.state, timedelta(days=90)) is None


def test_completed_order_closes_after_the_configured_period():
    state, _ = run(placed(), authorized(100), captured(100), fulfillment("delivered"))
    close_after = timedelta(days=30)
    due = domain.next_deadline(state, close_after)
    assert due == state.completed_at + close_after
    outcome = domain.expire(state, due, close_after, "timers")
    assert outcome.state.status == "closed"
    again = domain.expire(outcome.state, due, close_after, "timers")
    assert again.records == () and again.state == outcome.state


def test_state_survives_its_json_form_exactly():
    state, _ = run(placed(), authorized(100), captured(40), refunded(60, n=3), auth_failed("card-1", n=4))
    assert OrderState.from_json(state.to_json()) == state
    assert state.parked  # the events it keeps for later are part of it
    assert OrderState.from_json(orjson.loads(state.to_json_bytes())) == state  # the text its table stores


def test_instrument_amount_invariants_are_named_checks():
    bad = PaymentInstrument("i", "CARD", "EUR", Decimal(10), "captured", Decimal(10), Decimal(20), Decimal(30))
    state = replace(OrderState(ORDER_ID), instruments=(bad,))
    assert domain.violated_invariants(state) == ["refunded_within_captured(i)", "captured_within_authorized(i)"]


def test_the_service_doc_shows_both_machines_as_they_are():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "services" / "order-state.md").read_text()
    for machine in (ORDER, PAYMENT):
        assert machine.as_markdown() in doc, f"docs/services/order-state.md: re-render the {machine.name} table"


# -- a derived record never overtakes its cause ---------------------------------------------------

def test_a_snapshot_derived_from_a_cancellation_waits_for_the_cancellation():
    """Fulfillment's snapshot of a cancellation is written after the storefront's OrderCancelled,
    but after a restart it can be read first (another topic). It waits for its cause, so the order
    ends as in write order: cancelled by the storefront, the customer told, nothing rejected."""
    cancel = cancelled()
    snapshot = replace(fulfillment("cancelled", event_id=f"{cancel.event_id}:fulfillment:statussnapshot:0"),
                       source="fulfillment", cause_topic=STOREFRONT_ORDERS.name)
    in_write_order, written = run(placed(), authorized(), cancel, snapshot)
    overtaken, read = run(placed(), authorized(), snapshot, cancel)
    assert overtaken.status == in_write_order.status == "cancelled"
    assert overtaken.history == in_write_order.history
    assert kinds(read, ParkedRecord) == [] and overtaken.parked == (), \
        "it waited only until the next input, its cause: nothing to record"
    assert kinds(read, Rejected) == kinds(written, Rejected) == []
    assert [n.type for n in kinds(read, CustomerNotice)] == [n.type for n in kinds(written, CustomerNotice)]


def test_a_snapshot_whose_cause_this_processor_does_not_read_applies_at_once():
    warehouse_cause = replace(fulfillment("cancelled", event_id="o-1:9:LineCancelledByWarehouse:fulfillment:x:0"),
                              source="fulfillment")  # no cause_topic: the reader does not read the cause's topic
    state, records = run(placed(), authorized(), warehouse_cause)
    assert state.status == "cancelled" and not kinds(records, ParkedRecord)


def test_a_provider_outcome_repeated_under_a_new_event_id_counts_once():
    again = refunded(30, n=3, event_id="connector-redelivery-of-r-3")
    capture_again = captured(100, n=2, event_id="connector-redelivery-of-cap-2")
    state, records = run(placed(), authorized(100), captured(100), capture_again, refunded(30, n=3), again)
    card = state.instrument("card-1")
    assert (card.captured, card.refunded) == (100, 30)
    duplicates = [r for r in kinds(records, Rejected) if r.reason_code == "duplicate_provider_outcome"]
    assert len(duplicates) == 2 and "refund:r-3" in duplicates[1].reason
    ledger = [t for t in kinds(records, Transitioned) if t.machine == "payment"]
    assert len(ledger) == 3, "the amount ledger has one entry per operation, none for a repeat"
    stored = OrderState.from_json(orjson.loads(orjson.dumps(state.to_json())))
    assert stored.instrument("card-1").operations == ("capture:cap-2", "refund:r-3")


# -- a park is recorded only when the event really waits ------------------------------------------

def test_a_park_is_recorded_only_when_the_event_really_waits():
    """Resolved by the order's next input: never recorded. Left waiting by it: recorded then, once.
    Alone: recorded at the timer tick ANNOUNCE_AFTER later. The record is the one its park would
    have written (its cause, its deadline, the state it parked in), whenever it is written."""
    _, records = run(authorized(100), placed())
    assert kinds(records, ParkedRecord) == []

    state, _ = run(placed(), captured(100))
    assert domain.next_deadline(state, timedelta(days=90)) == NOW + workflow.ANNOUNCE_AFTER
    early = domain.expire(state, NOW, timedelta(days=90), "timers")
    assert early.records == ()
    due = domain.expire(state, NOW + workflow.ANNOUNCE_AFTER, timedelta(days=90), "timers")
    [recorded] = kinds(due.records, ParkedRecord)
    assert (recorded.parked.waiting_for, recorded.current_state, recorded.parked.deadline) == (
        "the authorization", "pending", NOW + PARK_FOR)
    assert recorded.parked.event.short_type == "PaymentCaptured"
    assert domain.expire(due.state, NOW + timedelta(hours=1), timedelta(days=90), "timers").records == ()
    assert domain.next_deadline(due.state, timedelta(days=90)) == NOW + PARK_FOR
