"""The alert producer: an alert the broker does not acknowledge fails the micro-batch, and a producer is kept
per Kafka connection, so one made for other credentials is never reused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from lambdaflow.broker import free_port
from lambdaflow.kafka import KafkaConnection
from lambdaflow.settings import load_settings
from speed import alert_delivery
from speed.alert_delivery import alert_producer, publish_alerts


def test_alerts_the_broker_does_not_acknowledge_fail_the_micro_batch(tmp_path):
    """Spark then replays the micro-batch (same alert ids) instead of committing alerts the topic lacks."""
    unreachable = load_settings(data_dir=tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    alert = {"alert_id": "a1", "rule": "temperature_high", "ts": datetime.now(UTC), "subject": "sensor-a",
             "value": 31.0, "threshold": 30.0, "event": "{}", "created_at": datetime.now(UTC)}  # fmt: skip
    with pytest.raises(RuntimeError, match=r"^1 alerts not published to alerts: 1 not acknowledged in 1 s$"):
        publish_alerts(unreachable, [alert], timeout_s=1)


def test_a_connection_that_differs_in_any_setting_has_its_own_producer():
    plain = KafkaConnection(f"127.0.0.1:{free_port()}")
    other_user = replace(plain, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                         sasl_username="someone-else", sasl_password="secret")  # fmt: skip
    try:
        assert alert_producer(plain) is alert_producer(KafkaConnection(plain.bootstrap_servers))
        assert alert_producer(other_user) is not alert_producer(plain)
        assert alert_producer(other_user) is alert_producer(replace(other_user))
    finally:  # no producer left retrying a broker that is not there
        for connection in (plain, other_user):
            alert_delivery._ALERT_PRODUCERS.pop(connection, None)
