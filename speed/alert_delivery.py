"""Delivery of new alerts to the alerts topic: each alert row as JSON, keyed by its subject (sensor or
session), through one librdkafka producer per Kafka connection kept for the process, waiting until the broker
has acknowledged them all. The sink publishes before it commits, so the topic is at least once."""

from __future__ import annotations

from typing import Any

import orjson
from confluent_kafka import Producer

from lambdaflow.kafka import KafkaConnection
from lambdaflow.settings import Settings

_ALERT_PRODUCERS: dict[KafkaConnection, Producer] = {}
ALERT_PUBLISH_TIMEOUT_S = 60.0


def publish_alerts(
    settings: Settings, alerts: list[dict[str, Any]], timeout_s: float = ALERT_PUBLISH_TIMEOUT_S
) -> None:
    """Send alert rows to the alerts topic, keyed by subject (sensor or session), as JSON, and wait until the
    broker has them all; a record it refused raises (the micro-batch then fails and is replayed). librdkafka,
    not kafka-python, whose batching and sending run in Python on the driver (librdkafka's run in C)."""
    if not alerts:
        return
    connection = KafkaConnection.from_settings(settings)
    producer, failures = alert_producer(connection), []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(error)

    for alert in alerts:
        while True:
            try:
                producer.produce(settings.topic_alerts, key=alert["subject"].encode(),
                                 value=orjson.dumps(alert), on_delivery=delivered)  # fmt: skip
                break
            except BufferError:  # the local queue is full: let librdkafka send some first
                producer.poll(0.1)
    unsent = producer.flush(timeout_s)
    if failures or unsent:
        lost = len(failures) + unsent
        reason = failures[0] if failures else f"{unsent} not acknowledged in {timeout_s:g} s"
        # the replay sends them all again: drop what is still queued rather than send it twice later, and
        # the producer with it (a new one reconnects)
        producer.purge()
        producer.flush(0)
        del _ALERT_PRODUCERS[connection]
        raise RuntimeError(f"{lost} alerts not published to {settings.topic_alerts}: {reason}")


def alert_producer(connection: KafkaConnection) -> Producer:
    """The process's alert producer for this connection (a connection that differs in any setting, such as
    its credentials, gets its own)."""
    if connection not in _ALERT_PRODUCERS:
        # murmur2: a subject's alerts land on the partition the Java client (and kafka-python) would choose
        _ALERT_PRODUCERS[connection] = Producer(
            {**connection.rdkafka(), "acks": "all", "linger.ms": 5, "partitioner": "murmur2_random"}
        )
    return _ALERT_PRODUCERS[connection]
