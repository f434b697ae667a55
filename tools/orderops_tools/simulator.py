"""``orderops simulate``: the storefront, warehouse, payment provider and support desk, simulated.

The plan is deterministic: the seed (and ``--start``) decide every order's story, every event id
and every byte. Simulated time runs ``--compression`` times faster than the wall clock (1440: a
day per minute). Chaos is optional and counted: duplicates (the same bytes sent twice),
cross-topic reordering (an event held back; events of the same order on the same topic keep
their order, as one upstream system writes them), malformed messages (bytes that are not events).
While it runs, it also answers the returns processor's refund commands, as the provider would.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from orderops.codec.avro import FRAMINGS
from orderops.model import money as money_of
from orderops.model.catalog import (
    PAYMENT_PROVIDER,
    PAYMENTS_EVENTS,
    STOREFRONT_ORDERS,
    STOREFRONT_RETURNS,
    SUPPORT_CONTACTS,
    WAREHOUSE_FULFILLMENT,
    WAREHOUSE_RETURNS,
    Topic,
)
from orderops.model.envelope import Envelope
from orderops_tools.provider import RefundDesk
from orderops_tools.scenario import Story, address, customer, discount, instrument, line, money

UPSTREAM = (STOREFRONT_ORDERS, STOREFRONT_RETURNS, PAYMENTS_EVENTS, WAREHOUSE_FULFILLMENT, WAREHOUSE_RETURNS,
            SUPPORT_CONTACTS)
PRODUCTS = (
    ("Blue mug", "home", "12.50"), ("Teapot", "home", "39.90"), ("Tea towel", "home", "7.95"),
    ("Headphones", "electronics", "89.00"), ("Laptop stand", "electronics", "49.00"), ("Phone", "electronics", "649.00"),
    ("Linen shirt", "apparel", "45.00"), ("Wool socks", "apparel", "12.00"), ("Lipstick", "beauty", "19.50"),
    ("Face cream", "beauty", "28.00"), ("Side table", "furniture", "129.00"), ("Gift card", "gift-cards", "25.00"),
    ("Clearance vase", "clearance", "15.00"),
)
CENT = Decimal("0.01")
SHIPPING, FREE_SHIPPING_FROM = Decimal("4.95"), Decimal(50)  # what the simulated shop charges for shipping
SCENARIOS = {  # default share of each scenario (they combine: an order can be split and returned)
    "split_shipment": 0.35, "backorder": 0.25, "eta_slip": 0.4, "carrier_delay": 0.1, "delivery_failed": 0.04,
    "auth_failure": 0.05, "auth_expiry": 0.03, "cancellation": 0.05, "cancel_after_dispatch": 0.03,
    "warehouse_cancel": 0.03, "discount": 0.3, "return": 0.2,
    "late_return": 0.2, "refund_failure": 0.08, "refund_failed_then_succeeded": 0.05, "support_contact": 0.1,
    "repeat_contact": 0.3,
}


@dataclass(frozen=True)
class Config:
    seed: int = 1
    orders: int = 100
    rate: float = 50.0  # at most this many events per second
    compression: float = 1440.0  # simulated seconds per wall second
    start: datetime | None = None  # event time of the first order; default: now
    order_interval: float = 600.0  # simulated seconds between order placements
    duration: float | None = None  # stop after this many wall seconds
    shares: dict[str, float] = field(default_factory=lambda: dict(SCENARIOS))
    # Wall seconds at least between two events of one order (others flow in between): real upstream
    # systems do not emit one order's events within the same millisecond on different topics.
    order_gap: float = 0.0
    duplicates: float = 0.0
    reorder: float = 0.0
    malformed: float = 0.0
    customers: int = 40
    framing: str = "single-object"  # or "confluent": the schema id from ORDEROPS_SCHEMA_REGISTRY_URL's registry


@dataclass(order=True)
class Send:
    at: float  # simulated seconds from the start
    seq: int
    topic: Topic = field(compare=False)
    key: bytes = field(compare=False)
    value: bytes = field(compare=False)
    kind: str = field(compare=False)  # event type, "duplicate" or "malformed"


# -- the plan -------------------------------------------------------------------------------------

def order_story(config: Config, n: int, origin: datetime) -> Story:
    """One order's life, decided by the seed and the order's number."""
    rng = random.Random(f"{config.seed}:{n}")
    share = config.shares

    def chance(name: str) -> bool:
        return rng.random() < share.get(name, 0.0)

    order_id = f"sim-{config.seed}-{n:06d}"
    story = Story(order_id, start=origin + timedelta(seconds=n * config.order_interval))
    picks = rng.sample(PRODUCTS, rng.randint(1, 6))
    lines = [line(f"l{k + 1}", name, rng.randint(1, 3), price, category, final_sale=category == "clearance")
             for k, (name, category, price) in enumerate(picks)]
    discounts: list[dict] = []
    if chance("discount"):  # 10 % off lines of two or more, then 10 % off the order
        for x in lines:
            if x["quantity"] >= 2:
                x["discounts"] = [discount("BUNDLE", str((x["unit_price"]["amount"] * x["quantity"] / 10).quantize(CENT)))]
        subtotal = sum((money_of.discounted(x) for x in lines), Decimal(0))
        discounts = [discount("WELCOME10", str((subtotal / 10).quantize(CENT)))]
    subtotal = sum((money_of.discounted(x) for x in lines), Decimal(0)) - money_of.discounts({"discounts": discounts})
    shipping = SHIPPING if subtotal < FREE_SHIPPING_FROM else Decimal(0)
    total = subtotal + shipping
    mix = rng.choices(["card", "gift+card", "cod", "bnpl"], weights=[50, 20, 15, 15])[0]
    if mix == "gift+card":
        gift = min(Decimal(25), total / 2).quantize(Decimal("0.01"))
        instruments = [instrument("gift-1", "GIFT_CARD", str(gift), "giftcard"),
                       instrument("card-1", "CARD", str(total - gift), "visa")]
    else:
        channel, provider = {"card": ("CARD", "visa"), "cod": ("CASH_ON_DELIVERY", "courier"),
                             "bnpl": ("BUY_NOW_PAY_LATER", "klarna")}[mix]
        instruments = [instrument("pay-1", channel, str(total), provider)]
    who = rng.randrange(config.customers)
    story.on(STOREFRONT_ORDERS).OrderPlaced(
        customer=customer(f"cust-{who}", f"customer{who}@example.com", f"Customer {who}"), lines=lines,
        instruments=instruments, shipping_address=address(), total=money(str(total)),
        promised_delivery_by=story.clock + timedelta(days=5), discounts=discounts,
        shipping=money(str(shipping)) if shipping else None)
    payments = story.on(PAYMENTS_EVENTS)
    card_like = [i for i in instruments if i["channel"] != "CASH_ON_DELIVERY"]
    story.after(minutes=rng.randint(1, 5))
    if chance("auth_failure") and card_like:
        first = card_like[0]
        payments.AuthorizationFailed(instrument_id=first["instrument_id"], amount=first["amount"],
                                     reason="insufficient funds", customer_action="use another card or top up")
        story.after(hours=2)
        if rng.random() < 0.4:
            story.on(STOREFRONT_ORDERS).OrderCancelled(reason="payment failed", requested_by="shop")
            return story
    for i in card_like:
        payments.PaymentAuthorized(instrument_id=i["instrument_id"], amount=i["amount"],
                                   authorization_id=f"auth-{order_id}-{i['instrument_id']}",
                                   expires_at=story.clock + timedelta(days=7))
    if chance("cancellation"):
        story.after(hours=1).on(STOREFRONT_ORDERS).OrderCancelled(reason="changed my mind", requested_by="customer")
        for i in card_like:
            payments.PaymentVoided(instrument_id=i["instrument_id"], amount=i["amount"])
        return story
    if chance("auth_expiry") and card_like:
        story.after(days=7)
        payments.AuthorizationExpired(instrument_id=card_like[0]["instrument_id"], authorization_id="auth")
        story.after(hours=6)
        payments.PaymentAuthorized(instrument_id=card_like[0]["instrument_id"], amount=card_like[0]["amount"],
                                   authorization_id=f"reauth-{order_id}")
    warehouse = story.on(WAREHOUSE_FULFILLMENT)
    story.after(hours=rng.randint(2, 8))
    remaining = {x["line_id"]: x["quantity"] for x in lines}
    backordered = None
    if len(lines) >= 2 and chance("backorder"):
        backordered = rng.choice(lines)
        eta = story.clock + timedelta(days=rng.randint(5, 10))
        warehouse.LineBackordered(line_id=backordered["line_id"], quantity=backordered["quantity"], eta=eta)
        remaining.pop(backordered["line_id"])
    if chance("warehouse_cancel"):
        victim = rng.choice([x for x in lines if x["line_id"] in remaining])
        warehouse.LineCancelledByWarehouse(line_id=victim["line_id"], quantity=1, reason="damaged in stock")
        remaining[victim["line_id"]] -= 1
        remaining = {k: v for k, v in remaining.items() if v}
    parcels = _split(rng, remaining, 2 if chance("split_shipment") else 1)
    captured = False
    delivered_at = None
    for p, contents in enumerate(parcels, start=1):
        delivered_at = _ship(story, rng, chance, f"P{p}-{order_id}", contents) or delivered_at
        if not captured:
            for i in card_like:
                story.on(PAYMENTS_EVENTS).PaymentCaptured(instrument_id=i["instrument_id"], amount=i["amount"],
                                                         capture_id=f"cap-{order_id}-{i['instrument_id']}")
            captured = True
        if p < len(parcels) and chance("cancel_after_dispatch"):
            # The first parcel is on its way: what has not left is cancelled, its paid part refunded.
            story.after(hours=1).on(STOREFRONT_ORDERS).OrderCancelled(reason="changed my mind", requested_by="customer")
            backordered = None
            break
    if backordered is not None:
        if chance("eta_slip"):
            story.after(days=3).on(WAREHOUSE_FULFILLMENT).BackorderEtaChanged(
                line_id=backordered["line_id"], eta=story.clock + timedelta(days=rng.randint(4, 8)),
                reason="supplier delay")
        story.after(days=rng.randint(3, 6))
        delivered_at = _ship(story, rng, chance, f"P9-{order_id}",
                             {backordered["line_id"]: backordered["quantity"]}) or delivered_at
    if chance("support_contact"):
        story.after(days=1).on(SUPPORT_CONTACTS).ContactOpened(contact_id=f"c-{order_id}-1", customer_id=f"cust-{who}",
                                                               channel="EMAIL", reason="where is my parcel?")
        if chance("repeat_contact"):
            story.after(days=2).on(SUPPORT_CONTACTS).ContactOpened(contact_id=f"c-{order_id}-2",
                                                                   customer_id=f"cust-{who}", channel="PHONE",
                                                                   reason="still waiting")
    if delivered_at is not None and chance("return"):
        _return(story, rng, lines, backordered, late=chance("late_return"), who=who)
    return story


def _split(rng: random.Random, remaining: dict[str, int], parcels: int) -> list[dict[str, int]]:
    if not remaining:
        return []
    ids = sorted(remaining)
    if parcels == 1 or len(ids) == 1:
        return [dict(remaining)]
    cut = rng.randint(1, len(ids) - 1)
    return [{k: remaining[k] for k in ids[:cut]}, {k: remaining[k] for k in ids[cut:]}]


def _ship(story: Story, rng: random.Random, chance, shipment_id: str, contents: dict[str, int]) -> datetime | None:
    warehouse = story.on(WAREHOUSE_FULFILLMENT)
    warehouse.ShipmentCreated(shipment_id=shipment_id, lines=[{"line_id": k, "quantity": q} for k, q in contents.items()],
                              warehouse="ams-1")
    story.after(hours=rng.randint(2, 6))
    tracking = f"JD{rng.randrange(10**9):09d}"
    warehouse.ShipmentDispatched(shipment_id=shipment_id, carrier="DHL", tracking_number=tracking,
                                 tracking_url=f"https://track.example/{tracking}",
                                 estimated_delivery=story.clock + timedelta(days=2))
    story.after(hours=12)
    warehouse.TrackingUpdated(shipment_id=shipment_id, status="IN_TRANSIT", detail="hub scan")
    if chance("carrier_delay"):
        story.after(days=1)
        warehouse.TrackingUpdated(shipment_id=shipment_id, status="DELAYED", detail="weather",
                                  estimated_delivery=story.clock + timedelta(days=3))
        story.after(days=2)
    if chance("delivery_failed"):
        story.after(days=1)
        warehouse.DeliveryFailed(shipment_id=shipment_id, reason="nobody home, address unclear")
        story.after(days=5)
        warehouse.ReturnedToSender(shipment_id=shipment_id)
        return None
    story.after(hours=rng.randint(20, 40))
    warehouse.TrackingUpdated(shipment_id=shipment_id, status="OUT_FOR_DELIVERY")
    story.after(hours=6)
    warehouse.ShipmentDelivered(shipment_id=shipment_id)
    return story.clock


def _return(story: Story, rng: random.Random, lines: list[dict], backordered, late: bool, who: int) -> None:
    candidates = [x for x in lines if x is not backordered] or lines
    pick = rng.choice(candidates)
    return_id = f"r-{story.order_id}"
    story.after(days=rng.randint(35, 45) if late else rng.randint(3, 15))
    reason = rng.choice(["DAMAGED", "WRONG_ITEM", "SIZE_OR_FIT", "NO_LONGER_NEEDED", "NOT_AS_DESCRIBED"])
    story.on(STOREFRONT_RETURNS).ReturnRequested(return_id=return_id, customer_id=f"cust-{who}", customer_returns_90d=
                                                 rng.randint(0, 3), lines=[{"line_id": pick["line_id"], "quantity": 1,
                                                                            "reason": reason, "comment": ""}])
    if late:
        return  # outside the window: no parcel comes back
    story.after(days=rng.randint(3, 5)).on(WAREHOUSE_RETURNS).ReturnReceived(
        return_id=return_id, lines=[{"line_id": pick["line_id"], "quantity": 1}])
    outcome = rng.choices(["AS_EXPECTED", "DAMAGED", "WRONG_ITEM", "MISSING"], weights=[80, 12, 5, 3])[0]
    story.after(days=1).on(WAREHOUSE_RETURNS).InspectionCompleted(return_id=return_id, results=[
        {"line_id": pick["line_id"], "quantity": 1, "outcome": outcome,
         "disposition": "RESTOCK" if outcome == "AS_EXPECTED" else "DISPOSE"}])


def order_sends(config: Config, n: int, origin: datetime, chaos: Counter) -> list[Send]:
    """One order's messages with their simulated send times, chaos applied (seeded per order)."""
    rng = random.Random(f"{config.seed}:chaos:{n}")
    story = order_story(config, n, origin)
    sends: list[Send] = []
    not_before: dict[str, float] = {}
    for k, ((topic, key, value), event) in enumerate(zip(story.encoded(config.framing), story.events, strict=True)):
        at = (event.envelope.occurred_at - origin).total_seconds()
        if config.reorder and rng.random() < config.reorder:
            at += rng.uniform(60, 3 * 3600)  # held back up to three simulated hours
            chaos["reordered"] += 1
        at = max(at, not_before.get(topic.name, at))  # one system writes one topic in order
        not_before[topic.name] = at
        sends.append(Send(at, n * 10_000 + 3 * k, topic, key, value, event.envelope.short_type))
        if config.duplicates and rng.random() < config.duplicates:
            sends.append(Send(at + rng.uniform(0, 60), n * 10_000 + 3 * k + 1, topic, key, value, "duplicate"))
            chaos["duplicates"] += 1
        if config.malformed and rng.random() < config.malformed:
            garbage = rng.choice([b"", b"{\"not\": \"avro\"}", b"\xc3\x01" + rng.randbytes(12), rng.randbytes(30)])
            target = rng.choice(UPSTREAM)
            sends.append(Send(at, n * 10_000 + 3 * k + 2, target, key, garbage, "malformed"))
            chaos[f"malformed:{target.name}"] += 1
    return sends


