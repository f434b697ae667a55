"""The return machine and the refund machine: each one table, read top to bottom."""

from __future__ import annotations

from orderops.model.workflow import ANY, Machine

RETURN = Machine(
    name="return",
    initial="new",
    terminal=frozenset({"rejected", "closed"}),
    reversible={"needs_review": "a lead approves a policy exception",
                "partially_refunded": "the rest of the parcel arriving"},
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
    terminal=frozenset({"succeeded", "fell_back", "gave_up"}),
    reversible={"failed": "a retry (a new attempt key) or the store-credit fallback"},
    rows=(
        # state        trigger       next state
        ("new",        "request",    "requested"),
        ("requested",  "succeed",    "succeeded"),
        ("requested",  "fail",       "failed"),
        ("failed",     "retry",      "requested"),
        ("failed",     "fall_back",  "fell_back"),   # replaced by a store-credit refund
        ("failed",     "give_up",    "gave_up"),     # nothing else to try: support must act
    ),
    parks=(),
)

# A restocking fee is not charged, and a final-sale item is not refused outright, for these.
DEFECT_REASONS = frozenset({"DAMAGED", "WRONG_ITEM", "NOT_AS_DESCRIBED"})
# Beyond the window by at most this many days: a person looks at it instead of a refusal.
GRACE_DAYS = 7
# A refunded return closes this long after its last refund (chargebacks and disputes settle).
CLOSE_AFTER_DAYS = 14
