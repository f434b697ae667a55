"""The payment provider's side of refunds, as the simulator and the tests play it.

It reads ``payments.refund-requests``, answers each refund id (the idempotency key) once on
``payments.events`` with RefundSucceeded or RefundFailed (retryable), ``delay`` after the
command's event time — the way a real provider answers a command it has already seen: not again.
``fails_then_succeeds`` answers a command first with a retryable failure and then, ``delay`` later
again, with a success (a provider that reported a timeout as a failure: the refund went through).
``answer_twice`` delivers an answer twice under its event id (a redelivery); ``again_as_new_event``
delivers it again under another event id (a connector or a retried webhook in front of the
provider). ``refunded`` is the provider's own book: what it refunded, per idempotency key.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from orderops.codec.avro import Codec
from orderops.model.catalog import PAYMENT_PROVIDER, PAYMENTS_EVENTS, PAYMENTS_REFUND_REQUESTS
from orderops.model.envelope import Envelope
from orderops.ops.security import client_config

Decision = Callable[[Envelope], bool]


class RefundDesk(threading.Thread):
    def __init__(self, bootstrap: str, *, fails: Decision = lambda command: False,
                 answer_twice: Decision = lambda command: False,
                 fails_then_succeeds: Decision = lambda command: False,
                 again_as_new_event: Decision = lambda command: False, order_ids: set[str] | None = None,
                 delay: timedelta = timedelta(hours=2), from_start: bool = True, name: str = PAYMENT_PROVIDER,
                 framing: str = "single-object") -> None:
        super().__init__(daemon=True, name=f"refund-desk-{name}")
        self.bootstrap, self.fails, self.answer_twice = bootstrap, fails, answer_twice
        self.again_as_new_event, self.fails_then_succeeds = again_as_new_event, fails_then_succeeds
        self.order_ids, self.delay, self.from_start, self.group = order_ids, delay, from_start, f"{name}-{uuid.uuid4().hex}"
        self.framing = framing  # of its answers (codec.avro.FRAMINGS)
        self.commands: list[Envelope] = []  # every command read, repeats included
        self.answers: Counter = Counter()  # refunds_succeeded / refunds_failed / answers_not_delivered
        self.refunded: dict[str, tuple[str, Decimal]] = {}  # idempotency key -> (instrument, amount) refunded
        self._stop_event = threading.Event()

    def stop(self, timeout: float = 15) -> None:
        self._stop_event.set()
        self.join(timeout)

    def run(self) -> None:
        from confluent_kafka import Consumer

        from orderops.runtime.resend import ResendingProducer

        codec, answered = Codec(), set()
        consumer = Consumer(client_config(self.bootstrap, **{
            "group.id": self.group, "auto.offset.reset": "earliest" if self.from_start else "latest"}))
        consumer.subscribe([PAYMENTS_REFUND_REQUESTS.name])
        producer = ResendingProducer(self.bootstrap, "refund desk")
        try:
            while not self._stop_event.is_set():
                message = consumer.poll(0.3)
                producer.poll()  # delivery reports: a refused answer is sent again
                if message is None or message.error():
                    continue
                if self.order_ids is not None and message.key().decode() not in self.order_ids:
                    continue
                command = Envelope.from_record(codec.decode(message.value(), PAYMENTS_REFUND_REQUESTS.value_schema).record)
                self.commands.append(command)
                key = command.payload["refund_id"]
                if key in answered:
                    continue
                answered.add(key)
                fails = self.fails(command)
                payload = {"refund_id": key, "instrument_id": command.payload["instrument_id"],
                           "amount": command.payload["amount"]}
                answer = Envelope(f"provider:{key}", command.order_id, command.occurred_at + self.delay,
                                  "payment-provider",
                                  "orderops.payments.RefundFailed" if fails else "orderops.payments.RefundSucceeded",
                                  {**payload, "reason": "issuer declined", "retryable": True} if fails else payload)
                value = codec.encode_framed(self.framing, PAYMENTS_EVENTS.name, PAYMENTS_EVENTS.value_schema, answer.to_record())
                copies = [value] * (2 if self.answer_twice(command) else 1)
                if self.again_as_new_event(command):
                    again = Envelope(f"{answer.event_id}:again", *list(vars(answer).values())[1:])
                    copies.append(codec.encode_framed(self.framing, PAYMENTS_EVENTS.name, PAYMENTS_EVENTS.value_schema,
                                                      again.to_record()))
                if fails and self.fails_then_succeeds(command):
                    late = Envelope(f"provider:{key}:late", command.order_id, command.occurred_at + 2 * self.delay,
                                    "payment-provider", "orderops.payments.RefundSucceeded", payload)
                    copies.append(codec.encode_framed(self.framing, PAYMENTS_EVENTS.name, PAYMENTS_EVENTS.value_schema,
                                                      late.to_record()))
                    fails = False  # in the provider's book it succeeded
                    self.answers["refunds_failed_then_succeeded"] += 1
                for copy in copies:
                    producer.produce(PAYMENTS_EVENTS.name, key=command.order_id.encode(), value=copy)
                self.answers["refunds_failed" if fails else "refunds_succeeded"] += 1
                if not fails:
                    self.refunded[key] = (command.payload["instrument_id"], command.payload["amount"]["amount"])
        finally:
            if lost := producer.flush(45) + producer.lost:  # longer than a send's timeout: a stuck producer's go again
                self.answers["answers_not_delivered"] += lost
                print(f"refund desk: {lost} answer(s) not acknowledged: those refunds stay unanswered",
                      file=sys.stderr, flush=True)
            consumer.close()