def stream(config: Config, origin: datetime, chaos: Counter) -> Iterator[Send]:
    """Every message of the run in sending order, generated as simulated time reaches each order:
    order n starts at n × order_interval and none of its messages is earlier, so an order is
    admitted once the earliest pending message is not before its start."""
    pending: list[Send] = []
    admitted = 0
    while admitted < config.orders or pending:
        while admitted < config.orders and (not pending or admitted * config.order_interval <= pending[0].at):
            for send in order_sends(config, admitted, origin, chaos):
                heapq.heappush(pending, send)
            admitted += 1
        yield heapq.heappop(pending)


def plan(config: Config, origin: datetime) -> tuple[list[Send], Counter]:
    """The whole run at once (tests): every message in sending order, and what chaos added."""
    chaos: Counter = Counter()
    return list(stream(config, origin, chaos)), chaos


# -- playing it -----------------------------------------------------------------------------------

def play(config: Config, bootstrap: str, out=sys.stderr, answer_refunds: bool = True) -> Counter:
    from orderops.runtime.resend import ResendingProducer

    origin = config.start or datetime.now(UTC).replace(microsecond=0)
    chaos: Counter = Counter()
    producer = ResendingProducer(bootstrap, "simulate", out)
    sent: Counter = Counter()
    provider = None
    if answer_refunds:
        rng, drawn = random.Random(f"{config.seed}:provider"), {}
        failing, late = config.shares.get("refund_failure", 0.0), config.shares.get("refund_failed_then_succeeded", 0.0)

        def draw(command: Envelope) -> float:  # one draw per idempotency key decides its answer
            return drawn.setdefault(command.payload["refund_id"], rng.random())

        provider = RefundDesk(bootstrap, fails=lambda command: draw(command) < failing + late,
                              fails_then_succeeds=lambda command: draw(command) < late,
                              from_start=False, name=f"{PAYMENT_PROVIDER}-simulated", framing=config.framing)
        provider.start()
    failed: Counter = Counter()
    began, last_report, last_sent, k = time.monotonic(), 0.0, 0.0, 0
    held: list[tuple[float, int, Send]] = []  # (due, order in the stream, send): what waits for its moment
    order_due: dict[bytes, float] = {}

    def send_due(until: float) -> bool:
        """Send what is due before ``until`` (wall), never faster than --rate; False once past --duration."""
        nonlocal last_report, last_sent, k
        while held and held[0][0] <= until:
            due, _, send = heapq.heappop(held)
            due = max(due, last_sent + 1.0 / config.rate)
            if config.duration is not None and due - began > config.duration:
                return False
            time.sleep(max(0.0, due - time.monotonic()))  # (checked, then read again, it could turn negative)
            last_sent = time.monotonic()
            producer.produce(send.topic.name, key=send.key, value=send.value)
            sent[send.topic.name] += 1
            sent[f"type:{send.kind}"] += 1
            k += 1
            if time.monotonic() - last_report > 2:
                last_report = time.monotonic()
                print(f"simulate: {k} sent ({k / max(last_report - began, 0.001):.0f}/s), simulated time "
                      f"{origin + timedelta(seconds=send.at):%Y-%m-%d %H:%M}", file=out, flush=True)
        return True

    try:
        for n, send in enumerate(stream(config, origin, chaos)):
            # Send when simulated time says so, an order's events at least --order-gap apart.
            moment = began + send.at / config.compression
            due = max(moment, order_due.get(send.key, 0.0) + config.order_gap) if config.order_gap else moment
            order_due[send.key] = due
            heapq.heappush(held, (due, n, send))
            if not send_due(moment):
                held.clear()
                break
        send_due(float("inf"))
    finally:
        # Longer than the producer's message timeout: what a stuck producer holds is sent again in time.
        if unacknowledged := producer.flush(120):
            failed["unacknowledged after 120 s"] += unacknowledged
            print(f"simulate: {unacknowledged} event(s) not acknowledged within 120 s: they are not on their topics; "
                  f"the orders they belong to are incomplete", file=out)
        if provider:
            provider.stop()
    summary = Counter({f"sent:{k}": v for k, v in sent.items()})
    if producer.lost:
        failed["refused for good"] += producer.lost
    summary.update({f"failed:{k}": v for k, v in failed.items()})
    if producer.resent:
        summary["resent after a refused or timed-out send"] = producer.resent
    summary.update(chaos)
    if provider:
        summary.update(provider.answers)
    return summary


