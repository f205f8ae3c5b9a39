"""Fault injection for tests and demos: duplicates, late and out-of-order events, malformed records.

Each generated event gets at most one fault; fractions are probabilities per event. A duplicate is the same
bytes sent again a few records later (same `event_id`), as a retrying producer would.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from lambdaflow.contracts import format_ts

MALFORMED_KINDS = (
    "not_json",
    "not_object",
    "missing_field",
    "out_of_range",
    "wrong_type",
    "future_ts",
    "non_utc_ts",
    "bad_enum",
)


@dataclass(frozen=True)
class Faults:
    duplicates: float = 0.0
    late: float = 0.0
    out_of_order: float = 0.0
    malformed: float = 0.0
    watermark: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        for name in ("duplicates", "late", "out_of_order", "malformed"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a fraction between 0 and 1, got {value}"
                )
        if self.late + self.out_of_order + self.malformed > 1:
            raise ValueError("--late + --out-of-order + --malformed must not exceed 1")

    @property
    def any(self) -> bool:
        return any((self.duplicates, self.late, self.out_of_order, self.malformed))


def _shift(event: dict, delta: timedelta) -> dict:
    moment = datetime.fromisoformat(event["ts"]) + delta
    return {**event, "ts": format_ts(moment)}


def _malform(event: dict, rng: random.Random, kind: str) -> bytes:
    payload = orjson.dumps(event)
    numeric = next((k for k in ("temperature", "battery", "amount") if k in event), None)
    match kind:
        case "not_json":
            return payload[: rng.randrange(1, len(payload) - 1)]
        case "not_object":
            return orjson.dumps([event])
        case "missing_field":
            broken = dict(event)
            broken.pop(rng.choice([k for k in event if k != "amount"]))
            return orjson.dumps(broken)
        case "out_of_range" if "temperature" in event:
            return orjson.dumps({**event, "temperature": rng.choice([-80.0, 150.0, 999.9])})
        case "out_of_range":
            return orjson.dumps({**event, "event_type": "purchase", "amount": -abs(rng.uniform(1, 100))})
        case "wrong_type":
            return orjson.dumps({**event, numeric or "ts": "n/a"})
        case "future_ts":  # ahead of the wall clock, so ahead of the record's Kafka timestamp too
            ahead = datetime.now(UTC) + timedelta(hours=rng.uniform(1, 48))
            return orjson.dumps({**event, "ts": format_ts(ahead)})
        case "non_utc_ts":
            return orjson.dumps({**event, "ts": event["ts"].replace("Z", "+02:00")})
        case _:  # bad_enum
            if "event_type" in event:
                return orjson.dumps({**event, "event_type": "teleport"})
            return orjson.dumps({**event, "event_id": "not-a-uuid"})


@dataclass
class FaultInjector:
    """Turns a stream of events into a stream of record values with faults, and counts what it injected."""

    faults: Faults
    seed: int = 42
    counts: Counter = field(default_factory=Counter)

    def apply(self, events: Iterator[dict], key_of) -> Iterator[tuple[bytes, bytes]]:
        faults, counts = self.faults, self.counts
        if not faults.any:  # the common case, kept lean: it bounds the producer's throughput
            for event in events:
                counts["valid"] += 1
                yield key_of(event), orjson.dumps(event)
            return
        rng = random.Random(self.seed ^ 0x5EED)
        pending: deque[tuple[int, bytes, bytes]] = deque()  # duplicates waiting to be re-sent
        for number, event in enumerate(events):
            while pending and pending[0][0] <= number:
                _, key, value = pending.popleft()
                counts["duplicate"] += 1
                yield key, value
            roll = rng.random()
            key = key_of(event)
            if roll < faults.malformed:
                kind = rng.choice(MALFORMED_KINDS)
                counts["malformed"] += 1
                counts[f"malformed.{kind}"] += 1
                yield key, _malform(event, rng, kind)
                continue
            roll -= faults.malformed
            if roll < faults.late:
                delay = faults.watermark + timedelta(seconds=rng.uniform(60, 1800))
                event = _shift(event, -delay)
                counts["late"] += 1
            elif roll - faults.late < faults.out_of_order:
                event = _shift(
                    event, -timedelta(seconds=rng.uniform(5, faults.watermark.total_seconds() / 2))
                )
                counts["out_of_order"] += 1
            value = orjson.dumps(event)
            counts["valid"] += 1
            if faults.duplicates and rng.random() < faults.duplicates:
                pending.append((number + rng.randint(1, 50), key, value))
            yield key, value
        for _, key, value in pending:
            counts["duplicate"] += 1
            yield key, value
