"""The order machine and the payment machine: each one table, read top to bottom.

A row says: in this state, this trigger leads to that state. A trigger not in the table for a
state is either *parked* (``PARKS``: it may become valid once something else arrives — events
across topics are not ordered) or *rejected* with an audit record. Terminal and reversible states
are data here too, not ``if``s in the code.
"""

from __future__ import annotations

from orderops.model.workflow import ANY, Machine

# An order is cancelled by fulfillment's verdict (fulfillment_cancelled): a cancellation request
# (OrderCancelled, LineCancelled) is recorded and fulfillment decides what it cancels.
RESUME = "(state before the hold)"  # on_hold is reversible: releasing it returns where it came from
BY_AMOUNT = "(by amounts)"  # the payment state follows from authorized/captured/refunded amounts


ORDER = Machine(
    name="order",
    initial="new",
    terminal=frozenset({"closed", "cancelled"}),
    reversible={"on_hold": "payment secured again (re-authorization) releases the hold"},
    rows=(
        # state              trigger                   next state
        ("new",              "placed",                 "pending_payment"),
        ("pending_payment",  "payment_secured",        "confirmed"),
        ("pending_payment",  "payment_problem",        "on_hold"),
        ("pending_payment",  "fulfillment_cancelled",  "cancelled"),
        ("confirmed",        "payment_problem",        "on_hold"),
        ("confirmed",        "fulfillment_started",    "in_fulfillment"),
        ("confirmed",        "fulfillment_done",       "completed"),
        ("confirmed",        "fulfillment_cancelled",  "cancelled"),
        ("on_hold",          "payment_secured",        RESUME),
        ("on_hold",          "fulfillment_cancelled",  "cancelled"),
        ("in_fulfillment",   "fulfillment_started",    "in_fulfillment"),
        ("in_fulfillment",   "payment_problem",        "on_hold"),
        ("in_fulfillment",   "fulfillment_done",       "completed"),
        ("in_fulfillment",   "fulfillment_cancelled",  "cancelled"),
        ("completed",        "fulfillment_done",       "completed"),
        ("completed",        "close",                  "closed"),
        ("cancelled",        "fulfillment_cancelled",  "cancelled"),
    ),
    parks=(
        # state              trigger                   waits for
        ("new",              ANY,                      "the order to be placed"),
        ("pending_payment",  "fulfillment_started",    "payment to be secured"),
        ("pending_payment",  "fulfillment_done",       "payment to be secured"),
        ("on_hold",          "fulfillment_started",    "the hold to be released"),
        ("on_hold",          "fulfillment_done",       "the hold to be released"),
    ),
)

PAYMENT = Machine(
    name="payment",
    initial="pending",
    terminal=frozenset({"voided", "refunded", "charged_back"}),
    reversible={
        "auth_expired": "a re-authorization",
        "failed": "a new authorization (the customer updated the payment method)",
    },
    rows=(
        # state                 trigger            next state
        ("pending",             "authorized",      "authorized"),
        ("pending",             "auth_failed",     "failed"),
        ("failed",              "authorized",      "authorized"),
        ("failed",              "auth_failed",     "failed"),
        ("auth_expired",        "authorized",      "authorized"),
        ("auth_expired",        "auth_failed",     "auth_expired"),
        ("authorized",          "auth_expired",    "auth_expired"),
        ("authorized",          "captured",        BY_AMOUNT),
        ("authorized",          "capture_failed",  "authorized"),
        ("authorized",          "voided",          "voided"),
        ("partially_captured",  "captured",        BY_AMOUNT),
        ("partially_captured",  "capture_failed",  "partially_captured"),
        ("partially_captured",  "auth_expired",    BY_AMOUNT),  # the uncaptured rest lapses
        ("partially_captured",  "voided",          BY_AMOUNT),  # the uncaptured rest is released
        ("partially_captured",  "refunded",        BY_AMOUNT),
        ("partially_captured",  "refund_failed",   "partially_captured"),
        ("partially_captured",  "charged_back",    "charged_back"),
        ("captured",            "refunded",        BY_AMOUNT),
        ("captured",            "refund_failed",   "captured"),
        ("captured",            "charged_back",    "charged_back"),
        ("partially_refunded",  "captured",        BY_AMOUNT),
        ("partially_refunded",  "refunded",        BY_AMOUNT),
        ("partially_refunded",  "refund_failed",   "partially_refunded"),
        ("partially_refunded",  "charged_back",    "charged_back"),
        ("partially_refunded",  "auth_expired",    BY_AMOUNT),  # the uncaptured rest lapses
        ("partially_refunded",  "voided",          BY_AMOUNT),  # the uncaptured rest is released
    ),
    parks=(
        # state                 trigger            waits for
        ("pending",             ANY,               "the authorization"),
        ("authorized",          "refunded",        "the capture"),
        ("authorized",          "refund_failed",   "the capture"),
        ("authorized",          "charged_back",    "the capture"),
    ),
)

# Cash on delivery needs no authorization: it is secured when the order is placed.
NO_AUTHORIZATION_CHANNELS = frozenset({"CASH_ON_DELIVERY"})
SECURED_PAYMENT_STATES = frozenset({"authorized", "partially_captured", "captured", "partially_refunded", "refunded"})
PROBLEM_PAYMENT_STATES = frozenset({"failed", "auth_expired"})

# What the storefront, payment and fulfillment events mean to the machines.
PAYMENT_TRIGGERS = {
    "PaymentAuthorized": "authorized",
    "AuthorizationFailed": "auth_failed",
    "AuthorizationExpired": "auth_expired",
    "PaymentCaptured": "captured",
    "CaptureFailed": "capture_failed",
    "PaymentVoided": "voided",
    "RefundSucceeded": "refunded",
    "RefundFailed": "refund_failed",
    "Chargeback": "charged_back",
}
FULFILLMENT_TRIGGERS = {
    "unfulfilled": None,  # nothing shipped yet: no order transition
    "partially_shipped": "fulfillment_started",
    "shipped": "fulfillment_started",
    "partially_delivered": "fulfillment_started",
    "delivered": "fulfillment_done",
    "cancelled": "fulfillment_cancelled",
}
