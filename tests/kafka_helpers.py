"""Test helpers that talk to the broker with plain kafka-python (independent of the code under test)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from kafka import KafkaConsumer, TopicPartition


@dataclass(frozen=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    timestamp: datetime
    key: bytes | None
    value: bytes | None
    headers: tuple

    @property
    def coordinates(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[RawRecord]:
    """Every record of a topic, reading until `expected` records arrived (and a quiet second after)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[RawRecord] = []
        deadline = time.monotonic() + timeout_s
        quiet_until = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for tp_records in batch.values():
                records += [
                    RawRecord(r.topic, r.partition, r.offset, datetime.fromtimestamp(r.timestamp / 1000, UTC),
                              r.key, r.value, tuple(r.headers))
                    for r in tp_records
                ]  # fmt: skip
            if len(records) >= expected:
                quiet_until = quiet_until or time.monotonic() + 1.0
                if time.monotonic() >= quiet_until and not batch:
                    break
        return records
    finally:
        consumer.close()


def produce_values(
    bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None] | None = None
) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, linger_ms=5)
    for index, value in enumerate(values):
        producer.send(topic, key=keys[index] if keys else None, value=value)
    producer.flush()
    producer.close()
