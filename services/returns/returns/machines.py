"""The return machine and the refund machine: each one table, read top to bottom."""

from __future__ import annotations

from orderops.model.workflow import ANY, Machine

RETURN = Machine(
    name="return",
    initial="new",
    terminal=frozenset({"rejected", "closed"}),
    reversible={"needs_review": "a lead approves a policy exception",
                "partially_refunded": "the rest of the parcel arriving",
                "refund_failed": "an attempt the provider confirms late"},
    rows=(
        # state                 trigger               next state
        ("new",                 "request",            "requested"),
        ("requested",           "authorize",          "authorized"),
        ("requested",           "reject",             "rejected"),
        ("requested",           "review",             "needs_review"),
        ("needs_review",        "approve_exception",  "authorized"),
        ("authorized",          "receive",            "received"),
        ("received",            "receive",            "received"),
        ("received",            "inspect",            "inspected"),
        ("inspected",           "issue_refunds",      "refund_pending"),
        ("inspected",           "nothing_to_refund",  "closed"),
        ("refund_pending",      "issue_refunds",      "refund_pending"),
        ("refund_pending",      "refunds_settled",    "refunded"),
        ("refund_pending",      "part_settled",       "partially_refunded"),
        ("refund_pending",      "refund_gave_up",     "refund_failed"),
        ("refund_failed",       "refunds_settled",    "refunded"),            # an attempt succeeded late
        ("refund_failed",       "part_settled",       "partially_refunded"),
        ("partially_refunded",  "receive",            "received"),
        ("refunded",            "close",              "closed"),
        ("partially_refunded",  "close",              "closed"),
    ),
    parks=(
        # state                 trigger               waits for
        ("new",                 ANY,                  "the return request"),
        ("requested",           "receive",            "the authorization decision"),
        ("needs_review",        "receive",            "a lead's decision on the exception"),
        ("authorized",          "inspect",            "the parcel to be received"),
    ),
)

REFUND = Machine(
    name="refund",
    initial="new",
    # A provider may confirm any attempt late, even one this processor gave up on or replaced: no
    # state is closed to a success (the money moved), so none is terminal.
    terminal=frozenset(),
    reversible={"failed": "a retry (a new attempt key) or the store-credit fallback",
                "fell_back": "the replaced attempt succeeding late",
                "gave_up": "an attempt succeeding late",
                "succeeded": "another attempt of it succeeding too (overpaid)"},
    rows=(
        # state        trigger          next state
        ("new",        "request",       "requested"),
        ("requested",  "succeed",       "succeeded"),   # the current attempt, or an earlier one late
        ("requested",  "fail",          "failed"),
        ("failed",     "retry",         "requested"),
        ("failed",     "fall_back",     "fell_back"),   # replaced by a store-credit refund
        ("failed",     "give_up",       "gave_up"),     # nothing else to try: support must act
        ("fell_back",  "succeed",       "succeeded"),   # a replaced attempt succeeded late
        ("gave_up",    "succeed",       "succeeded"),   # an attempt succeeded after all
        ("succeeded",  "succeed_again", "overpaid"),    # a second attempt succeeded too: escalated
        ("overpaid",   "succeed_again", "overpaid"),
    ),
    parks=(),
)

# A restocking fee is not charged, and a final-sale item is not refused outright, for these.
DEFECT_REASONS = frozenset({"DAMAGED", "WRONG_ITEM", "NOT_AS_DESCRIBED"})
# Beyond the window by at most this many days: a person looks at it instead of a refusal.
GRACE_DAYS = 7
# A refunded return closes this long after its last refund (chargebacks and disputes settle).
CLOSE_AFTER_DAYS = 14
