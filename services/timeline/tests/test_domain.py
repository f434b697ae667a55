"""The timeline's pure domain: entries, the view, tags, accuracy, escalations, determinism."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from story import ETA, T0, eta_slipped, line_snapshot, split_order_story

from orderops.model.catalog import (
    FULFILLMENT_STATE_CHANGES,
    FULFILLMENT_STATUS,
    NOTIFICATIONS_DELIVERIES,
    RETURNS_STATE_CHANGES,
    SUPPORT_ACTIONS,
    SUPPORT_CONTACTS,
    TIMELINE,
    TIMER_TOPICS,
    WAREHOUSE_FULFILLMENT,
)
from timeline import domain
from timeline.domain import Rules

RULES = Rules.load(Path(__file__).resolve().parents[1] / "timeline" / "rules.yaml")


def feed(events, now=None, view=None):
    outputs = []
    for topic, event in events:
        view, out = domain.apply(view, event, topic, now or event.occurred_at, RULES)
        outputs.append(out)
    return view, outputs


def entry_ids(outputs) -> list[str]:
    return sorted(e["entry_id"] for out in outputs for e in out.entries)


def tick(view, now):
    from orderops.model.envelope import Envelope

    event = Envelope(f"tick:{now.isoformat()}", view["order_id"], now, "timeline", "orderops.common.TimerFired",
                     {"due_at": now, "fired_at": now})
    return domain.apply(view, event, TIMER_TOPICS[TIMELINE].name, now, RULES)


def test_every_event_becomes_one_entry_with_a_human_summary():
    view, outputs = feed(split_order_story().events)
    entries = [e for out in outputs for e in out.entries]
    opened = [e for e in entries if e["type"] == "EscalationOpened"]
    assert len(entries) - len(opened) == len(split_order_story().events) - 3, \
        "status snapshots and notification requests are facts for the view, not entries"
    # The rule-made escalation (the second contact repeats the first) is on the timeline as well.
    assert [e["summary"] for e in opened] == [
        "escalation opened: A second support contact within 7 days with no state change in between (k2)"]
    assert opened[0]["domain"] == "escalation" and opened[0]["entry_id"] == "o-1:repeat-contact:k2:opened:1:entry"
    summaries = [e["summary"] for e in entries]
    assert "order placed: 2 line(s), 60.00 EUR" in summaries
    assert "1 of line l2 backordered until 12 Nov" in summaries
    assert "parcel P1 dispatched with DHL (JD1)" in summaries
    assert {e["domain"] for e in entries} >= {"order", "payment", "fulfillment", "shipment", "notification", "support"}
    assert [e["seq"] for e in entries] == list(range(len(entries))) == list(domain.kept_entries(view))
    assert view["order"]["state"] == "confirmed" and view["fulfillment"]["status"] == "partially_shipped"
    assert view["lines"]["l2"]["backordered"] == 1 and view["shipments"]["P1"]["tracking_number"] == "JD1"


def test_a_kept_fulfillment_snapshot_holds_every_field_a_verdict_reads():
    """The view keeps only domain.TRUTH_FIELDS of each line: every verdict must come out
    as it would from the whole line, whichever claim is wrong."""
    full = line_snapshot("l2", 3, backordered=1, shipped=1, eta=ETA) | {"cancelled": 1}
    kept = {k: full[k] for k in domain.TRUTH_FIELDS if k in full}
    right = {"line_id": "l2", "name": "Teapot", "quantity_in_this_shipment": 1, "quantity_shipped": 1,
             "quantity_delivered": 0, "quantity_backordered": 1, "quantity_cancelled": 1, "eta": ETA, "shipment_id": None}
    wrong = [right, right | {"quantity_backordered": 2}, right | {"quantity_cancelled": 0}, right | {"quantity_shipped": 3},
             right | {"eta": ETA + timedelta(days=2)}]
    verdicts = [domain._accuracy({"l2": full}, [claim]) for claim in wrong]
    assert verdicts == [domain._accuracy({"l2": kept}, [claim]) for claim in wrong]
    assert [reason for _, reason in verdicts] == ["", "backorder_quantity", "cancelled_quantity", "shipped_quantity", "eta"]


def test_tags_come_from_rules_and_attach_to_contacts():
    view, outputs = feed(split_order_story().events)
    assert "backorder" in view["tags"] and view["tags"]["backorder"]["source"] == "rule"
    contacts = [c for out in outputs for c in out.contacts]
    assert contacts == [(False, ("backorder",)), (True, ("backorder",))]


def test_repeat_contact_without_a_change_escalates():
    view, outputs = feed(split_order_story().events)
    opened = [e for out in outputs for e in out.escalations if e[1] == "EscalationOpened"]
    assert [view["escalations"][e[0]]["rule"] for e in opened] == ["repeat-contact"]


def test_delivered_claims_are_checked_against_the_fulfillment_truth():
    _, outputs = feed(split_order_story().events)
    assert [a for out in outputs for a in out.accuracy] == [("accurate", "ok")]
    story = split_order_story()
    delivered = next(e for _, e in story.events if e.short_type == "NotificationDelivered")
    delivered.payload["lines"][1]["quantity_backordered"] = 0  # the message forgot the backorder
    _, outputs = feed(story.events)
    assert [a for out in outputs for a in out.accuracy] == [("inaccurate", "backorder_quantity")]


def test_accuracy_is_judged_once_settled_whatever_the_arrival_order():
    """The delivery may arrive before its request or before the truth of its moment (other topics):
    the verdict waits for both, is counted once, and is the same for every arrival order."""
    events = split_order_story().events
    kinds = [e.short_type for _, e in events]
    request, delivery = kinds.index("NotificationRequested"), kinds.index("NotificationDelivered")
    snapshots = [i for i, k in enumerate(kinds) if k == "FulfillmentStatusChanged"]
    moved = [events[delivery], events[request], *(events[i] for i in snapshots)]
    rest = [e for i, e in enumerate(events) if i not in (request, delivery, *snapshots)]
    for order in ([*rest[:1], *moved, *rest[1:]], [*rest, *reversed(moved)], events):
        view, outputs = feed(order)
        assert [a for out in outputs for a in out.accuracy] == [("accurate", "ok")], [e.short_type for _, e in order]
        assert view["notifications"][0]["accurate"] is True


def test_a_message_sent_after_the_facts_changed_is_still_judged_at_its_decision():
    """Claims are judged at the moment the message was decided (its request's event time), not at
    the notifier's send time: a later snapshot does not make an accurate message inaccurate."""
    story = split_order_story()
    story.after(days=5).add(FULFILLMENT_STATUS, "FulfillmentStatusChanged", status="shipped", backordered=False,
                            lines=[line_snapshot("l1", 2, shipped=2), line_snapshot("l2", 1, shipped=1)])
    events = story.events
    delivery = next(i for i, (_, e) in enumerate(events) if e.short_type == "NotificationDelivered")
    topic, sent = events[delivery]
    late = replace(sent, occurred_at=sent.occurred_at + timedelta(days=10))  # sent after the teapot shipped
    events = [e for i, e in enumerate(events) if i != delivery] + [(topic, late)]
    _, outputs = feed(events)
    assert [a for out in outputs for a in out.accuracy] == [("accurate", "ok")]


def test_aging_escalations_open_when_due_and_resolve_when_cleared():
    view, _ = feed(split_order_story().events)
    # The first thing that can go wrong: parcel P1 (dispatched at T0 + 5h02) silent for 72 hours.
    assert domain.next_deadline(view, T0 + timedelta(days=3), RULES) == T0 + timedelta(hours=5, minutes=2, days=3)
    view, out = tick(view, ETA + timedelta(hours=1))
    rules = sorted(view["escalations"][e[0]]["rule"] for e in out.escalations if e[1] == "EscalationOpened")
    assert rules == ["authorization-expiring", "backorder-overdue", "shipment-silent"]
    assert {"payment-failure", "backorder"} <= set(view["tags"])
    # The backorder ships: its escalation resolves by itself.
    from story import Feed, line_snapshot

    f = Feed()
    f.at = ETA + timedelta(hours=2)
    f.n = 100
    f.add(FULFILLMENT_STATUS, "FulfillmentStatusChanged", status="shipped", backordered=False,
          lines=[line_snapshot("l1", 2, shipped=2), line_snapshot("l2", 1, shipped=1)])
    view, outputs = feed(f.events, now=ETA + timedelta(hours=2), view=view)
    resolved = [e[0] for out in outputs for e in out.escalations if e[1] == "EscalationResolved"]
    assert any(":backorder-overdue:" in r for r in resolved) and any(":authorization-expiring:" in r for r in resolved)


def test_an_eta_slip_without_a_notice_escalates_after_the_grace_period():
    from story import Feed, line_snapshot

    view, _ = feed(split_order_story().events)
    f = Feed()
    f.at, f.n = T0 + timedelta(days=3), 200
    f.add(FULFILLMENT_STATUS, "FulfillmentStatusChanged", status="partially_shipped", backordered=True,
          lines=[line_snapshot("l1", 2, shipped=2), line_snapshot("l2", 1, backordered=1, eta=ETA + timedelta(days=4))])
    view, _ = feed(f.events, view=view)
    view, out = tick(view, T0 + timedelta(days=3, hours=11))
    assert not [e for e in out.escalations if ":eta-slipped-silently:" in e[0]]
    view, out = tick(view, T0 + timedelta(days=3, hours=12))
    assert [e[1] for e in out.escalations if ":eta-slipped-silently:" in e[0]] == ["EscalationOpened"]


def test_a_promised_eta_that_slips_breaks_the_message_and_escalates_until_a_message_corrects_it():
    """The story's message promised the teapot by 12 Nov and was accurate when decided; three days
    later the ETA moves to 16 Nov. The message is flagged (which claim, which line, since when), the
    flag is counted once, and with no message to the customer within the grace period an escalation
    opens; the message that tells the new ETA corrects it and the escalation resolves."""
    view, _ = feed(split_order_story().events)
    slip = eta_slipped(days=4)
    view, outputs = feed(slip.events, view=view)
    [note] = view["notifications"]
    assert note["accurate"] is True and note["broken"] == {
        "claim": "eta", "line_id": "l2", "detail": "promised Teapot by 12 Nov; now expected 16 Nov",
        "at": slip.at, "corrected_at": None}
    assert [a for out in outputs for a in out.accuracy] == [("broken", "eta")]

    view, out = tick(view, slip.at + timedelta(hours=11, minutes=59))
    assert not [e for e in out.escalations if ":promise-broken:" in e[0]]
    view, out = tick(view, slip.at + timedelta(hours=12))
    [(escalation_id, kind, _)] = [e for e in out.escalations if ":promise-broken:" in e[0]]
    assert kind == "EscalationOpened" and "no message told the customer since" in view["escalations"][escalation_id]["reason"]
    view, outputs = feed(eta_slipped(days=6, at_days=4, n=300).events, view=view)  # slips again: still one flag
    assert not [a for out in outputs for a in out.accuracy] and view["notifications"][0]["broken"]["at"] == slip.at

    from story import Feed

    f = Feed()
    f.at, f.n = T0 + timedelta(days=4, hours=1), 400
    new_eta = {"line_id": "l2", "name": "Teapot", "quantity_in_this_shipment": 0, "quantity_shipped": 0,
               "quantity_delivered": 0, "quantity_backordered": 1, "quantity_cancelled": 0,
               "eta": ETA + timedelta(days=6), "shipment_id": None}
    f.add(NOTIFICATIONS_DELIVERIES, "NotificationDelivered", delivery_id="n2/email", notification_ids=["n2"],
          type="backorder_eta_changed", channel="email", outcome="SENT", attempts=1, subject="New date for your teapot",
          body="now 18 Nov", lines=[new_eta], amounts=[], reason="")
    view, outputs = feed(f.events, view=view)
    assert view["notifications"][0]["broken"]["corrected_at"] == f.at
    assert [e[1] for out in outputs for e in out.escalations if e[0] == escalation_id] == ["EscalationResolved"]


def test_a_line_cancelled_after_a_message_said_it_would_follow_breaks_that_promise():
    view, _ = feed(split_order_story().events)
    view, outputs = feed(eta_slipped(0, cancelled=1).events, view=view)
    broken = view["notifications"][0]["broken"]
    assert (broken["claim"], broken["detail"]) == ("cancelled", "said 1 × Teapot would follow; 1 cancelled since")
    assert [a for out in outputs for a in out.accuracy] == [("broken", "cancelled")]


def test_a_broken_promise_is_found_whatever_order_the_topics_arrive_in():
    """The snapshot that breaks the promise may be read before the message's request and delivery
    (other topics): the verdict and its counts are the same."""
    events = split_order_story().events + eta_slipped(days=4).events
    kinds = [e.short_type for _, e in events]
    request, delivery = kinds.index("NotificationRequested"), kinds.index("NotificationDelivered")
    late = [events[request], events[delivery]]
    early = [e for i, e in enumerate(events) if i not in (request, delivery)]
    for order in (events, early + late, early + late[::-1]):
        view, outputs = feed(order)
        assert [a for out in outputs for a in out.accuracy] == [("accurate", "ok"), ("broken", "eta")]
        assert view["notifications"][0]["broken"]["at"] == T0 + timedelta(days=3)


def test_a_message_that_said_a_refund_was_on_its_way_is_broken_when_that_refund_fails_for_good():
    """The customer was told 40.00 was on its way to card-1; two days later that refund gave up. The
    message is flagged (claim refund, the instrument, since when), counted once, and with no message
    about money on the card within the grace period refund-promise-broken opens (promise-broken,
    for items, does not); the message that tells the customer what happens now corrects it."""
    from story import Feed, money

    view, _ = feed(split_order_story().events)
    f = Feed()
    f.at, f.n = T0 + timedelta(days=5), 800
    f.add(RETURNS_STATE_CHANGES, "RefundRequested", refund_id="o-1:return:r1:card-1#1", return_id="r1",
          instrument_id="card-1", channel="CARD", method="ORIGINAL_PAYMENT", amount=money("40.00"), reason="return r1",
          attempt=1, sla_hours=120)
    f.transition(RETURNS_STATE_CHANGES, "refund", "o-1:return:r1:card-1", "none", "requested")
    claim = {"instrument_id": "card-1", "channel": "CARD", "amount": money("40.00")}
    f.add(NOTIFICATIONS_DELIVERIES, "NotificationDelivered", delivery_id="n9/email", notification_ids=["n9"],
          type="refund_issued", channel="email", outcome="SENT", attempts=1, subject="Your refund is on its way",
          body="40.00 to your card", lines=[], amounts=[claim], reason="")
    view, outputs = feed(f.events, view=view)
    assert "broken" not in view["notifications"][-1]
    failed = Feed()
    failed.at, failed.n = T0 + timedelta(days=7), 900
    failed.transition(RETURNS_STATE_CHANGES, "refund", "o-1:return:r1:card-1", "requested", "gave_up")
    view, outputs = feed(failed.events, view=view)
    note = view["notifications"][-1]
    assert note["broken"] == {"claim": "refund", "instrument_id": "card-1", "at": failed.at, "corrected_at": None,
                              "detail": "said 40.00 EUR was on its way to card card-1; that refund failed for good"}
    assert [a for out in outputs for a in out.accuracy] == [("broken", "refund")]
    view, out = tick(view, failed.at + timedelta(hours=12))
    opened = [e[0] for e in out.escalations if e[1] == "EscalationOpened"]
    assert "o-1:refund-promise-broken:n9/email:card-1" in opened and not [e for e in opened if ":promise-broken:" in e]
    assert view["tags"]["refund-delay"]["by"] in ("refund-failed", "refund-promise-broken")
    told = Feed()
    told.at, told.n = failed.at + timedelta(hours=13), 950
    told.add(NOTIFICATIONS_DELIVERIES, "NotificationDelivered", delivery_id="n10/email", notification_ids=["n10"],
             type="refund_not_possible", channel="email", outcome="SENT", attempts=1, subject="About your refund",
             body="we could not refund your card", lines=[], amounts=[claim], reason="")
    view, outputs = feed(told.events, view=view)
    assert view["notifications"][-2]["broken"]["corrected_at"] == told.at
    assert view["escalations"]["o-1:refund-promise-broken:n9/email:card-1"]["state"] == "resolved"


def test_a_return_left_in_review_beyond_its_sla_escalates_and_the_leads_approval_clears_it():
    """The policy sent the return to a lead; a day later nobody has looked at it. The escalation
    opens on a timer tick (no later event of the order needed) and is on the timeline; the lead's
    approval moves the return on, and the escalation closes by itself."""
    from story import Feed

    view, _ = feed(split_order_story().events)
    f = Feed()
    f.at, f.n = T0 + timedelta(days=3), 500
    f.add(RETURNS_STATE_CHANGES, "ReturnAuthorizationDecided", return_id="r1", decision="NEEDS_REVIEW",
          policy="standard/v2", trace=[], reason="outside the 30-day window by 2 days")
    f.transition(RETURNS_STATE_CHANGES, "return", "r1", "requested", "needs_review")
    view, _ = feed(f.events, view=view)
    assert domain.next_deadline(view, f.at, RULES) <= f.at + timedelta(hours=24)
    view, out = tick(view, f.at + timedelta(hours=23))
    assert not [e for e in out.escalations if ":return-needs-review:" in e[0]]
    view, out = tick(view, f.at + timedelta(hours=24))
    [(escalation_id, kind, _)] = [e for e in out.escalations if ":return-needs-review:" in e[0]]
    assert kind == "EscalationOpened" and "outside the 30-day window" in view["escalations"][escalation_id]["reason"]
    assert [e["type"] for e in out.entries] == ["EscalationOpened"]

    g = Feed()
    g.at, g.n = f.at + timedelta(hours=30), 600
    g.add(SUPPORT_ACTIONS, "PolicyExceptionApproved", actor={"user_id": "lee", "role": "lead"}, return_id="r1",
          reason="loyal customer")
    g.transition(RETURNS_STATE_CHANGES, "return", "r1", "needs_review", "authorized")
    view, outputs = feed(g.events, view=view)
    closed = [e for out in outputs for e in out.entries if e["type"] == "EscalationResolved"]
    assert [e["summary"] for e in closed] == ["escalation closed, its condition cleared: return-needs-review:r1"]
    assert view["escalations"][escalation_id]["state"] == "resolved"


def test_a_refund_is_judged_by_the_sla_its_command_carries():
    """The SLA comes from the refund's return policy version, as returns' command carries it: a
    gift-card refund (24 h there) is past it a day after it was asked for; one whose command names
    no SLA (its policy version was unknown) is not judged."""
    from story import Feed, money

    view, _ = feed(split_order_story().events)
    f = Feed()
    f.at, f.n = T0 + timedelta(days=3), 700
    for refund_id, sla in (("o-1:return:r1:gift-1", 24), ("o-1:return:r1:card-1", None)):
        f.add(RETURNS_STATE_CHANGES, "RefundRequested", refund_id=f"{refund_id}#1", return_id="r1",
              instrument_id=refund_id.rsplit(":", 1)[1], channel="GIFT_CARD", method="STORE_CREDIT", amount=money("5.00"),
              reason="return r1", attempt=1, sla_hours=sla)
        f.transition(RETURNS_STATE_CHANGES, "refund", refund_id, "none", "requested")
    view, _ = feed(f.events, view=view)
    view, out = tick(view, f.at + timedelta(hours=23, minutes=59))
    assert not [e for e in out.escalations if ":refund-past-sla:" in e[0]]
    view, out = tick(view, f.at + timedelta(hours=24))
    assert [e[0] for e in out.escalations if ":refund-past-sla:" in e[0]] == ["o-1:refund-past-sla:o-1:return:r1:gift-1"]


def test_the_summary_says_what_the_order_as_a_whole_waits_for():
    view, _ = feed(split_order_story().events)
    assert domain.order_summary(view) == "2 of 3 items on the way; the Teapot is backordered until 12 Nov"
    from story import Feed, money

    f = Feed()
    f.at, f.n = T0 + timedelta(days=3), 800
    f.add(FULFILLMENT_STATUS, "FulfillmentStatusChanged", status="partially_shipped", backordered=True,
          lines=[line_snapshot("l1", 2, delivered=2), line_snapshot("l2", 1, backordered=1, eta=ETA)])
    f.add(RETURNS_STATE_CHANGES, "RefundRequested", refund_id="o-1:return:r1:card-1#1", return_id="r1",
          instrument_id="card-1", channel="CARD", method="ORIGINAL_INSTRUMENT", amount=money("40.00"),
          reason="return r1", attempt=1, sla_hours=72)
    f.transition(RETURNS_STATE_CHANGES, "refund", "o-1:return:r1:card-1", "none", "requested")
    view, _ = feed(f.events, view=view)
    assert domain.order_summary(view) == ("2 of 3 items delivered; the Teapot is backordered until 12 Nov; "
                                          "the refund of 40.00 EUR is with the card provider since 05 Nov")
    assert domain.order_summary(domain.new_view("o-2")) == "nothing is waiting"


def test_agents_acknowledge_and_resolve_and_a_resolved_escalation_stays_resolved():
    from story import Feed

    view, outputs = feed(split_order_story().events)
    [escalation_id] = [e[0] for out in outputs for e in out.escalations]
    f = Feed()
    f.at, f.n = T0 + timedelta(days=3), 300
    actor = {"user_id": "lee", "role": "lead"}
    f.add(SUPPORT_ACTIONS, "EscalationAcknowledged", actor=actor, escalation_id=escalation_id, note="on it")
    f.add(SUPPORT_ACTIONS, "EscalationResolvedByAgent", actor=actor, escalation_id=escalation_id, note="called back")
    f.add(SUPPORT_ACTIONS, "TagApplied", actor=actor, tag="vip", target_kind="order", target_id="o-1")
    view, outputs = feed(f.events, view=view)
    kinds = [e[1] for out in outputs for e in out.escalations]
    assert kinds == ["EscalationUpdated", "EscalationResolved"]
    assert view["escalations"][escalation_id]["state"] == "resolved" and view["tags"]["vip"]["by"] == "lee"


def test_the_same_events_give_the_same_outputs_and_duplicates_change_nothing():
    story = split_order_story().events
    first_view, first = feed(story)
    second_view, second = feed(story)
    assert first_view == second_view and [vars(o) for o in first] == [vars(o) for o in second]
    again, out = domain.apply(first_view, story[3][1], story[3][0], T0, RULES)
    assert out.duplicate and again == first_view


def test_an_order_keeps_its_last_entries_apart_from_its_view():
    """Entries go to their own table, one key each: the view, written at every event, holds only
    their count, so its size does not grow with the order's history."""
    view = domain.new_view("o-1")
    assert list(domain.kept_entries(view)) == []
    view["entry_count"] = domain.MAX_ENTRIES + 7
    assert list(domain.kept_entries(view)) == list(range(7, domain.MAX_ENTRIES + 7))
    assert domain.entry_key("o-1", 7) != domain.entry_key("o-17", 0) != domain.entry_key("o-1", 70)
    full, outputs = feed(split_order_story().events)
    summaries = [e["summary"] for out in outputs for e in out.entries]
    assert full["entry_count"] == len(summaries) and "entries" not in full
    assert not [s for s in summaries if s in repr(full)], "an entry's text is in the view"


def test_apply_leaves_the_view_it_was_given_as_it_was():
    """The agent keeps the view it last wrote and hands it to apply again; apply shares the parts
    it only ever replaces (domain.SHARED_PARTS) with the new view, and must change none of them."""
    import copy

    view = None
    for topic, event in split_order_story().events + [(None, None)] * 3:
        kept, given = view, copy.deepcopy(view)
        if event is None:  # time passes: escalations open and resolve on ticks
            view, _ = tick(view, view["last_event_at"] + timedelta(days=3))
        else:
            view, _ = domain.apply(view, event, topic, event.occurred_at, RULES)
        assert kept == given, f"apply changed the view it was given at {event.short_type if event else 'a tick'}"
    assert view["entry_count"] and view["truths"] and view["escalations"]


def test_the_final_view_does_not_depend_on_cross_topic_arrival_order():
    story = split_order_story().events
    in_order, in_order_outputs = feed(story, now=T0 + timedelta(days=3))
    by_topic: dict[str, list] = {}
    for item in story:
        by_topic.setdefault(item[0], []).append(item)
    rng = random.Random(4)
    for _ in range(20):
        queues = {k: list(v) for k, v in by_topic.items()}
        shuffled = []
        while queues:
            topic = rng.choice(sorted(queues))
            shuffled.append(queues[topic].pop(0))
            if not queues[topic]:
                del queues[topic]
        view, outputs = feed(shuffled, now=T0 + timedelta(days=3))
        for key in ("order", "payments", "fulfillment", "lines", "shipments", "tags", "entry_count"):
            assert view[key] == in_order[key], key
        assert entry_ids(outputs) == entry_ids(in_order_outputs)


def test_rules_are_data_and_an_unknown_kind_is_refused(tmp_path):
    assert {r.kind for r in RULES.escalations} == set(domain.CONDITIONS)
    bad = tmp_path / "rules.yaml"
    bad.write_text("escalations:\n  - {id: x, description: y, kind: telepathy}\n")
    import pytest

    with pytest.raises(ValueError, match="unknown kind 'telepathy'"):
        Rules.load(bad)


def test_a_delivered_parcel_is_never_silent_even_before_fulfillment_reports_it():
    """The warehouse's ShipmentDelivered counts at once; fulfillment's transition comes later."""
    from story import Feed

    view, _ = feed(split_order_story().events)
    f = Feed()
    f.at, f.n = T0 + timedelta(days=1), 400
    f.add(WAREHOUSE_FULFILLMENT, "ShipmentDelivered", shipment_id="P1")
    f.after(days=5).add(SUPPORT_CONTACTS, "ContactOpened", contact_id="k9", customer_id="c-1", channel="EMAIL",
                        reason="thanks")
    view, outputs = feed(f.events, view=view)
    assert view["shipments"]["P1"]["state"] == "delivered"
    assert not [e for out in outputs for e in out.escalations if ":shipment-silent:" in e[0]]
    f2 = Feed()
    f2.at, f2.n = T0 + timedelta(days=7), 500
    f2.transition(FULFILLMENT_STATE_CHANGES, "shipment", "P1", "dispatched", "in_transit")  # late, stale
    view, _ = feed(f2.events, view=view)
    assert view["shipments"]["P1"]["state"] == "delivered", "a late transition never moves it back"


def test_an_agent_action_that_overtook_its_escalation_is_applied_when_it_opens():
    """Actions and contacts come on different topics: an acknowledgement may be read before the
    repeat contact that opened its escalation. It waits; the records are the same either way."""
    from story import Feed

    story = split_order_story().events
    view, outputs = feed(story)
    [escalation_id] = [e[0] for out in outputs for e in out.escalations]
    f = Feed()
    f.at, f.n = T0 + timedelta(days=3), 600
    f.add(SUPPORT_ACTIONS, "EscalationAcknowledged", actor={"user_id": "ann", "role": "agent"},
          escalation_id=escalation_id, note="on it")
    ack = f.events
    _, in_order = feed(story + ack)
    contact_last = story[:-1] + ack + story[-1:]
    view, early = feed(contact_last)
    assert view["escalations"][escalation_id]["state"] == "acknowledged"
    assert sorted(repr(e) for out in early for e in out.escalations) == \
        sorted(repr(e) for out in in_order for e in out.escalations)


def test_a_tracking_link_that_is_not_http_never_reaches_the_view():
    story = split_order_story()
    events = [(topic, replace(e, payload={**e.payload, "tracking_url": "javascript:alert(document.cookie)"})
               if e.short_type == "ShipmentDispatched" else e) for topic, e in story.events]
    view, _ = feed(events)
    assert view["shipments"]["P1"]["tracking_url"] == "" and view["shipments"]["P1"]["tracking_number"] == "JD1"


def test_the_support_index_answers_the_console_as_a_scan_of_the_views_would():
    from timeline.domain import SupportIndex

    at = T0

    def view(order_id, customer_id, email, escalations, placed):
        return {"order_id": order_id, "customer": {"customer_id": customer_id, "email": email}, "placed_at": placed,
                "order": {"state": "confirmed"}, "fulfillment": {"status": "unfulfilled"},
                "escalations": {f"{order_id}:{rule}": {"rule": rule, "state": state, "opened_at": opened}
                                for rule, state, opened in escalations}}

    views = {
        "o1": view("o1", "c-1", "Ada@Example.com", [("repeat-contact", "open", at), ("refund-sla", "resolved", at)], at),
        "o2": view("o2", "c-1", "ada@example.com", [("repeat-contact", "acknowledged", at + timedelta(hours=1))],
                   at + timedelta(days=1)),
        "o3": view("o3", "c-2", "bob@example.com", [], at),
    }
    index = SupportIndex()
    index.rebuild(views.items())

    def scanned(state, rule):
        return sorted((eid, o) for o, v in views.items() for eid, e in v["escalations"].items()
                      if (state == "all" or e["state"] == state or (state == "open" and e["state"] != "resolved"))
                      and rule in (None, e["rule"]))

    for state in ("open", "acknowledged", "resolved", "all"):
        for rule in (None, "repeat-contact", "refund-sla"):
            assert sorted((e["escalation_id"], e["order_id"]) for e in index.escalations(state, rule)) == scanned(state, rule)
    assert [o["order_id"] for o in index.orders_of(" ADA@example.com ")] == ["o2", "o1"], "newest first, any case"
    assert [o["order_id"] for o in index.orders_of("c-1")] == ["o2", "o1"]
    assert index.orders_of("c-9") == [] and index.orders_of("") == []
    index.update("o1", view("o1", "c-3", "cy@example.com", [], at))  # the order's customer changed
    assert [o["order_id"] for o in index.orders_of("c-1")] == ["o2"] and index.orders_of("c-3")[0]["order_id"] == "o1"
    counts = index.counts(at + timedelta(hours=2), RULES)
    assert counts[("repeat-contact", "under-4h")] == 1 and sum(counts.values()) == 1, "o2's acknowledged one"


def test_a_refund_paid_twice_escalates_for_reversal():
    from orderops.model.catalog import RETURNS_STATE_CHANGES

    f = split_order_story()
    f.after(days=9).transition(RETURNS_STATE_CHANGES, "refund", "o-1:return:r-1:0:card-1", "requested", "succeeded")
    f.after(hours=1).transition(RETURNS_STATE_CHANGES, "refund", "o-1:return:r-1:0:card-1", "succeeded", "overpaid",
                                "attempt #2 succeeded too: 10.00 EUR refunded twice; ask the provider to reverse it")
    view, outputs = feed(f.events)
    opened = [view["escalations"][e[0]] for out in outputs for e in out.escalations if e[1] == "EscalationOpened"]
    assert "refund-overpaid" in [e["rule"] for e in opened]
    assert "refund-overpaid" in view["tags"]
