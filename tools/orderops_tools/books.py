"""``orderops check books``: do the processors' books agree with each other and with the provider?

    orderops check books [--order ID] [--json]      once: every disagreement, then the counts
    python -m orderops_tools.books [--port P]        every ORDEROPS_BOOKS_INTERVAL_SECONDS, as
                                                     Prometheus gauges (``make run`` starts it)

Per order and payment instrument, three accounts of the same money:

- the provider's, from its outcomes on ``payments.events``: each capture id and each succeeded
  refund id once (``orderops.model.money.operation_key``), however often it was delivered;
- order-state's books (its table, read from its changelog): captured and refunded;
- returns' (its table): captured, and refunded here or elsewhere.

Every difference is a disagreement, named with the order, the instrument, the amount and the three
figures. The check counts what it compared and fails when that is nothing: a check of no orders
proves nothing. It reads the tables as their changelogs hold them, so run it once the processors
have caught up (an order still in flight can differ for a moment).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from orderops.codec.avro import Codec, DecodeError
from orderops.model import catalog, money
from orderops.model.envelope import Envelope
from orderops.ops.settings import KafkaSettings
from orderops.replay.topicreader import read
from orderops_tools.replay import group_of, latest_by_key

AMOUNTS = ("captured", "refunded")
BOOKS_PORT = 6106


@dataclass(frozen=True)
class Disagreement:
    order_id: str
    instrument_id: str
    amount: str  # captured or refunded
    provider: Decimal | None
    order_state: Decimal | None
    returns: Decimal | None

    def describe(self) -> str:
        def shown(value: Decimal | None) -> str:
            return "—" if value is None else f"{value:.2f}"

        return (f"{self.order_id} {self.instrument_id} {self.amount}: provider {shown(self.provider)}, order-state "
                f"{shown(self.order_state)}, returns {shown(self.returns)}")


@dataclass
class Books:
    orders: int = 0
    instruments: int = 0
    refunds: int = 0  # provider refunds compared
    disagreements: list[Disagreement] = field(default_factory=list)


def provider_books(bootstrap: str, codec: Codec | None = None) -> dict[tuple[str, str], dict[str, Decimal]]:
    """(order, instrument) -> captured and refunded, each provider operation counted once."""
    codec = codec or Codec()
    counted: set[tuple[str, str, str]] = set()
    books: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(AMOUNTS, Decimal(0)))
    for message in read(bootstrap, catalog.PAYMENTS_EVENTS):
        try:
            event = Envelope.from_record(codec.decode(message.value(), catalog.PAYMENTS_EVENTS.value_schema).record)
        except DecodeError:
            continue  # dead-lettered by every reader: no money moved for anyone
        operation = money.operation_key(event.short_type, event.payload)
        if message.key() != event.order_id.encode():
            continue  # keyed by another order: every reader dead-letters it, no book holds it
        if operation is None or (event.order_id, event.payload["instrument_id"], operation) in counted:
            continue
        counted.add((event.order_id, event.payload["instrument_id"], operation))
        amount = "captured" if event.short_type == "PaymentCaptured" else "refunded"
        books[(event.order_id, event.payload["instrument_id"])][amount] += event.payload["amount"]["amount"]
    return books


class MissingTable(Exception):
    """A processor's table is not on the broker: what to check is in the message."""