def register(groups) -> None:
    parser = groups.add_parser("simulate", help="simulate the upstream systems (storefront, warehouse, payments, support)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100, help="orders to simulate (default 100)")
    parser.add_argument("--rate", type=float, default=50, help="at most this many events per second (default 50)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=1, help="same seed, same events (default 1)")
    parser.add_argument("--compression", type=float, default=1440,
                        help="simulated seconds per second (default 1440: a day per minute)")
    parser.add_argument("--order-interval", type=float, default=600, help="simulated seconds between orders (600)")
    parser.add_argument("--start", help="event time of the first order, ISO 8601 (default: now)")
    parser.add_argument("--share", action="append", default=[], metavar="SCENARIO=P",
                        help=f"share of a scenario, 0..1 (scenarios: {', '.join(SCENARIOS)})")
    parser.add_argument("--order-gap", type=float, default=0.0,
                        help="wall seconds at least between two events of one order (default 0)")
    parser.add_argument("--duplicates", type=float, default=0.0, help="share of events sent twice")
    parser.add_argument("--reorder", type=float, default=0.0, help="share of events held back (cross-topic reordering)")
    parser.add_argument("--malformed", type=float, default=0.0, help="share of events followed by a malformed message")
    parser.add_argument("--no-provider", action="store_true", help="do not answer refund commands")
    parser.add_argument("--framing", choices=FRAMINGS, default="single-object",
                        help="how values name their writer schema: single-object (C3 01 + fingerprint, the default) "
                             "or confluent (00 + schema id from ORDEROPS_SCHEMA_REGISTRY_URL's registry)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from orderops.ops.settings import KafkaSettings

    shares = dict(SCENARIOS)
    for item in args.share:
        name, _, value = item.partition("=")
        if name not in SCENARIOS:
            print(f"simulate: unknown scenario {name!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
        shares[name] = float(value)
    config = Config(seed=args.seed, orders=args.orders, rate=args.rate, compression=args.compression,
                    start=datetime.fromisoformat(args.start) if args.start else None, order_interval=args.order_interval,
                    duration=args.duration, shares=shares, duplicates=args.duplicates, reorder=args.reorder,
                    malformed=args.malformed, order_gap=args.order_gap, framing=args.framing)
    summary = play(config, KafkaSettings.from_env().bootstrap, answer_refunds=not args.no_provider)
    print("simulate: summary")
    for key, value in sorted(summary.items()):
        print(f"  {key:45} {value}")
    if failed := sum(v for k, v in summary.items() if k.startswith("failed:")):
        print(f"simulate: {failed} event(s) did not reach the broker (failed: above); the orders they belong to "
              "are incomplete", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m orderops_tools.simulator ARGS`` = ``orderops simulate ARGS`` (how `make run` starts it)."""
    from orderops.ops.cli import main as cli

    return cli(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
