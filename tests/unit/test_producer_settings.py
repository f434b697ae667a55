"""What a processor's Faust producer is configured with, from the environment."""

from __future__ import annotations

from orderops.ops.settings import ServiceSettings
from orderops.runtime.engine import BatchTransport
from orderops.service import _faust_app


def test_records_linger_five_ms_by_default_so_outputs_and_changelog_writes_share_requests(monkeypatch, tmp_path):
    monkeypatch.setenv("ORDEROPS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ORDEROPS_PRODUCER_LINGER_MS", raising=False)
    app = _faust_app(ServiceSettings.from_env("order-state", 8080))
    assert app.conf.producer_linger == 0.005
    assert app.conf.producer_acks == -1


def test_the_linger_is_set_by_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ORDEROPS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ORDEROPS_PRODUCER_LINGER_MS", "0")
    assert _faust_app(ServiceSettings.from_env("order-state", 8080)).conf.producer_linger == 0


def test_the_notifier_does_not_linger_its_batches_wait_for_acks_before_and_after_the_sends(monkeypatch, tmp_path):
    monkeypatch.setenv("ORDEROPS_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("ORDEROPS_PRODUCER_LINGER_MS", raising=False)
    import notifier.app

    assert notifier.app.app.conf.producer_linger == 0


def test_a_record_may_take_a_minute_before_a_new_client_sends_it_again_unless_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("ORDEROPS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ORDEROPS_PRODUCER_MESSAGE_TIMEOUT_SECONDS", raising=False)
    assert _faust_app(ServiceSettings.from_env("order-state", 8080)).conf.producer_request_timeout == 60
    monkeypatch.setenv("ORDEROPS_PRODUCER_MESSAGE_TIMEOUT_SECONDS", "15")
    app = _faust_app(ServiceSettings.from_env("order-state", 8080))
    assert app.conf.producer_request_timeout == 15
    app.transport = BatchTransport(app.conf.broker_consumer, app)  # as Service.batches gives it
    assert app.producer._config()["message.timeout.ms"] == 15_000  # what librdkafka's client is given
