"""Simulated history for the demo: the last few days of events, sent through Kafka before the live producers.

The history of a topic is the live producer's simulator and fault mix run on a simulated clock over whole
UTC days, at a lower event density than live (so days of events take about a minute to send), seeded by its
kind and first day: sending it again after an interrupted start repeats the same `event_id`s, which the batch
layer dedupes. A marker per topic in the data directory, written once its history is flushed, makes the next
start skip it.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from pathlib import Path

from ingestion.faults import FaultInjector, Faults
from ingestion.simulators import ActivitySimulator, IotSimulator, simulated_clock
from lambdaflow.lake import write_text_atomically

# Simulated events per second of event time, per kind: a reading per sensor every 100 s and a few concurrent
# web sessions; both divide a day evenly, so every day holds the same number of events.
EVENTS_PER_SECOND = {"iot": 0.5, "activity": 0.25}
SECONDS_PER_DAY = 86_400
ACTIVITY_THINK_S = 20.0


@dataclass(frozen=True)
class HistoryPlan:
    """`days` whole UTC days from `first_day` of one kind's events, sent in about `send_seconds`."""

    kind: str
    first_day: date
    days: int
    send_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.kind not in EVENTS_PER_SECOND:
            raise ValueError(f"no history for {self.kind!r}: expected one of {', '.join(EVENTS_PER_SECOND)}")
        if self.days < 1 or self.send_seconds <= 0:
            raise ValueError("a history needs at least one day and a positive sending time")

    @property
    def day_list(self) -> list[date]:
        return [self.first_day + timedelta(days=number) for number in range(self.days)]

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first_day, datetime.min.time(), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The end (exclusive) of the last day."""
        return self.start + timedelta(days=self.days)

    @property
    def events_per_day(self) -> int:
        return round(EVENTS_PER_SECOND[self.kind] * SECONDS_PER_DAY)

    @property
    def events(self) -> int:
        """Simulated events (before faults add duplicates)."""
        return self.events_per_day * self.days

    @property
    def send_rate(self) -> float:
        """Records per second that send the history in `send_seconds`."""
        return self.events / self.send_seconds

    @property
    def seed(self) -> int:
        return zlib.crc32(f"history:{self.kind}:{self.first_day.isoformat()}".encode())


def plan_history(kind: str, today: date, days: int, send_seconds: float = 60.0) -> HistoryPlan:
    """The `days` whole days before `today` (today itself is left to the live producers)."""
    return HistoryPlan(kind, today - timedelta(days=days), days, send_seconds)


def _simulator(plan: HistoryPlan) -> IotSimulator | ActivitySimulator:
    if plan.kind == "iot":
        return IotSimulator(seed=plan.seed)
    # concurrency ≈ rate × think time keeps the sessions' own timelines in step with the clock
    concurrency = max(1, round(EVENTS_PER_SECOND[plan.kind] * ACTIVITY_THINK_S))
    return ActivitySimulator(seed=plan.seed, concurrency=concurrency, think_s=ACTIVITY_THINK_S)


def history_events(
    plan: HistoryPlan, simulator: IotSimulator | ActivitySimulator | None = None
) -> Iterator[dict]:
    """The plan's events, evenly spaced in event time from its first day's midnight to its last day's end."""
    clock = simulated_clock(plan.start, EVENTS_PER_SECOND[plan.kind])
    return islice((simulator or _simulator(plan)).events(clock), plan.events)


def history_records(plan: HistoryPlan, faults: Faults) -> tuple[Iterator[tuple[bytes, bytes]], Counter]:
    """The plan's events as (key, value) records with the fault mix, and the injector's running counts."""
    simulator = _simulator(plan)
    injector = FaultInjector(faults, plan.seed)
    return injector.apply(history_events(plan, simulator), simulator.key), injector.counts


def marker_path(data_dir: Path, topic: str) -> Path:
    return data_dir.resolve() / "history" / f"{topic}.json"


@dataclass(frozen=True)
class HistoryMarker:
    """What a topic's marker records: which days were sent, and how many records."""

    topic: str
    first_day: date
    days: int
    records: int
    sent_at: datetime


def write_marker(data_dir: Path, topic: str, plan: HistoryPlan, records: int) -> Path:
    path = marker_path(data_dir, topic)
    marker = HistoryMarker(topic, plan.first_day, plan.days, records, datetime.now(UTC))
    write_text_atomically(path, json.dumps(asdict(marker), default=str, indent=1) + "\n")  # whole or absent
    return path


def read_marker(data_dir: Path, topic: str) -> HistoryMarker | None:
    path = marker_path(data_dir, topic)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return HistoryMarker(
        raw["topic"],
        date.fromisoformat(raw["first_day"]),
        int(raw["days"]),
        int(raw["records"]),
        datetime.fromisoformat(raw["sent_at"]),
    )
