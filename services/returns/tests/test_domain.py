"""returns' domain without a broker: policy decisions with traces, versions, the return and
refund machines, routing by channel, inspection shares, retries and fallback, invariants."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from builders import (
    PLACED_V1,
    PLACED_V2,
    POLICIES,
    POLICY_DIR,
    captured,
    days,
    ev,
    exception_approved,
    fulfilled,
    inspected,
    placed,
    received,
    refund_result,
    requested,
    voided,
)

from orderops.model import workflow
from orderops.model.catalog import STOREFRONT_ORDERS
from orderops.model.envelope import Envelope
from orderops.model.workflow import CustomerNotice, Rejected
from returns import domain
from returns.domain import Decided, Policies, RefundCommand, ReturnsState
from returns.machines import REFUND, RETURN
from returns.policy import Policy, PolicyFileError, check_publishable, load_policy

NOW = PLACED_V2 + days(30)
PARK_FOR = timedelta(hours=24)


def run(*events, state=None, policies=POLICIES):
    records = []
    for e in events:
        outcome = domain.apply(state, e, "input", NOW, PARK_FOR, policies)
        state = outcome.state
        records.extend(outcome.records)
        assert domain.violated_invariants(state) == [], (e.short_type, domain.violated_invariants(state))
    return state, records


def of(records, kind):
    return [r.what for r in records if isinstance(r.what, kind)]


def delivered_order(at=PLACED_V1, instruments=(("card-1", "CARD", "135.00"),)):
    events = [placed(at, instruments)]
    events += [captured(i, a, at + timedelta(hours=1)) for i, _, a in instruments]
    events.append(fulfilled(at + days(3)))
    return run(*events)[0]


def decide(*lines, at_days=10, placed_at=PLACED_V1, **kw):
    state = delivered_order(placed_at)
    _, records = run(requested("r-1", placed_at + days(3 + at_days), *lines, **kw), state=state)
    [decided] = of(records, Decided)
    return decided


def rule(decided, name):
    return next(t for t in decided.trace if t["rule"] == name)


# -- the decision table ---------------------------------------------------------------------------

@pytest.mark.parametrize("line, reason, at_days, decision, deciding_rule", [
    ("l2", "NO_LONGER_NEEDED", 10, "AUTHORIZED", None),
    ("l2", "NO_LONGER_NEEDED", 30, "AUTHORIZED", None),            # last day of the window
    ("l2", "NO_LONGER_NEEDED", 34, "NEEDS_REVIEW", "return_window"),  # within the grace days
    ("l2", "NO_LONGER_NEEDED", 45, "REJECTED", "return_window"),
    ("l1", "SIZE_OR_FIT", 13, "AUTHORIZED", None),                 # electronics: 14 days
    ("l1", "SIZE_OR_FIT", 20, "NEEDS_REVIEW", "return_window"),
    ("l3", "NO_LONGER_NEEDED", 2, "REJECTED", "final_sale"),
    ("l3", "DAMAGED", 2, "NEEDS_REVIEW", "final_sale"),            # a defective final-sale item: a person looks
    ("l4", "NO_LONGER_NEEDED", 2, "NEEDS_REVIEW", "condition:hygiene-opened"),
    ("l4", "DAMAGED", 2, "AUTHORIZED", None),
])
def test_policy_decisions(line, reason, at_days, decision, deciding_rule):
    quantity = 2 if line == "l2" else 1
    decided = decide((line, quantity, reason), at_days=at_days)
    assert decided.decision == decision and decided.policy == "standard@1"
    outcomes = {t["rule"]: t["outcome"] for t in decided.trace}
    if deciding_rule:
        assert outcomes[deciding_rule] in ("fail", "review")
        assert rule(decided, deciding_rule)["detail"] in decided.reason
    else:
        assert set(outcomes.values()) == {"pass"}


def test_trace_records_every_rule_with_its_inputs():
    decided = decide(("l2", 1, "NO_LONGER_NEEDED"), at_days=12)
    assert [t["rule"] for t in decided.trace] == [
        "policy_version", "net_price", "quantity_returnable", "final_sale", "return_window", "condition:hygiene-opened",
        "condition:high-value-electronics", "restocking_fee", "customer_limit"]
    window = rule(decided, "return_window")
    assert window["inputs"] == {"days_since_delivery": "12", "window_days": "30",
                                "delivered_at": (PLACED_V1 + days(3)).isoformat()}
    assert rule(decided, "restocking_fee")["inputs"]["percent"] == "10"


def test_more_than_delivered_is_rejected():
    assert decide(("l2", 3, "NO_LONGER_NEEDED")).decision == "REJECTED"


def test_customer_limit_sends_to_review():
    decided = decide(("l2", 1, "NO_LONGER_NEEDED"), customer_returns_90d=6)
    assert decided.decision == "NEEDS_REVIEW" and rule(decided, "customer_limit")["inputs"]["returns_90d"] == "6"


def test_the_same_request_under_two_versions_decides_differently():
    under_v1 = decide(("l2", 2, "NO_LONGER_NEEDED"), at_days=25, placed_at=PLACED_V1)
    under_v2 = decide(("l2", 2, "NO_LONGER_NEEDED"), at_days=25, placed_at=PLACED_V2)
    assert (under_v1.decision, under_v1.policy) == ("AUTHORIZED", "standard@1")
    assert (under_v2.decision, under_v2.policy) == ("NEEDS_REVIEW", "standard@2")
    assert rule(under_v2, "return_window")["inputs"]["window_days"] == "21"


def test_a_request_waits_for_the_policy_in_force_and_proceeds_when_it_is_published():
    only_v2 = Policies({k: v for k, v in POLICIES.by_ref.items() if k.endswith("@2")})
    state, _ = run(placed(), captured("card-1", "135.00", PLACED_V1), fulfilled(PLACED_V1 + days(3)), policies=only_v2)
    state, _ = run(requested("r-1", PLACED_V1 + days(5), ("l2", 1, "NO_LONGER_NEEDED")), state=state,
                         policies=only_v2)
    assert "return policy in force" in state.parked[0].waiting_for
    outcome = domain.expire(state, NOW, PARK_FOR, POLICIES, "timers")
    assert of(outcome.records, Decided)[0].policy == "standard@1"


def test_return_before_delivery_waits_for_the_delivery():
    state, records = run(placed(), captured("card-1", "135.00", PLACED_V1),
                         requested("r-1", PLACED_V1 + days(1), ("l2", 1, "DAMAGED")))
    assert state.parked[0].waiting_for == "delivery of Mug"
    state, records = run(fulfilled(PLACED_V1 + days(3)), state=state)
    assert of(records, Decided)[0].decision == "AUTHORIZED"


# -- from authorization to refund -----------------------------------------------------------------

def test_full_return_of_one_line_paid_by_gift_card_and_card_is_split_and_routed():
    instruments = (("gift-1", "GIFT_CARD", "35.00"), ("card-1", "CARD", "100.00"))
    state = delivered_order(instruments=instruments)
    at = PLACED_V1 + days(6)
    state, records = run(requested("r-1", at, ("l2", 2, "DAMAGED")), received("r-1", at + days(2), ("l2", 2)),
                         inspected("r-1", at + days(3), ("l2", 2, "AS_EXPECTED")), state=state)
    commands = of(records, RefundCommand)
    split = {c.refund.instrument_id: (c.refund.amount, c.refund.method) for c in commands}
    assert split == {"gift-1": (Decimal("5.19"), "STORE_CREDIT"), "card-1": (Decimal("14.81"), "ORIGINAL_INSTRUMENT")}
    # Each command carries the SLA its policy version gives the channel: the one place it is set.
    assert {c.refund.instrument_id: c.sla_hours for c in commands} == {"gift-1": 24, "card-1": 72}
    assert state.return_("r-1").status == "refund_pending"
    assert [n.type for n in of(records, CustomerNotice)] == ["return_authorized", "return_received", "refund_issued"]
    for command in commands:
        state, records = run(refund_result(command.key, command.refund.instrument_id, command.refund.amount,
                                           at + days(4)), state=state)
    assert state.return_("r-1").status == "refunded"
    assert [n.type for n in of(records, CustomerNotice)] == ["refund_completed"]


def test_damaged_item_is_refunded_at_the_policy_share_and_without_fee_when_the_reason_is_exempt():
    state = delivered_order()
    at = PLACED_V1 + days(6)
    _, records = run(requested("r-1", at, ("l2", 2, "NO_LONGER_NEEDED")), received("r-1", at, ("l2", 2)),
                     inspected("r-1", at, ("l2", 1, "AS_EXPECTED"), ("l2", 1, "DAMAGED")), state=state)
    [command] = of(records, RefundCommand)
    # 10.00 less the 10 % restocking fee for the intact one, half of 10.00 for the damaged one.
    assert command.refund.amount == Decimal("14.00")


def test_partial_receipt_refunds_partially_and_keeps_the_rest_open():
    state = delivered_order()
    at = PLACED_V1 + days(6)
    state, records = run(requested("r-1", at, ("l2", 2, "WRONG_ITEM")), received("r-1", at, ("l2", 1)),
                         inspected("r-1", at, ("l2", 1, "AS_EXPECTED")), state=state)
    [command] = of(records, RefundCommand)
    state, _ = run(refund_result(command.key, "card-1", command.refund.amount, at), state=state)
    assert state.return_("r-1").status == "partially_refunded"
    state, records = run(received("r-1", at + days(2), ("l2", 1)), inspected("r-1", at + days(2), ("l2", 1, "AS_EXPECTED")),
                         state=state)
    [second] = of(records, RefundCommand)
    assert second.refund.refund_id != command.refund.refund_id
    state, _ = run(refund_result(second.key, "card-1", second.refund.amount, at + days(3)), state=state)
    assert state.return_("r-1").status == "refunded"


def test_old_capture_is_refunded_as_store_credit():
    state = delivered_order(placed_at := PLACED_V1)
    late = placed_at + days(200)  # v1: captures older than 180 days -> store credit
    state = replace(state, returns=())
    _, records = run(requested("r-1", placed_at + days(8), ("l2", 1, "WRONG_ITEM")),
                     received("r-1", late, ("l2", 1)), inspected("r-1", late, ("l2", 1, "AS_EXPECTED")), state=state)
    [command] = of(records, RefundCommand)
    assert command.refund.method == "STORE_CREDIT" and "over 180" in command.refund.reason


def test_refund_failure_retries_then_falls_back_to_store_credit():
    state = delivered_order()
    at = PLACED_V1 + days(6)
    state, records = run(requested("r-1", at, ("l2", 1, "WRONG_ITEM")), received("r-1", at, ("l2", 1)),
                         inspected("r-1", at, ("l2", 1, "AS_EXPECTED")), state=state)
    command = of(records, RefundCommand)[0]
    keys = [command.key]
    for attempt in range(2, 4):
        state, records = run(refund_result(keys[-1], "card-1", "10.00", at, ok=False), state=state)
        [retry] = of(records, RefundCommand)
        assert retry.refund.attempt == attempt and retry.key == f"{command.refund.refund_id}#{attempt}"
        keys.append(retry.key)
    state, records = run(refund_result(keys[-1], "card-1", "10.00", at, ok=False), state=state)
    [fallback] = of(records, RefundCommand)
    assert fallback.refund.method == "STORE_CREDIT" and fallback.refund.refund_id.endswith(":store-credit")
    assert state.refunds[0].status == "fell_back"
    state, _ = run(refund_result(fallback.key, "card-1", "10.00", at), state=state)
    assert state.return_("r-1").status == "refunded"


def test_a_duplicate_refund_success_changes_nothing_and_a_stale_one_is_rejected():
    state = delivered_order()
    at = PLACED_V1 + days(6)
    state, records = run(requested("r-1", at, ("l2", 1, "WRONG_ITEM")), received("r-1", at, ("l2", 1)),
                         inspected("r-1", at, ("l2", 1, "AS_EXPECTED")), state=state)
    command = of(records, RefundCommand)[0]
    success = refund_result(command.key, "card-1", "10.00", at)
    state, _ = run(success, state=state)
    assert domain.apply(state, success, "input", NOW, PARK_FOR, POLICIES).duplicate
    _, records = run(refund_result(command.key, "card-1", "10.00", at), state=state)  # same key, new event id
    assert of(records, Rejected)[0].reason_code == "duplicate_provider_outcome"


def test_needs_review_then_exception_approved_by_a_lead():
    state = delivered_order()
    state, records = run(requested("r-1", PLACED_V1 + days(36), ("l2", 1, "NO_LONGER_NEEDED")), state=state)
    assert state.return_("r-1").status == "needs_review"
    state, records = run(received("r-1", PLACED_V1 + days(37), ("l2", 1)), state=state)
    assert state.parked[0].waiting_for == "a lead's decision on the exception"
    state, records = run(exception_approved("r-1", PLACED_V1 + days(38)), state=state)
    assert state.return_("r-1").status == "received", "the parked receipt is applied once authorized"
    assert state.return_("r-1").trace[-1]["inputs"] == {"approved_by": "lee", "role": "lead"}
    assert "approved by lee" in of(records, Decided)[0].reason


def test_cancelled_line_that_was_captured_is_refunded_once():
    state, _ = run(placed(), captured("card-1", "135.00", PLACED_V1))
    state, records = run(fulfilled(PLACED_V1 + days(1), delivered={}, cancelled={"l2": 2}), state=state)
    [command] = of(records, RefundCommand)
    assert command.refund.amount == Decimal("20.00") and command.refund.cause == "cancelled 2 × Mug"
    assert command.refund.refund_id == "o-1:cancel:l2:2:card-1"
    _, records = run(fulfilled(PLACED_V1 + days(2), delivered={"l1": 1}, cancelled={"l2": 2}), state=state)
    assert of(records, RefundCommand) == [], "the same cancellation is refunded once"


def test_lines_cancelled_by_one_event_are_refunded_together_and_told_in_one_message():
    """A notification's id is its cause's and its type's: two refund_issued notices for one event
    would share one id, and the notifier would send the customer only one of them."""
    state, _ = run(placed(), captured("card-1", "135.00", PLACED_V1))
    _, records = run(fulfilled(PLACED_V1 + days(1), delivered={"l1": 1}, cancelled={"l2": 2, "l4": 1}), state=state)
    [command] = of(records, RefundCommand)
    assert command.refund.amount == Decimal("40.00")
    assert command.refund.refund_id == "o-1:cancel:l2:2+l4:1:card-1"
    [notice] = [n for n in of(records, CustomerNotice) if n.type == "refund_issued"]
    assert notice.facts["cause"] == "cancelled 2 × Mug, 1 × Lipstick"
    assert [amount for *_, amount, _ in notice.amounts] == [Decimal("40.00")]


def test_a_line_cancelled_before_the_capture_is_refunded_by_the_capture_whatever_arrives_between():
    cancelled = fulfilled(PLACED_V1 + days(1), delivered={}, cancelled={"l2": 2})
    later_snapshot = fulfilled(PLACED_V1 + days(2), delivered={"l1": 1}, cancelled={"l2": 2})
    capture = captured("card-1", "135.00", PLACED_V1 + days(2))
    refunds = []
    for arrival in ([cancelled, capture, later_snapshot], [cancelled, later_snapshot, capture], [cancelled, capture]):
        _, records = run(placed(), *arrival)
        [command] = [r for r in records if isinstance(r.what, RefundCommand)]
        assert command.what.refund.amount == Decimal("20.00")
        assert command.cause.event_id == capture.event_id, "the capture completes the condition, in every order"
        refunds.append(command.what)
    assert refunds[0] == refunds[1] == refunds[2]


def test_a_refund_that_overtook_its_capture_waits_for_it_instead_of_being_cut():
    instruments = (("gift-1", "GIFT_CARD", "35.00"), ("card-1", "CARD", "100.00"))
    state, _ = run(placed(instruments=instruments), captured("gift-1", "35.00", PLACED_V1),
                   fulfilled(PLACED_V1 + days(3)))
    at = PLACED_V1 + days(6)
    state, records = run(requested("r-1", at, ("l1", 1, "WRONG_ITEM")), received("r-1", at, ("l1", 1)),
                         inspected("r-1", at, ("l1", 1, "AS_EXPECTED")), state=state)
    assert of(records, RefundCommand) == [] and state.parked[0].waiting_for == "captures covering the refund"
    state, records = run(captured("card-1", "100.00", at), state=state)
    assert sum(c.refund.amount for c in of(records, RefundCommand)) == Decimal("80.00")


def test_what_can_never_be_captured_is_not_refunded_and_says_so():
    state, _ = run(placed(instruments=(("card-1", "CARD", "15.00"),)), captured("card-1", "15.00", PLACED_V1))
    state, records = run(fulfilled(PLACED_V1 + days(1), delivered={}, cancelled={"l2": 2}), state=state)
    assert sum(c.refund.amount for c in of(records, RefundCommand)) == Decimal("15.00")
    [rejected] = of(records, Rejected)
    assert rejected.reason_code == "refund_exceeds_captured" and "5.00 EUR of 20.00 cannot be refunded" in \
        rejected.reason
    assert state.refundable(state.instrument("card-1")) == 0


def test_state_survives_its_json_form():
    state = delivered_order(instruments=(("gift-1", "GIFT_CARD", "35.00"), ("card-1", "CARD", "100.00")))
    state, _ = run(requested("r-1", PLACED_V1 + days(5), ("l2", 2, "DAMAGED")), state=state)
    waiting, _ = run(placed(), captured("card-1", "135.00", PLACED_V1),
                     requested("r-2", PLACED_V1 + days(1), ("l2", 1, "DAMAGED")))
    assert waiting.parked  # the events it keeps for later are part of it
    for kept in (state, waiting):
        assert ReturnsState.from_json(kept.to_json()) == kept
        assert ReturnsState.from_json(orjson.loads(kept.to_json_bytes())) == kept  # the text its table stores


def test_the_service_doc_shows_both_machines():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "services" / "returns.md").read_text()
    assert RETURN.as_markdown() in doc and REFUND.as_markdown() in doc


# -- policy files ---------------------------------------------------------------------------------

def test_bad_policy_files_are_refused_with_line_and_reason(tmp_path):
    good = (POLICY_DIR / "standard-v1.yaml").read_text()
    cases = {
        "version: 1": ("version: -3", ":5: version must be a whole number"),
        "  DAMAGED: 50": ("  DAMAGED: 150", "inspection_refund_share.DAMAGED is a percentage"),
        "  GIFT_CARD: {method: STORE_CREDIT, sla_hours: 24}": ("  GIFT_CARD: {method: CASH, sla_hours: 24}",
                                                                "refund_routes.GIFT_CARD.method is 'CASH'"),
        "max_refund_attempts: 3": ("max_refund_attempts: 3\nrefund_speed: fast", "unknown setting 'refund_speed'"),
        "effective_from: 2026-01-01T00:00:00Z": ("effective_from: next monday", "must be a timestamp"),
    }
    for original, (broken, expected) in cases.items():
        path = tmp_path / "policy.yaml"
        path.write_text(good.replace(original, broken))
        with pytest.raises(PolicyFileError, match=expected.replace("(", r"\(").replace(")", r"\)")) as error:
            load_policy(path)
        assert str(error.value).startswith(f"{path}:"), error.value


def test_published_versions_are_immutable_and_never_rewrite_the_past():
    v1, v2 = POLICIES.by_ref["standard@1"], POLICIES.by_ref["standard@2"]
    assert check_publishable(v1, {v1.ref: v1}) is None, "republishing unchanged is fine"
    changed = replace(v1, default_window_days=99)
    assert "immutable" in check_publishable(changed, {v1.ref: v1})
    backdated = replace(v2, effective_from=v1.effective_from)
    assert "rewrite the past" in check_publishable(backdated, {v1.ref: v1})
    assert "versions only go up" in check_publishable(v1, {v2.ref: v2})


def test_a_version_dated_before_its_publishing_is_refused_unless_marked_backdated():
    v1, v2 = POLICIES.by_ref["standard@1"], POLICIES.by_ref["standard@2"]
    now = v2.effective_from + days(6)
    refused = check_publishable(v2, {v1.ref: v1}, before={v1.ref: v1}, now=now)
    assert refused and "--backdate" in refused and "standard@1 already governed" in refused
    assert check_publishable(replace(v2, backdated=True), {v1.ref: v1}, before={v1.ref: v1}, now=now) is None
    assert check_publishable(v2, {v1.ref: v1}, before={v1.ref: v1}, now=v2.effective_from - days(1)) is None, \
        "dated from now on: fine"
    assert check_publishable(v2, {v1.ref: v1}, before={}, now=now) is None, \
        "published together with the first version: no order was judged by another version yet"
    assert Policy.from_record(replace(v2, backdated=True).to_record()).backdated


def test_an_order_keeps_the_version_in_force_when_it_was_placed_whatever_is_published_later():
    """A version published later, dated back before the order, does not judge it; the decision
    names the version and whether it was backdated."""
    only_v1 = Policies({"standard@1": POLICIES.by_ref["standard@1"]})
    state, _ = run(placed(at=PLACED_V2 + days(1)), captured("card-1", "135.00", PLACED_V2 + days(1)),
                   fulfilled(PLACED_V2 + days(3)), policies=only_v1)
    assert state.policy == "standard@1"
    backdated_v2 = replace(POLICIES.by_ref["standard@2"], backdated=True)
    later = Policies({"standard@1": POLICIES.by_ref["standard@1"], "standard@2": backdated_v2})
    _, records = run(requested("r-1", PLACED_V2 + days(5), ("l2", 1, "DAMAGED")), state=state, policies=later)
    [decided] = of(records, Decided)
    assert decided.policy == "standard@1"
    assert decided.trace[0]["rule"] == "policy_version" and decided.trace[0]["inputs"]["version"] == "standard@1"
    # an order placed once v2 is read is judged by it, and the decision says it was backdated
    fresh, _ = run(placed(at=PLACED_V2 + days(1)), captured("card-1", "135.00", PLACED_V2 + days(1)),
                   fulfilled(PLACED_V2 + days(3)), policies=later)
    _, records = run(requested("r-1", PLACED_V2 + days(5), ("l2", 1, "DAMAGED")), state=fresh, policies=later)
    [decided] = of(records, Decided)
    assert decided.policy == "standard@2" and "published backdated" in decided.trace[0]["detail"]


def test_a_return_waiting_for_its_policy_is_retried_soon_not_at_its_deadline():
    only_v2 = Policies({k: v for k, v in POLICIES.by_ref.items() if k.endswith("@2")})
    state, _ = run(placed(), captured("card-1", "135.00", PLACED_V1), fulfilled(PLACED_V1 + days(3)), policies=only_v2)
    state, _ = run(requested("r-1", PLACED_V1 + days(5), ("l2", 1, "NO_LONGER_NEEDED")), state=state, policies=only_v2)
    assert domain.next_deadline(state, PARK_FOR) == NOW + workflow.ANNOUNCE_AFTER, "first its audit record is due"
    state = domain.expire(state, NOW + workflow.ANNOUNCE_AFTER, PARK_FOR, only_v2, "timers").state
    assert domain.next_deadline(state, PARK_FOR) == NOW + timedelta(seconds=30)


def test_a_capture_in_another_currency_than_its_instrument_is_rejected_and_changes_nothing():
    state = run(placed())[0]
    foreign = captured("card-1", "135.00", PLACED_V1 + timedelta(hours=1))
    foreign = replace(foreign, payload={**foreign.payload, "amount": {**foreign.payload["amount"], "currency": "JPY"}})
    after, records = run(foreign, state=state)
    assert [(r.reason_code, r.entity_id) for r in of(records, Rejected)] == [("currency_mismatch", "card-1")]
    assert after.instrument("card-1").captured == 0


def test_a_snapshot_read_before_the_cancellation_it_comes_from_waits_for_it_and_then_applies():
    """After a restart, fulfillment's snapshot of a cancellation can be read before the storefront's
    OrderCancelled itself. returns has nothing to do for an OrderCancelled; the snapshot it waited
    for still goes on then, not a day later when its deadline passes."""
    at = PLACED_V1 + days(1)
    cancel = Envelope("o-1:cancel", "o-1", at, "storefront", "orderops.storefront.OrderCancelled", {"reason": "customer"})
    snapshot = replace(fulfilled(at, delivered={}, cancelled={"l2": 2}), event_id="o-1:cancel:fulfillment:snapshot:0",
                       source="fulfillment", cause_topic=STOREFRONT_ORDERS.name)
    state, _ = run(placed(), captured("card-1", "135.00", PLACED_V1 + timedelta(hours=1)), snapshot)
    assert state.parked and state.line("l2").cancelled == 0
    state, _ = run(cancel, state=state)
    assert not state.parked and state.line("l2").cancelled == 2


def test_refund_results_nobody_asked_for_are_rejected_unless_they_are_real_refunds_made_elsewhere():
    state = run(placed(), captured("card-1", "135.00", PLACED_V1 + timedelta(hours=1)))[0]
    at = PLACED_V1 + days(2)
    _, records = run(refund_result("o-1:nobody-asked#1", "card-1", "10.00", at, ok=False), state=state)
    assert [r.reason_code for r in of(records, Rejected)] == ["unknown_refund"]
    _, records = run(refund_result("o-1:elsewhere#1", "card-9", "10.00", at), state=state)
    assert [r.reason_code for r in of(records, Rejected)] == ["unknown_instrument"]
    after, records = run(refund_result("o-1:elsewhere#1", "card-1", "10.00", at), state=state)
    assert not of(records, Rejected) and after.instrument("card-1").refunded_elsewhere == Decimal("10.00")


def test_a_snapshot_that_changes_nothing_returns_keeps_leaves_the_lines_as_they_were():
    """Most of fulfillment's snapshots move parcels, not what returns keeps (delivered and cancelled
    units): the lines stay the same value, so nothing parked is tried again for them."""
    state = delivered_order()
    again = fulfilled(PLACED_V1 + days(3))
    outcome = domain.apply(state, again, "input", NOW, PARK_FOR, POLICIES)
    assert outcome.state.lines is state.lines and outcome.records == ()
    later = domain.apply(outcome.state, fulfilled(PLACED_V1 + days(4), cancelled={"l2": 1}, delivered={"l1": 1}),
                         "input", NOW, PARK_FOR, POLICIES)
    assert [(x.line_id, x.delivered, x.cancelled) for x in later.state.lines][:2] == [("l1", 1, 0), ("l2", 0, 1)]
    assert later.state.line("l1").delivered_at == PLACED_V1 + days(4)


# -- money through odd sequences ------------------------------------------------------------------

ONE_LINE = (("l1", "Headphones", "electronics", 1, "60.00"),)


def partly_captured(captured_amount="50.00"):
    """A 60.00 order on one card of which only ``captured_amount`` was captured, delivered, returned
    whole and inspected as expected."""
    state, _ = run(placed(instruments=(("card-1", "CARD", "60.00"),), lines=ONE_LINE),
                   captured("card-1", captured_amount, PLACED_V1 + timedelta(hours=1)),
                   fulfilled(PLACED_V1 + days(3), lines=ONE_LINE))
    at = PLACED_V1 + days(5)
    return run(requested("r-1", at, ("l1", 1, "DAMAGED")), received("r-1", at, ("l1", 1)),
               inspected("r-1", at, ("l1", 1, "AS_EXPECTED")), state=state)


def test_a_voided_rest_of_a_partial_capture_lets_what_was_captured_be_refunded_and_says_why_not_the_rest():
    state, records = partly_captured()
    assert of(records, RefundCommand) == [] and state.parked[0].waiting_for == domain.CAPTURES_AWAITED
    state, records = run(voided("card-1", "10.00", PLACED_V1 + days(6)), state=state)
    assert [c.refund.amount for c in of(records, RefundCommand)] == [Decimal("50.00")]
    [rejected] = of(records, Rejected)
    assert rejected.reason_code == "refund_exceeds_captured" and "voided" in rejected.reason
    [notice] = [n for n in of(records, CustomerNotice) if n.type == "refund_issued"]
    assert notice.facts["not_refunded"].startswith("10.00 EUR of 60.00 EUR") and "voided" in notice.facts["not_refunded"]
    assert state.return_("r-1").status == "refund_pending" and state.parked == ()


def test_a_rest_never_captured_lapses_at_the_deadline_and_what_was_captured_is_refunded():
    state, _ = partly_captured()
    deadline = state.parked[0].deadline
    early = domain.expire(state, deadline - timedelta(minutes=1), PARK_FOR, POLICIES, "timers")
    assert early.of(RefundCommand) == [] and early.state.parked, "before the deadline it still waits"
    outcome = domain.expire(state, deadline, PARK_FOR, POLICIES, "timers")
    assert [c.refund.amount for c in outcome.of(RefundCommand)] == [Decimal("50.00")]
    assert "not captured while the refund waited for it" in outcome.of(Rejected)[0].reason
    assert outcome.state.parked == () and outcome.state.instrument("card-1").lapsed


def test_nothing_captured_at_all_tells_the_customer_nothing_can_be_refunded():
    state, _ = partly_captured("0.01")
    state, records = run(voided("card-1", "59.99", PLACED_V1 + days(6)), state=state)
    [command] = of(records, RefundCommand)
    assert command.refund.amount == Decimal("0.01")
    state, _ = run(refund_result(command.key, "card-1", "0.01", PLACED_V1 + days(7)), state=state)
    assert state.refundable(state.instrument("card-1")) == 0


def test_a_provider_outcome_repeated_under_a_new_event_id_counts_once():
    capture = captured("card-1", "35.00", PLACED_V1 + days(1), capture_id="cap-rest")
    state, _ = run(placed(), captured("card-1", "100.00", PLACED_V1), capture, replace(capture, event_id="again"),
                   fulfilled(PLACED_V1 + days(3)))
    elsewhere = refund_result("console-refund-7", "card-1", "30.00", PLACED_V1 + days(5))
    state, records = run(elsewhere, replace(elsewhere, event_id="connector-redelivery"), state=state)
    card = state.instrument("card-1")
    assert (card.refunded_elsewhere, card.captured) == (Decimal("30.00"), Decimal("135.00"))
    assert [r.reason_code for r in of(records, Rejected)] == ["duplicate_provider_outcome"]
    assert ReturnsState.from_json(orjson.loads(orjson.dumps(state.to_json()))).instrument("card-1").operations == \
        card.operations


def test_a_refund_made_elsewhere_above_what_is_captured_is_refused_as_order_state_refuses_it():
    state = delivered_order()
    state, records = run(refund_result("console-refund-8", "card-1", "145.00", PLACED_V1 + days(5)), state=state)
    [rejected] = of(records, Rejected)
    assert rejected.reason_code == "refund_exceeds_captured"
    assert state.refundable(state.instrument("card-1")) == Decimal("135.00")


def test_an_answer_to_our_own_request_that_this_state_does_not_hold_waits_for_the_request():
    """After a crash the request's cause may be read again after the provider's answer: the answer
    is matched to the request once it is made again, never booked as a refund made elsewhere."""
    state = delivered_order()
    at = PLACED_V1 + days(5)
    ahead, _ = run(requested("r-1", at, ("l2", 1, "DAMAGED")), received("r-1", at, ("l2", 1)),
                   inspected("r-1", at, ("l2", 1, "AS_EXPECTED")), state=state)
    [command] = [r for r in ahead.refunds]
    answer = refund_result(command.keys[0], "card-1", command.amount, at + days(1))
    # the same order before the inspection was applied: the answer comes first
    state, records = run(requested("r-1", at, ("l2", 1, "DAMAGED")), received("r-1", at, ("l2", 1)), answer,
                         replace(answer, event_id="redelivered"), state=state)
    assert state.instrument("card-1").refunded_elsewhere == 0
    assert [p.waiting_for for p in state.parked] == ["the refund request it answers"] * 2
    state, records = run(inspected("r-1", at, ("l2", 1, "AS_EXPECTED")), state=state)
    assert [r.status for r in state.refunds] == ["succeeded"] and state.parked == ()
    assert [n.type for n in of(records, CustomerNotice)].count("refund_completed") == 1
    assert [r.reason_code for r in of(records, Rejected)] == ["duplicate_provider_outcome"]
    assert state.instrument("card-1").refunded_elsewhere == 0


def test_a_payment_event_for_an_unknown_instrument_or_in_another_currency_is_rejected():
    state = delivered_order()
    at = PLACED_V1 + days(5)
    foreign = ev("PaymentVoided", {"instrument_id": "card-1", "amount": {"amount": Decimal("1.00"), "currency": "JPY"}},
                 at)
    unknown = ev("AuthorizationExpired", {"instrument_id": "card-9", "authorization_id": "a"}, at)
    _, records = run(foreign, unknown, state=state)
    assert [r.reason_code for r in of(records, Rejected)] == ["currency_mismatch", "unknown_instrument"]


# -- a success for any attempt completes the refund -----------------------------------------------

def refund_of_ten():
    state = delivered_order()
    at = PLACED_V1 + days(6)
    state, records = run(requested("r-1", at, ("l2", 1, "WRONG_ITEM")), received("r-1", at, ("l2", 1)),
                         inspected("r-1", at, ("l2", 1, "AS_EXPECTED")), state=state)
    [command] = of(records, RefundCommand)
    return state, command, at


def test_an_attempt_that_failed_and_then_succeeded_late_completes_the_refund_once():
    state, first, at = refund_of_ten()
    state, records = run(refund_result(first.key, "card-1", "10.00", at, ok=False), state=state)
    [second] = of(records, RefundCommand)
    state, records = run(refund_result(first.key, "card-1", "10.00", at + days(1 / 24)), state=state)
    [refund] = state.refunds
    assert (refund.status, refund.paid_by) == ("succeeded", first.key)
    assert state.return_("r-1").status == "refunded"
    assert [n.type for n in of(records, CustomerNotice)] == ["refund_completed"]
    assert [m.name for m in of(records, domain.Measure)] == ["refund_completion_seconds", "return_cycle_seconds"]
    assert state.refundable(state.instrument("card-1")) == Decimal("125.00")
    # the open attempt failing later changes nothing and is not retried
    after_failure, records = run(refund_result(second.key, "card-1", "10.00", at + days(1), ok=False), state=state)
    assert of(records, RefundCommand) == [] and after_failure.refunds == state.refunds
    # the open attempt succeeding too: refunded twice, booked, escalated; the customer is not told again
    state, records = run(refund_result(second.key, "card-1", "10.00", at + days(1)), state=state)
    [refund] = state.refunds
    assert (refund.status, refund.surplus) == ("overpaid", Decimal("10.00"))
    assert of(records, CustomerNotice) == [] and of(records, domain.Measure) == []
    assert state.refunded(state.instrument("card-1")) == Decimal("20.00")
    assert state.refundable(state.instrument("card-1")) == Decimal("115.00")
    assert domain.violated_invariants(state) == []


def test_a_replaced_refund_that_succeeds_late_settles_the_return_and_its_fallback_is_not_needed():
    state, command, at = refund_of_ten()
    keys = [command.key]
    for _ in range(2):
        state, records = run(refund_result(keys[-1], "card-1", "10.00", at, ok=False), state=state)
        keys.append(of(records, RefundCommand)[0].key)
    state, records = run(refund_result(keys[-1], "card-1", "10.00", at, ok=False), state=state)
    [fallback] = of(records, RefundCommand)
    state, records = run(refund_result(keys[0], "card-1", "10.00", at + days(1)), state=state)
    original = state.refunds[0]
    assert (original.status, original.paid_by) == ("succeeded", keys[0])
    assert [n.type for n in of(records, CustomerNotice)] == ["refund_completed"]
    assert state.return_("r-1").status == "refunded"
    failed, records = run(refund_result(fallback.key, "card-1", "10.00", at + days(2), ok=False), state=state)
    assert of(records, RefundCommand) == [] and failed.return_("r-1").status == "refunded"
    state, records = run(refund_result(fallback.key, "card-1", "10.00", at + days(2)), state=state)
    assert state.refunds[1].status == "overpaid" and of(records, CustomerNotice) == []
    assert state.refunded(state.instrument("card-1")) == Decimal("20.00")


# -- discounts ------------------------------------------------------------------------------------

def test_a_returned_or_cancelled_line_is_refunded_at_what_was_paid_for_it_net_of_discounts():
    """Three mugs at 10.00 with 3.00 off the line, a 20.00 teapot, 10.00 off the order: the order's
    discount is shared 5.74 / 4.26 (in proportion to 27.00 and 20.00; the cent left over to the
    larger remainder) and a mug costs what is left of its line, split to the cent over its units:
    7.09, 7.09, 7.08."""
    lines = (("l1", "Mug", "home", 3, "10.00"), ("l2", "Teapot", "home", 1, "20.00"))
    order = placed(instruments=(("card-1", "CARD", "37.00"),), lines=lines)
    order.payload["lines"][0]["discounts"] = [{"code": "MUGS3", "amount": {"amount": Decimal("3.00"), "currency": "EUR"}}]
    order.payload["discounts"] = [{"code": "WELCOME10", "amount": {"amount": Decimal("10.00"), "currency": "EUR"}}]
    order.payload["total"] = {"amount": Decimal("37.00"), "currency": "EUR"}
    state, _ = run(order, captured("card-1", "37.00", PLACED_V1), fulfilled(PLACED_V1 + days(2), lines=lines))
    mug = state.line("l1")
    assert (mug.line_discounts, mug.order_discount_share, mug.price.net) == (Decimal("3.00"), Decimal("5.74"),
                                                                            Decimal("21.26"))
    at = PLACED_V1 + days(4)
    state, records = run(requested("r-1", at, ("l1", 2, "DAMAGED")), received("r-1", at, ("l1", 2)),
                         inspected("r-1", at, ("l1", 2, "AS_EXPECTED")), state=state)
    [decided] = of(records, Decided)
    [net] = [t for t in decided.trace if t["rule"] == "net_price"]
    assert "less 3.00 of its discounts, less 5.74 of the order's discounts: 21.26 EUR" in net["detail"]
    assert [c.refund.amount for c in of(records, RefundCommand)] == [Decimal("14.18")]
    # the last mug, cancelled: what is left of the line, to the cent
    state, records = run(fulfilled(PLACED_V1 + days(5), delivered={"l1": 2, "l2": 1}, cancelled={"l1": 1},
                                   lines=lines), state=state)
    assert [c.refund.amount for c in of(records, RefundCommand)] == [Decimal("7.08")]
    teapot = state.line("l2").price
    assert mug.price.net + teapot.net == Decimal("37.00")
