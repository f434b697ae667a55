"""Write an order's story as events in a few readable lines; publish them with real envelopes.

    story = Story("o-1001", start=datetime(2026, 11, 2, 9, tzinfo=timezone.utc))
    story.on(STOREFRONT_ORDERS).OrderPlaced(customer=customer(), lines=[line("l1", "Blue mug", 2, "12.50")],
                                            instruments=[card("card-1", "25.00")], shipping_address=address(),
                                            total=money("25.00"))
    story.after(minutes=3).on(PAYMENTS_EVENTS).PaymentAuthorized(instrument_id="card-1", amount=money("25.00"),
                                                                 authorization_id="auth-1")
    story.publish(producer)

Event ids are derived from the order id and the event's position, so the same story always
produces the same ids (and a re-published story is a redelivery, not new events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from orderops.codec.avro import Codec, Envelope
from orderops.model.catalog import Topic

SOURCES = {"storefront": "storefront", "payments": "payment-provider", "warehouse": "warehouse", "support": "support-desk"}


def money(amount: str | Decimal, currency: str = "EUR") -> dict:
    return {"amount": Decimal(amount), "currency": currency}


def customer(customer_id: str = "cust-1", email: str = "ada@example.com", name: str = "Ada Lovelace",
             locale: str = "en", phone: str | None = None) -> dict:
    return {"customer_id": customer_id, "email": email, "name": name, "locale": locale, "phone": phone}


def address(name: str = "Ada Lovelace", city: str = "London", country: str = "GB") -> dict:
    return {"name": name, "line1": "12 St James's Square", "line2": "", "city": city, "postal_code": "SW1Y 4JH",
            "country": country}


def line(line_id: str, name: str, quantity: int, unit_price: str, category: str = "home", sku: str | None = None,
         final_sale: bool = False, currency: str = "EUR", discounts: tuple[tuple[str, str], ...] = ()) -> dict:
    """An order line; ``discounts``: (code, amount) on the line, all its units together."""
    return {"line_id": line_id, "sku": sku or f"sku-{line_id}", "name": name, "category": category,
            "quantity": quantity, "unit_price": money(unit_price, currency), "final_sale": final_sale,
            "discounts": [discount(code, amount, currency) for code, amount in discounts]}


def discount(code: str, amount: str, currency: str = "EUR") -> dict:
    return {"code": code, "amount": money(amount, currency)}


def instrument(instrument_id: str, channel: str, amount: str, provider: str = "", currency: str = "EUR") -> dict:
    return {"instrument_id": instrument_id, "channel": channel, "amount": money(amount, currency), "provider": provider}


def card(instrument_id: str, amount: str, currency: str = "EUR") -> dict:
    return instrument(instrument_id, "CARD", amount, "visa", currency)


@dataclass
class StoryEvent:
    topic: Topic
    envelope: Envelope


@dataclass
class Story:
    order_id: str
    start: datetime = field(default_factory=lambda: datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    events: list[StoryEvent] = field(default_factory=list)
    codec: Codec = field(default_factory=Codec)

    def __post_init__(self) -> None:
        self.clock = self.start

    def after(self, **delta: float) -> Story:
        """Move the story's clock forward (``minutes=5``, ``days=2``, ...)."""
        self.clock += timedelta(**delta)
        return self

    def on(self, topic: Topic) -> _TopicWriter:
        return _TopicWriter(self, topic)

    def add(self, topic: Topic, type_name: str, payload: dict[str, Any], source: str | None = None) -> Envelope:
        full_type = self._payload_type(topic, type_name)
        envelope = Envelope(
            event_id=f"{self.order_id}:{len(self.events) + 1:04d}:{type_name}",
            order_id=self.order_id,
            occurred_at=self.clock,
            source=source or SOURCES.get(topic.name.split(".")[0], topic.writers[0]),
            type=full_type,
            payload=payload,
        )
        self.events.append(StoryEvent(topic, envelope))
        return envelope

    def encoded(self, framing: str = "single-object") -> list[tuple[Topic, bytes, bytes]]:
        """(topic, key, value) for every event, in story order, in ``framing`` (codec.avro.FRAMINGS)."""
        return [(e.topic, self.order_id.encode(),
                 self.codec.encode_framed(framing, e.topic.name, e.topic.value_schema, e.envelope.to_record()))
                for e in self.events]

    def publish(self, producer: Any) -> int:
        """Produce every event (a confluent-kafka Producer) and wait until the broker has them all."""
        for topic, key, value in self.encoded():
            producer.produce(topic.name, key=key, value=value)
        remaining = producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} story events were not acknowledged by the broker within 30s")
        return len(self.events)

    def _payload_type(self, topic: Topic, type_name: str) -> str:
        envelope_schema = self.codec.registry.get(topic.value_schema).schema
        payload_field = next(f for f in envelope_schema["fields"] if f["name"] == "payload")
        branches = [b if isinstance(b, str) else f"{b['namespace']}.{b['name']}" for b in payload_field["type"]]
        for branch in branches:
            if branch.rsplit(".", 1)[-1] == type_name:
                return branch
        raise ValueError(f"{topic.name} carries {', '.join(b.rsplit('.', 1)[-1] for b in branches)}; not {type_name}")


class _TopicWriter:
    def __init__(self, story: Story, topic: Topic) -> None:
        self._story, self._topic = story, topic

    def __getattr__(self, type_name: str):
        def write(**payload: Any) -> Envelope:
            return self._story.add(self._topic, type_name, payload)
        return write
