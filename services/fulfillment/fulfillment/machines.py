"""The two tables of fulfillment: how events move a line's units between buckets, and the
journey of a parcel. Read them top to bottom; the code only follows them."""

from __future__ import annotations

from orderops.model.workflow import ANY, Machine

BUCKETS = ("unfulfilled", "backordered", "in_shipment", "shipped", "delivered", "cancelled")

# Line quantities: ordered = unfulfilled + backordered + in_shipment + shipped + delivered + cancelled.
# An event moves units of a line out of the first bucket(s) that have them, in the order listed,
# into one bucket. Asking for more units than the source buckets hold is rejected with the code.
UNIT_MOVES = {
    # event                      from (taken in this order)                   to             if too many
    "LineBackordered":          (("unfulfilled",),                            "backordered", "backorder_exceeds_unfulfilled"),
    "ShipmentCreated":          (("unfulfilled", "backordered"),              "in_shipment", "ships_more_than_open"),
    "ShipmentDispatched":       (("in_shipment",),                            "shipped",     "dispatch_exceeds_packed"),
    "ShipmentDelivered":        (("shipped",),                                "delivered",   "delivery_exceeds_shipped"),
    "ReturnedToSender":         (("shipped",),                                "unfulfilled", "return_exceeds_shipped"),
    "LineCancelled":            (("backordered", "unfulfilled"),              "cancelled",   "cancel_exceeds_open"),
    "LineCancelledByWarehouse": (("backordered", "unfulfilled"),              "cancelled",   "cancel_exceeds_open"),
    "LineShortShipped":         (("unfulfilled", "backordered"),              "cancelled",   "short_ship_exceeds_open"),
    "OrderCancelled":           (("backordered", "unfulfilled", "in_shipment"), "cancelled", "cancel_exceeds_open"),
}

SHIPMENT = Machine(
    name="shipment",
    initial="created",
    terminal=frozenset({"delivered", "returned_to_sender", "cancelled"}),
    reversible={"delivery_failed": "a successful redelivery"},
    rows=(
        # state               trigger               next state
        ("created",           "dispatch",           "dispatched"),
        ("created",           "cancel",             "cancelled"),
        ("dispatched",        "in_transit",         "in_transit"),
        ("dispatched",        "out_for_delivery",   "out_for_delivery"),
        ("dispatched",        "delayed",            "dispatched"),
        ("dispatched",        "delivery_attempted", "dispatched"),
        ("dispatched",        "deliver",            "delivered"),
        ("dispatched",        "delivery_failed",    "delivery_failed"),
        ("in_transit",        "in_transit",         "in_transit"),
        ("in_transit",        "out_for_delivery",   "out_for_delivery"),
        ("in_transit",        "delayed",            "in_transit"),
        ("in_transit",        "delivery_attempted", "in_transit"),
        ("in_transit",        "deliver",            "delivered"),
        ("in_transit",        "delivery_failed",    "delivery_failed"),
        ("out_for_delivery",  "in_transit",         "in_transit"),
        ("out_for_delivery",  "out_for_delivery",   "out_for_delivery"),
        ("out_for_delivery",  "delayed",            "out_for_delivery"),
        ("out_for_delivery",  "delivery_attempted", "out_for_delivery"),
        ("out_for_delivery",  "deliver",            "delivered"),
        ("out_for_delivery",  "delivery_failed",    "delivery_failed"),
        ("delivery_failed",   "deliver",            "delivered"),
        ("delivery_failed",   "return_to_sender",   "returned_to_sender"),
    ),
    parks=(
        # state               trigger               waits for
        ("created",           ANY,                  "the parcel to be dispatched"),
        ("dispatched",        "return_to_sender",   "the failed delivery"),
        ("in_transit",        "return_to_sender",   "the failed delivery"),
        ("out_for_delivery",  "return_to_sender",   "the failed delivery"),
    ),
)

SHIPMENT_TRIGGERS = {
    "ShipmentDispatched": "dispatch",
    "ShipmentDelivered": "deliver",
    "DeliveryFailed": "delivery_failed",
    "ReturnedToSender": "return_to_sender",
}
TRACKING_TRIGGERS = {
    "IN_TRANSIT": "in_transit",
    "OUT_FOR_DELIVERY": "out_for_delivery",
    "DELAYED": "delayed",
    "DELIVERY_ATTEMPTED": "delivery_attempted",
    "UNKNOWN": "in_transit",
}
# Units in these parcel states count as shipped (left the warehouse, not delivered).
SHIPPED_STATES = frozenset({"dispatched", "in_transit", "out_for_delivery", "delivery_failed"})


def unit_moves_markdown() -> str:
    """The unit-move table as docs/services/fulfillment.md shows it (a test keeps the two identical)."""
    rows = [f"| {event} | {' → '.join(sources)} | {target} | {code} |"
            for event, (sources, target, code) in UNIT_MOVES.items()]
    return "\n".join(["| event | takes units from | puts them in | too many → rejected as |", "|---|---|---|---|",
                      *rows])