def existing_topics(bootstrap: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    from orderops.ops.security import client_config

    return set(AdminClient(client_config(bootstrap)).list_topics(timeout=30).topics)


def compare(bootstrap: str, instance: str | None = None, orders: set[str] | None = None) -> Books:
    """``orders``: only these (default: every order both processors hold)."""
    from order_state.domain import OrderState
    from returns.domain import ReturnsState

    names = [f"{group_of(processor, instance)}-orders-changelog" for processor in (catalog.ORDER_STATE, catalog.RETURNS)]
    existing = existing_topics(bootstrap)
    missing = [name for name in names if name not in existing]
    if missing:
        raise MissingTable(f"no {' or '.join(missing)} on the broker: has the processor run (with this "
                           f"--instance)? Nothing compared")
    # The tables first, then the provider's outcomes: an outcome a processor has applied is then in
    # the provider's book too, and an order in flight differs only by what a processor has not read yet.
    kept, decided = (latest_by_key(bootstrap, name) for name in names)
    provider = provider_books(bootstrap)
    found = Books(refunds=sum(1 for (order_id, _), book in provider.items() if book["refunded"]
                              and (orders is None or order_id in orders)))
    for order_id in sorted((set(kept) | set(decided)) & (orders if orders is not None else set(kept) | set(decided))):
        books = OrderState.from_json(kept[order_id]) if order_id in kept else None
        seen = ReturnsState.from_json(decided[order_id]) if order_id in decided else None
        if books is None or seen is None or books.status == "new" or seen.placed_at is None:
            continue  # an order one of them has not been placed in (yet): nothing to compare
        found.orders += 1
        for instrument in books.instruments:
            other = seen.instrument(instrument.instrument_id)
            found.instruments += 1
            figures = {
                "captured": (instrument.captured, other.captured if other else None),
                "refunded": (instrument.refunded, seen.refunded(other) if other else None),
            }
            truth = provider.get((order_id, instrument.instrument_id))
            for amount, (order_state, returns) in figures.items():
                said = truth[amount] if truth else Decimal(0)
                if not (said == order_state == returns):
                    found.disagreements.append(Disagreement(order_id, instrument.instrument_id, amount, said,
                                                            order_state, returns))
    return found


def standing(now: list[Disagreement], before: list[Disagreement]) -> list[Disagreement]:
    """The disagreements found again by the next check, figures unchanged: an order in flight
    differs for a moment (a refund order-state has read and returns not yet); one that stays is
    real."""
    seen = set(before)
    return [d for d in now if d in seen]


def serve(port: int, interval: float, instance: str | None = None) -> None:
    """Check the books every ``interval`` seconds and serve the figures on ``port`` (/metrics):
    ``orderops_books_orders_compared``, ``orderops_books_disagreements`` (standing ones),
    ``orderops_books_last_check_timestamp_seconds``, ``orderops_books_check_failures_total``."""
    import logging
    import time

    from prometheus_client import Counter, Gauge, start_http_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s books: %(message)s")
    log = logging.getLogger("orderops_tools.books")
    compared = Gauge("orderops_books_orders_compared", "Orders whose books the last check compared")
    disagreeing = Gauge("orderops_books_disagreements", "Disagreements between order-state's, returns' and the "
                        "provider's captured and refunded amounts found by two checks in a row")
    checked_at = Gauge("orderops_books_last_check_timestamp_seconds", "When the books were last checked")
    failures = Counter("orderops_books_check_failures_total", "Checks of the books that could not run")
    start_http_server(port, addr=os.environ.get("ORDEROPS_BOOKS_ADDRESS", "127.0.0.1"))
    bootstrap, before = KafkaSettings.from_env().bootstrap, []
    while True:
        try:
            books = compare(bootstrap, instance)
        except Exception as exc:  # the broker away, a table not created yet: tried again next time
            failures.inc()
            log.warning("could not check the books (%s: %s); trying again in %.0f s", type(exc).__name__, exc, interval)
        else:
            kept = standing(books.disagreements, before)
            for disagreement in kept:
                log.error("disagree %s: compare `orderops replay inspect payments.events --order %s` with the "
                          "processors' views", disagreement.describe(), disagreement.order_id)
            before = books.disagreements
            compared.set(books.orders)
            disagreeing.set(len(kept))
            checked_at.set(time.time())
        time.sleep(interval)


def _check_books(args: argparse.Namespace) -> int:
    try:
        books = compare(KafkaSettings.from_env().bootstrap, args.instance, set(args.order) if args.order else None)
    except MissingTable as exc:
        print(f"books: {exc}", file=sys.stderr)
        return 1
    for disagreement in books.disagreements:
        print(f"disagree {disagreement.describe()}")
    summary = {"orders": books.orders, "instruments": books.instruments, "provider_refunds": books.refunds,
               "disagreements": len(books.disagreements)}
    print(json.dumps(summary) if args.json else
          f"books: {books.orders} orders, {books.instruments} instruments, {books.refunds} refunded by the provider "
          f"compared; {len(books.disagreements)} disagreement(s)")
    if books.orders == 0:
        print("books: no order was compared (are the processors running and caught up?)", file=sys.stderr)
        return 1
    return 1 if books.disagreements else 0


def register(groups) -> None:
    commands = groups.add_parser("check", help="cross-checks of the processors' state").add_subparsers(
        dest="command", required=True)
    books = commands.add_parser("books", help="order-state's and returns' captured and refunded amounts against "
                                "each other and the provider's outcomes, per order and instrument",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    books.add_argument("--instance", help="the ORDEROPS_INSTANCE of the processors, if any")
    books.add_argument("--order", action="append", help="only this order (repeatable)")
    books.add_argument("--json", action="store_true", help="the summary as one JSON line")
    books.set_defaults(run=_check_books)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orderops_tools.books", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("ORDEROPS_BOOKS_PORT", str(BOOKS_PORT))))
    parser.add_argument("--interval", type=float,
                        default=float(os.environ.get("ORDEROPS_BOOKS_INTERVAL_SECONDS", "300")))
    parser.add_argument("--instance", default=os.environ.get("ORDEROPS_INSTANCE") or None)
    args = parser.parse_args()
    serve(args.port, args.interval, args.instance)


if __name__ == "__main__":
    main()
