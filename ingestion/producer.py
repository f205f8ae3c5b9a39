"""Kafka producers: simulated events at a steady rate, or a file replayed line by line.

One kafka-python producer per process, tuned for throughput (large batches, a short linger, acks=1, the C
CRC-32C from the `crc32c` package). A progress line with the rate goes to stderr while it runs.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError

PROGRESS_INTERVAL_S = 1.0


def make_producer(client_config: dict[str, Any], **overrides: Any) -> KafkaProducer:
    settings = {
        "acks": 1,
        "enable_idempotence": False,  # required with acks=1 on kafka-python 3
        "linger_ms": 20,
        "batch_size": 512 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        "retries": 5,
        **client_config,
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
    send = producer.send
    try:
        for key, value in records:
            if count is not None and sent >= count:
                break
            if rate:
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            send(topic, key=key, value=value).add_errback(failed)
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
