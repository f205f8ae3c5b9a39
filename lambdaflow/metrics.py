"""Prometheus metric families shared by the streaming application's own endpoint and the serving app's
`/metrics`: each streaming query's progress, from rows shaped like `stream_progress` (the streaming app has
them in memory, the serving app reads them from the store), and the archiver's counts. Both endpoints give the
same names, so a dashboard can read either."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def offsets_of(text: str | None) -> dict[str, int]:
    """Stored offsets (JSON) as {"topic:partition": offset}; {} when unknown."""
    return {key: int(value) for key, value in json.loads(text).items()} if text else {}


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()  # the store's are naive UTC


def progress_metrics(rows: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """The families of the queries' rows; a value a row does not have (an older recorder's) is left out."""
    query = ["query"]
    partition = ["query", "topic", "partition"]
    lag = GaugeMetricFamily(
        "lambdaflow_stream_lag_records",
        "Records the broker has that the query has not processed yet",
        labels=query,
    )
    ends = GaugeMetricFamily(
        "lambdaflow_stream_end_offset",
        "The broker's end offset of a partition the query reads",
        labels=partition,
    )
    processed = GaugeMetricFamily(
        "lambdaflow_stream_processed_offset",
        "The next offset of a partition the query will process",
        labels=partition,
    )
    input_rate = GaugeMetricFamily(
        "lambdaflow_stream_input_rows_per_second",
        "Rows arriving per second, as of the last micro-batch",
        labels=query,
    )
    processed_rate = GaugeMetricFamily(
        "lambdaflow_stream_processed_rows_per_second",
        "Rows processed per second in the last micro-batch",
        labels=query,
    )
    duration = GaugeMetricFamily(
        "lambdaflow_stream_batch_duration_seconds", "How long the last micro-batch took", labels=query
    )
    late = CounterMetricFamily(
        "lambdaflow_stream_late_rows", "Rows dropped behind the watermark", labels=query
    )
    invalid = CounterMetricFamily(
        "lambdaflow_stream_invalid_rows",
        "Records that broke their contract (left to the archiver's quarantine)",
        labels=query,
    )
    alerts = CounterMetricFamily(
        "lambdaflow_alerts_fired", "Alerts the query stored (each once)", labels=["query", "rule"]
    )
    reported = GaugeMetricFamily(
        "lambdaflow_stream_last_report_timestamp_seconds",
        "When the stream last reported on the query",
        labels=query,
    )
    progressed = GaugeMetricFamily(
        "lambdaflow_stream_last_progress_timestamp_seconds",
        "When the query's processed offsets last moved, or it last had no lag",
        labels=query,
    )
    for row in rows:
        name = row["query"]
        for family, value in (
            (lag, row.get("lag_records")),
            (input_rate, row.get("input_rows_per_second")),
            (processed_rate, row.get("processed_rows_per_second")),
            (duration, None if row.get("batch_duration_ms") is None else row["batch_duration_ms"] / 1000),
            (late, row["late_rows"]),
            (invalid, row["invalid_rows"]),
            (reported, _epoch(row["updated_at"])),
            (progressed, _epoch(row.get("progressed_at"))),
        ):
            if value is not None:
                family.add_metric([name], value)
        for family, offsets in ((ends, row.get("end_offsets")), (processed, row.get("processed_offsets"))):
            for key, offset in sorted(offsets_of(offsets).items()):
                topic, _, number = key.rpartition(":")
                family.add_metric([name, topic, number], offset)
        for rule, count in sorted(json.loads(row.get("alerts_fired") or "{}").items()):
            alerts.add_metric([name, rule], count)
    return [lag, ends, processed, input_rate, processed_rate, duration, late, invalid, alerts, reported,
            progressed]  # fmt: skip


def archiver_metrics(status_file: Path) -> list[Metric]:
    """The archiver's counts per topic, from its status file (cumulative across restarts)."""
    try:
        topics = json.loads(status_file.read_text())["topics"]
    except (
        OSError,
        ValueError,
        KeyError,
    ):  # no archiver yet (it replaces the file whole: never half-written)
        topics = {}
    archived = CounterMetricFamily(
        "lambdaflow_archiver_archived_records",
        "Valid records the archiver wrote to the lake",
        labels=["topic"],
    )
    quarantined = CounterMetricFamily(
        "lambdaflow_archiver_quarantined_records",
        "Invalid records the archiver quarantined (and sent to the dead-letter topic)",
        labels=["topic"],
    )
    for topic, counts in sorted(topics.items()):
        archived.add_metric([topic], counts["valid"])
        quarantined.add_metric([topic], counts["invalid"])
    return [archived, quarantined]


class Families:
    """A collector of the families `build` makes at each scrape."""

    def __init__(self, build: Callable[[], Iterable[Metric]]) -> None:
        self.build = build

    def collect(self) -> Iterator[Metric]:
        return iter(self.build())
