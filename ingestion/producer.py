"""Kafka producers: simulated events at a steady rate, or a file replayed line by line.

One kafka-python producer per process, tuned for throughput (large batches, a short linger, acks=1, the C
CRC-32C from the `crc32c` package). A progress line with the rate goes to stderr while it runs.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import kafka
import orjson
from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2
from kafka.producer.future import FutureRecordMetadata

from lambdaflow.kafka import CONNECT_TIMEOUT_MS, KafkaConnection

PROGRESS_INTERVAL_S = 1.0
# A paced producer sleeps only once it is this far ahead of its rate, so it sends in bursts of at most this
# long: sleeping before every record costs more CPU than sending, CPU that the streaming app beside it on the
# same cores needs. A burst is one produce request, one record batch a partition: the embedded broker's memory
# storage lists every batch it holds on each Fetch, so fewer, longer bursts slow the growth of its CPU.
PACING_SLICE_S = 0.2


class KeyPartitioner:
    """Kafka's default placement of keyed records (murmur2 of the key), memoised per key.

    Deciding the partition here skips kafka-python's per-record partitioner call; with a few thousand
    distinct keys (sensors, sessions), nearly every record's partition is a dict lookup.
    """

    def __init__(self, producer: KafkaProducer, topic: str, max_keys: int = 1_000_000) -> None:
        partitions = producer.partitions_for(topic)
        if not partitions:
            raise ValueError(
                f"topic {topic!r} does not exist (run `lambdaflow topics` or `lambdaflow broker`)"
            )
        self.count = len(partitions)
        self.max_keys = max_keys
        self._cache: dict[bytes, int] = {}
        self._keyless = 0

    def __call__(self, key: bytes | None) -> int:
        if key is None:  # round robin, like the sticky partitioner's spread over time
            self._keyless = (self._keyless + 1) % self.count
            return self._keyless
        partition = self._cache.get(key)
        if partition is None:
            if len(self._cache) >= self.max_keys:
                self._cache.clear()
            partition = self._cache[key] = (murmur2(key) & 0x7FFFFFFF) % self.count
        return partition


FAST_PATH_KAFKA_PYTHON = "3.0.12"  # the pinned version whose RecordAccumulator.append signature is used below
FAST_PATH_MAX_BYTES = 512 * 1024  # larger records take the public send(), which checks their size


class RecordSender:
    """Sends (key, value) records to one topic with kafka-python as fast as one process can.

    `KafkaProducer.send` re-validates, for every record, arguments that are already bytes; on the pinned
    kafka-python, records go straight to the producer's accumulator, which is what `send` does after those
    checks. Any other kafka-python version, a transactional producer or a large record uses the public `send`.
    """

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer, self.topic = producer, topic
        self.partition_of = KeyPartitioner(producer, topic)
        self.partitions = [TopicPartition(topic, number) for number in range(self.partition_of.count)]
        accumulator = getattr(producer, "_accumulator", None)
        self.fast = (
            kafka.__version__ == FAST_PATH_KAFKA_PYTHON
            and accumulator is not None
            and not getattr(producer, "_transaction_manager", None)
        )
        if self.fast:
            self._append = accumulator.append
            self._wakeup = producer._sender.wakeup

    def send(self, key: bytes | None, value: bytes) -> FutureRecordMetadata:
        partition = self.partition_of(key)
        if self.fast and len(value) < FAST_PATH_MAX_BYTES:
            future, batch_is_full, new_batch, _ = self._append(
                self.partitions[partition], None, key, value, []
            )
            if batch_is_full or new_batch:
                self._wakeup()
            return future
        return self.producer.send(self.topic, key=key, value=value, partition=partition)


def make_producer(connection: KafkaConnection, **overrides: Any) -> KafkaProducer:
    settings = {
        "acks": 1,
        "enable_idempotence": False,  # required with acks=1 on kafka-python 3
        "linger_ms": 20,
        "batch_size": 512 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        "retries": 5,
        # a misspelt topic must fail, not be created; Tansu creates it all the same, so `lambdaflow produce`
        # first checks that its topic exists (`ingestion.topics.check_topic_exists`)
        "allow_auto_create_topics": False,
        "bootstrap_timeout_ms": CONNECT_TIMEOUT_MS,
        **connection.kafka_python(),
        **overrides,
    }
    return KafkaProducer(**settings)


@dataclass
class SendReport:
    topic: str
    sent: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    faults: Counter = field(default_factory=Counter)
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> str:
        line = f"{self.topic}: sent {self.sent:,} records in {self.elapsed_s:.1f} s ({self.rate:,.0f}/s)"
        injected = {k: v for k, v in sorted(self.faults.items()) if k != "valid" and "." not in k}
        if injected:
            line += "; injected " + ", ".join(f"{k.replace('_', '-')} {v:,}" for k, v in injected.items())
        if self.failed:
            line += f"; {self.failed:,} FAILED ({self.first_error})"
        return line


def send_records(
    producer: KafkaProducer,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    rate: float = 0.0,
    count: int | None = None,
    duration_s: float | None = None,
    progress: TextIO | None = sys.stderr,
    report: SendReport | None = None,
) -> SendReport:
    """Send (key, value) records at `rate` per second (0: as fast as possible) until exhausted, `count` or
    `duration_s`; flush, and report what was sent and what failed."""
    report = report or SendReport(topic)

    def failed(exc: BaseException) -> None:
        report.failed += 1
        report.first_error = report.first_error or f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    next_progress = started + PROGRESS_INTERVAL_S
    deadline = started + duration_s if duration_s else None
    sent = 0
    send = RecordSender(producer, topic).send
    thresholds = gc.get_threshold()
    gc.set_threshold(200_000, *thresholds[1:])  # fewer young-generation sweeps over the records in flight
    try:
        # islice stops before pulling record count+1: a generator counting what it yields (the fault
        # injector) must never count a record that is not sent
        for key, value in islice(records, count):
            if rate:
                ahead = started + sent / rate - time.monotonic()
                if ahead >= PACING_SLICE_S:
                    time.sleep(ahead)
            send(key, value).add_errback(failed)
            sent += 1
            if sent % 1000 == 0:
                now = time.monotonic()
                if deadline and now >= deadline:
                    break
                if progress and now >= next_progress:
                    next_progress = now + PROGRESS_INTERVAL_S
                    progress.write(f"\r{topic}: {sent:,} sent, {sent / (now - started):,.0f}/s   ")
                    progress.flush()
    finally:
        gc.set_threshold(*thresholds)
        try:
            producer.flush(timeout=60)
        except KafkaError as exc:
            failed(exc)
        report.sent = sent
        report.elapsed_s = time.monotonic() - started
        if progress:
            progress.write("\r" + " " * 60 + "\r")
    return report


def file_records(path: Path, key_field: str | None = None) -> Iterator[tuple[bytes | None, bytes]]:
    """Each line of a file (without its line ending) as one record value, byte for byte.

    The key is the line's `key_field` when the line is a JSON object that has it, else no key: lines that
    are not valid events are sent all the same, so consumers can prove that they quarantine them.
    """
    with path.open("rb") as lines:
        for line in lines:
            value = line.rstrip(b"\r\n")
            key = None
            if key_field:
                try:
                    parsed = orjson.loads(value)
                    if isinstance(parsed, dict) and isinstance(parsed.get(key_field), str):
                        key = parsed[key_field].encode()
                except orjson.JSONDecodeError:
                    pass
            yield key, value
