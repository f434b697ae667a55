"""The private names of faust-streaming and aiokafka that ``orderops.runtime.engine`` uses exist, and
the versions installed are the ones they were read from. A new pin fails here first: read the
engine's docstring against the new sources, then move ``PINNED``."""

from __future__ import annotations

import inspect

import aiokafka.consumer.subscription_state as subscription_state
import mode
from aiokafka import AIOKafkaConsumer
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from orderops.runtime import engine


def test_the_pinned_versions_are_installed():
    assert engine.versions_in_use() == engine.PINNED


def test_every_private_name_the_engine_uses_exists():
    consumer = faust_consumer.Consumer
    for name in ("_drain_messages", "_wait_next_records", "_commit"):
        assert callable(getattr(consumer, name)), name
    assert "_committed_offset" in inspect.getsource(consumer.__init__)
    assert list(inspect.signature(consumer._wait_next_records).parameters) == ["self", "timeout"]
    assert list(inspect.signature(consumer._drain_messages).parameters) == ["self", "fetcher"]
    assert callable(faust_aiokafka.Consumer._to_message)
    assert callable(faust_aiokafka.Consumer._new_consumer_thread)
    assert "self._stopped" in inspect.getsource(mode.Service.__init__)
    assert "self._subscription = SubscriptionState(" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert isinstance(subscription_state.SubscriptionState.subscription, property)
    assert isinstance(subscription_state.Subscription.assignment, property)
    assert isinstance(subscription_state.Assignment.tps, property)
    assert callable(subscription_state.Assignment.state_value)
    partition_init = inspect.getsource(subscription_state.TopicPartitionState.__init__)
    assert "self._position = None" in partition_init and "self.highwater = None" in partition_init
    assert isinstance(subscription_state.TopicPartitionState.paused, property)


def test_the_batch_consumer_overrides_the_fetch_loop_only_in_a_subclass():
    assert engine.BatchConsumer._drain_messages is not faust_aiokafka.Consumer._drain_messages
    assert faust_consumer.Consumer._drain_messages is not engine.BatchConsumer._drain_messages
    assert engine.BatchTransport.Consumer is engine.BatchConsumer
