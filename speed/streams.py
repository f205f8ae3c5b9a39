"""The speed layer: one streaming query per topic, keeping that topic's views and alerts in the store.

A query reads its topic once: Kafka source → contract validation (the kernel's, shared with the archiver) →
watermark → dedupe on `event_id` within the watermark → the shared cleaning. Each micro-batch of new events is
aggregated into each view's partial rows (`lambdaflow.views.Increment`), which are merged with the stored ones
of the same keys, and checked against the alert rules. The merged rows, the new alerts and the batch id go to
the store in one transaction (`speed_commits`): Spark replays an unfinished micro-batch with the same id,
which the store then skips, so every event counts once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener
from sqlalchemy import select, tuple_

from lambdaflow import store
from lambdaflow.contracts import MODELS
from lambdaflow.kafka import KafkaConnection, source_options
from lambdaflow.kafka_source import FORMAT, EndOffsetProbe, offset_key, parse_offset_key, positions
from lambdaflow.pyspark_compat import progress_from_json
from lambdaflow.records import INVALID
from lambdaflow.settings import Settings
from lambdaflow.spark import signalling_its_end, trigger
from lambdaflow.views import VIEWS, Parameters
from lambdaflow.views.spark import SPARK_VIEWS, breaks_a_threshold, built_once, clean, dedupe_within_watermark
from speed.alerts import Alert, Baselines, Thresholds, reading_alerts, session_alerts
from speed.increments import merge_sessions, merge_windows

log = logging.getLogger(__name__)


INVALID_METRIC = "records"  # observed metric: the records of a micro-batch that broke their contract


def valid_events(spark: SparkSession, settings: Settings, contract: str) -> DataFrame:
    """The stream of valid events of one contract's topic. Invalid records are counted (the `records`
    observed metric, which the progress recorder adds to `stream_progress.invalid_rows`) and left to the
    archiver, which routes them to the dead-letter topic and the quarantine."""
    assert contract in MODELS
    parsed = (  # the source validates as it reads: the raw records never cross into the JVM and back
        spark.readStream.format(FORMAT)
        .options(**source_options(settings))
        .option("subscribe", settings.topic_for(contract))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(settings.max_records_per_trigger))
        .option("contract", contract)
        .option("maxFutureSeconds", str(settings.max_future_seconds))
        .load()
    )
    invalid = F.sum(F.col(INVALID).cast("long")).alias("invalid_rows")
    return parsed.observe(INVALID_METRIC, invalid).where(~F.col(INVALID)).drop(INVALID)


def speed_events(spark: SparkSession, settings: Settings, contract: str) -> DataFrame:
    """The valid events of a contract's topic behind the watermark, deduplicated within it and cleaned."""
    events = valid_events(spark, settings, contract).withWatermark(
        "ts", f"{settings.watermark_seconds} seconds"
    )
    return clean(dedupe_within_watermark(events))


ALERTS = "alerts"  # the reading alerts, kept by the IoT query (session alerts come with the sessions view)
QUERY_PARTS: dict[str, tuple[str, ...]] = {
    contract: (*(name for name, view in VIEWS.items() if view.contract == contract),
               *((ALERTS,) if contract == "iot_sensors" else ()))
    for contract in MODELS
}  # fmt: skip


def query_name(contract: str) -> str:
    return f"speed_{contract}"


# The speed queries' checkpoints live under a directory named for their plan's version: Spark cannot resume
# a checkpoint whose stateful operators changed, so a new plan starts new checkpoints (and rebuilds the views
# from the topics' start) rather than failing on the old ones. v2: the dedupe is DedupeWithinWatermark; v3: it
# keeps only its timers, no value state; v4: its state is a map of ids per hash group, scanned by timer.
CHECKPOINTS = "speed-v4"


def checkpoint_of(settings: Settings, contract: str, parts: tuple[str, ...]) -> Path:
    """A query's checkpoint; one that keeps only some of its topic's parts has its own (it will have merged
    different events)."""
    suffix = "" if set(parts) == set(QUERY_PARTS[contract]) else "-" + "+".join(sorted(parts))
    return settings.checkpoint_dir / CHECKPOINTS / f"{query_name(contract)}{suffix}"


@dataclass
class SpeedSink:
    """foreachBatch function of a topic's query: merge one micro-batch into the store, exactly once."""

    settings: Settings
    contract: str
    parts: tuple[str, ...]
    checkpoint: Path
    _checkpoint_id: str | None = None

    @property
    def name(self) -> str:
        return query_name(self.contract)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        views = [part for part in self.parts if part in VIEWS]
        thresholds = Thresholds.from_settings(self.settings)
        engine = store.engine(self.settings.resolved_store_url)
        with engine.connect() as connection:
            baselines = _baselines(connection) if ALERTS in self.parts else {}
        batch.persist()
        try:
            partials = {view: self._partial_rows(batch, view) for view in views}
            readings = reading_alert_candidates(batch, thresholds, baselines) if ALERTS in self.parts else []
        finally:
            batch.unpersist()
        spark_s = time.monotonic() - started
        checkpoint_id = self.checkpoint_id()
        commits = store.speed_commits
        # Read and merge first, write in one short transaction: only this query writes its views and commit
        # row, and SQLite has one writer for the whole store.
        with engine.connect() as connection:
            key = commits.c.query == self.checkpoint.name
            commit = connection.execute(select(commits).where(key)).first()
            if commit is not None and commit.checkpoint_id == checkpoint_id and batch_id <= commit.batch_id:
                log.info("%s batch %d: merged before, skipped (a replay)", self.name, batch_id)
                return
            # a new checkpoint's first batch starts at the topic's start: its views are rebuilt, not added to
            rebuild = batch_id == 0
            merged = {
                view: merge_view(connection, self.settings, view, rows, rebuild)
                for view, rows in partials.items()
                if rows
            }
            alerts = [alert for event in readings for alert in reading_alerts(event, thresholds, baselines)]
            for session in merged["sessions"].rows if "sessions" in merged else ():
                alerts += session_alerts(session, thresholds)
            new = new_alerts(connection, alerts)
        now = datetime.now(UTC)
        alert_rows = [alert.row(now) for alert in new]
        # Published before the commit: a crash in between re-sends these on replay (same ids) rather than
        # losing them. The topic is at least once, the store exactly once.
        publish_alerts(self.settings, alert_rows)
        with engine.begin() as connection:
            for view in views if rebuild else ():
                connection.execute(store.SPEED_TABLES[view].delete())
            for view, rows in merged.items():
                write_view(connection, view, rows, now)
            store.insert_new_rows(connection, store.alerts, alert_rows)
            commit_row = {"query": self.checkpoint.name, "checkpoint_id": checkpoint_id, "batch_id": batch_id,
                          "committed_at": now}  # fmt: skip
            store.upsert_rows(connection, commits, [commit_row])
        _count_fired(self.name, alert_rows)
        log.info("%s batch %d: %s; %d new alerts in %.2f s (Spark %.2f s)", self.name, batch_id,
                 ", ".join(f"{len(done.rows)} {view} rows" for view, done in merged.items()) or "no rows",
                 len(new), time.monotonic() - started, spark_s)  # fmt: skip

    def _partial_rows(self, batch: DataFrame, view: str) -> list[dict[str, Any]]:
        parameters = Parameters.from_settings(self.settings)
        return SPARK_VIEWS[view].partial(batch, parameters).toArrow().to_pylist()

    def checkpoint_id(self) -> str:
        """The query id Spark keeps in the checkpoint (a new checkpoint, a new id)."""
        if self._checkpoint_id is None:
            metadata = (self.checkpoint / "metadata").read_text().splitlines()[0]
            self._checkpoint_id = json.loads(metadata)["id"]
        return self._checkpoint_id


_IN_CHUNK = 500  # keys per IN list


@dataclass
class MergedView:
    """A view's rows merged with the stored ones, and the stored keys they replace (sessions whose start moved
    as they merged: their rows are deleted, the rest upserted in place)."""

    rows: list[dict[str, Any]]
    replaced: list[tuple[Any, ...]] = field(default_factory=list)


def merge_view(
    connection: Any, settings: Settings, view: str, rows: list[dict[str, Any]], rebuild: bool = False
) -> MergedView:
    """One view's partial rows merged with the stored ones of the same keys (none when `rebuild`); for
    sessions, every session of the session ids in `rows`."""
    table, definition = store.SPEED_TABLES[view], VIEWS[view]
    stored: list[Any] = []
    if definition.increment.sessions:
        ids = sorted({row["session_id"] for row in rows})
        for chunk in _chunks([] if rebuild else ids):
            stored += _dicts(connection.execute(select(table).where(table.c.session_id.in_(chunk))))
        merged = merge_sessions(definition.increment, stored, rows, settings.session_gap_seconds)
        kept = {(row["session_id"], row["session_start"].replace(tzinfo=None)) for row in merged}  # UTC
        stale = {(row["session_id"], row["session_start"]) for row in stored} - kept
        return MergedView(merged, sorted(stale))
    keys = [table.c[name] for name in definition.keys]
    wanted = sorted({tuple(store.stored_value(row[name]) for name in definition.keys) for row in rows})
    for chunk in _chunks([] if rebuild else wanted):
        stored += _dicts(connection.execute(select(table).where(tuple_(*keys).in_(chunk))))
    return MergedView(merge_windows(definition.increment, definition.keys, stored, rows))


def _dicts(result: Any) -> list[dict[str, Any]]:
    """A result's rows as plain dicts (SQLAlchemy's RowMapping is slow to copy, and the merges copy them)."""
    names = list(result.keys())
    return [dict(zip(names, row, strict=True)) for row in result]


def write_view(connection: Any, view: str, merged: MergedView, now: datetime) -> None:
    """Write a view's merged rows (in the caller's transaction): upserted by key, after deleting the stored
    rows they replace. Deleting and reinserting every merged session (~2,400 a micro-batch at the demo's
    rate) took twice as long as upserting them in place."""
    table = store.SPEED_TABLES[view]
    keys = [table.c[name] for name in VIEWS[view].keys]
    for chunk in _chunks(merged.replaced):
        connection.execute(table.delete().where(tuple_(*keys).in_(chunk)))
    store.upsert_rows(connection, table, [{**row, "updated_at": now} for row in merged.rows])


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def start_speed_query(
    spark: SparkSession,
    settings: Settings,
    contract: str,
    parts: tuple[str, ...] | None = None,
    once: bool = False,
) -> StreamingQuery:
    """Start a topic's query, keeping `parts` (its views and, for IoT, the reading alerts; default all)."""
    parts = tuple(parts or QUERY_PARTS[contract])
    unknown = set(parts) - set(QUERY_PARTS[contract])
    if unknown:
        raise ValueError(f"{contract} has no {sorted(unknown)}; it keeps {', '.join(QUERY_PARTS[contract])}")
    checkpoint = checkpoint_of(settings, contract, parts)
    writer = (
        speed_events(spark, settings, contract)
        .writeStream.queryName(query_name(contract))
        .foreachBatch(
            signalling_its_end(query_name(contract), SpeedSink(settings, contract, parts, checkpoint))
        )
        .option("checkpointLocation", str(checkpoint))
    )
    return writer.trigger(**trigger(once, settings.trigger_seconds)).start()


def speed_queries(selected: list[str]) -> dict[str, tuple[str, ...]]:
    """The topic queries that keep the selected views and alerts: contract → its selected parts."""
    return {
        contract: tuple(part for part in parts if part in selected)
        for contract, parts in QUERY_PARTS.items()
        if any(part in selected for part in parts)
    }


PROBE_SECONDS = 10.0  # how often the recorder asks the broker for its end offsets (Spark's idle interval)


class BrokerEndOffsets:
    """The broker's end offsets of `topic:partition` keys, one probe at a time (the source's own probe:
    exact on Tansu and Apache Kafka)."""

    def __init__(self, settings: Settings) -> None:
        self.config = KafkaConnection.from_settings(settings).kafka_python()
        self._probe: EndOffsetProbe | None = None

    def __call__(self, keys: list[str]) -> dict[str, int]:
        if self._probe is None:
            self._probe = EndOffsetProbe(self.config)
        try:
            ends = self._probe.end_offsets([parse_offset_key(key) for key in keys])
        except Exception:
            self.close()  # a new connection next time
            raise
        return {offset_key(tp.topic, tp.partition): end for tp, end in ends.items()}

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


# Alerts stored by the speed sinks of this process, by (query, rule): the recorder adds them to its rows.
_FIRED: Counter[tuple[str, str]] = Counter()
_FIRED_LOCK = threading.Lock()


def _count_fired(query: str, rows: list[dict[str, Any]]) -> None:
    with _FIRED_LOCK:
        _FIRED.update((query, row["rule"]) for row in rows)


def _fired() -> dict[str, Counter[str]]:
    """The alerts stored so far in this process, by query and rule."""
    by_query: dict[str, Counter[str]] = {}
    with _FIRED_LOCK:
        for (query, rule), count in _FIRED.items():
            by_query.setdefault(query, Counter())[rule] = count
    return by_query


@progress_from_json
class ProgressRecorder(StreamingQueryListener):
    """Writes each query's progress to the store's `stream_progress` table: the last batch, its input rows,
    the invalid records, the rows dropped behind the watermark and the alerts stored (all three cumulative),
    the max event time and the watermark, the processed and the broker's end offsets and the lag between them,
    the input and processing rates and the micro-batch's duration.

    A query reports after each micro-batch and, when idle, every 10 s (Spark's idle event, which carries no
    progress). With `end_offsets` (the broker's, by `topic:partition`) the recorder also probes the broker
    every `probe_seconds` and reports each running query with the new end offsets, even while a micro-batch
    runs: so `/health` tells a stalled query (lag, offsets not moving) from a stream that is gone (no report).
    Spark's own `latestOffset` (our source's `reportLatestOffset`) is used where a source reports it."""

    def __init__(
        self,
        store_url: str,
        end_offsets: Callable[[list[str]], dict[str, int]] | None = None,
        probe_seconds: float = PROBE_SECONDS,
    ) -> None:
        self.store_url = store_url
        self.end_offsets = end_offsets
        self.probe_seconds = probe_seconds
        self.rows: dict[str, dict[str, Any]] = {}  # the last row written per query (the stream's metrics)
        self._names: dict[str, str] = {}  # query id -> name: an idle event carries only the id
        self._running: set[str] = set()
        self._ends: dict[str, int] = {}  # the broker's end offsets, as last probed
        self._fired_before = _fired()  # the earlier recorders' (tests share a process)
        self._fired_seen: dict[str, Counter[str]] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._prober: threading.Thread | None = None

    def start(self) -> None:
        """Start probing the broker (with `end_offsets`)."""
        if self.end_offsets is not None and self._prober is None:
            self._prober = threading.Thread(target=self._probe_until_stopped, name="lambdaflow-lag-probe",
                                            daemon=True)  # fmt: skip
            self._prober.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._prober is not None:
            self._prober.join(timeout=30)
            self._prober = None
        close = getattr(self.end_offsets, "close", None)
        if close is not None:
            close()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for _, row in sorted(self.rows.items())]

    def onQueryStarted(self, event: Any) -> None:
        try:
            with self._lock:
                name = event.name or str(event.id)
                self._names[str(event.id)] = name
                self._running.add(name)
                # a restarted query with nothing new to read runs no micro-batch: its stored row lets the
                # broker probe report it (alive, its lag) until it has progress of its own
                stored = self._stored(name) if name not in self.rows else None
                if stored is not None:
                    self.rows[name] = stored
        except Exception as exc:  # progress is reporting: it must never disturb the queries
            log.warning("could not read the stored progress of %s: %s", event.id, exc)

    def onQueryIdle(self, event: Any) -> None:
        try:
            with self._lock:
                name = self._names.get(str(event.id))
                if name is not None and name in self.rows:
                    self._report(name, idle=True)
        except Exception as exc:  # progress is reporting: it must never disturb the queries
            log.warning("could not record that %s is idle: %s", event.id, exc)

    def onQueryTerminated(self, event: Any) -> None:
        with self._lock:
            self._running.discard(self._names.get(str(event.id), str(event.id)))

    def onQueryProgress(self, event: Any) -> None:
        try:
            self._record(event.progress)
        except Exception as exc:  # progress is reporting: it must never disturb the queries
            log.warning("could not record the progress of %s: %s", event.progress.name, exc)

    def _record(self, progress: Any) -> None:
        name = progress.name or str(progress.id)
        state = [(operator.numRowsTotal, operator.memoryUsedBytes) for operator in progress.stateOperators]
        log.debug("%s batch %d: %d rows, durations (ms) %s, state (rows, bytes) %s", name, progress.batchId,
                  progress.numInputRows, progress.durationMs, state)  # fmt: skip
        dropped = sum(operator.numRowsDroppedByWatermark for operator in progress.stateOperators)
        observed = (progress.observedMetrics or {}).get(INVALID_METRIC)
        invalid = (observed["invalid_rows"] if observed is not None else None) or 0
        processed: dict[str, int] = {}
        reported: dict[str, int] = {}
        for source in progress.sources:
            processed.update(_positions(source.endOffset))
            reported.update(_positions(source.latestOffset))
        with self._lock:
            self._names[str(progress.id)] = name
            self._running.add(name)
            # continue counts and times across restarts and idle batches
            previous = self.rows.get(name) or self._stored(name)
            event_time = progress.eventTime or {}
            max_event_ts = _parse_time(event_time.get("max"))
            if previous is not None and previous["max_event_ts"] is not None:
                max_event_ts = max(filter(None, [max_event_ts, previous["max_event_ts"]]))
            watermark = _parse_time(event_time.get("watermark"))
            if watermark is None and previous is not None:
                watermark = previous["watermark"]
            counted = previous is not None and progress.batchId <= previous["batch_id"]  # a repeated report
            late_rows = (previous["late_rows"] if previous else 0) + (0 if counted else dropped)
            invalid_rows = (previous["invalid_rows"] if previous else 0) + (0 if counted else invalid)
            fired = _fired().get(name, Counter())
            new_alerts = fired - self._fired_seen.get(name, self._fired_before.get(name, Counter()))
            self._fired_seen[name] = fired
            alerts = Counter(json.loads(previous["alerts_fired"] or "{}") if previous else {}) + new_alerts
            self._ends.update(reported)
            moved = previous is None or _positions(previous["processed_offsets"]) != processed
            self._write(name, previous, processed, moved, {
                "batch_id": progress.batchId,
                "input_rows": progress.numInputRows,
                "invalid_rows": invalid_rows,
                "late_rows": late_rows,
                "max_event_ts": max_event_ts,
                "watermark": watermark,
                "input_rows_per_second": _finite(progress.inputRowsPerSecond),
                "processed_rows_per_second": _finite(progress.processedRowsPerSecond),
                "batch_duration_ms": (progress.durationMs or {}).get("triggerExecution"),
                "alerts_fired": json.dumps(dict(sorted(alerts.items()))),
            })  # fmt: skip
            if any(key not in self._ends for key in processed):
                self._wake.set()  # partitions not probed yet: probe now, not in up to `probe_seconds`

    def _report(self, name: str, idle: bool = False) -> None:
        """Report a query again with the end offsets known now (caller holds the lock)."""
        previous = self.rows[name]
        rates = {"input_rows_per_second": 0.0, "processed_rows_per_second": 0.0} if idle else {}
        self._write(name, previous, _positions(previous["processed_offsets"]), False, rates)

    def _write(
        self,
        name: str,
        previous: dict[str, Any] | None,
        processed: dict[str, int],
        moved: bool,
        values: dict[str, Any],
    ) -> None:
        """Write a query's row: `values` over the previous row's, with the offsets, lag and times of now."""
        now = datetime.now(UTC)
        ends = {key: max(offset, self._ends.get(key, offset)) for key, offset in processed.items()}
        lag = sum(ends[key] - offset for key, offset in processed.items())
        progressed_at = previous["progressed_at"] if previous is not None else None
        row = {
            **(previous or {}),
            **values,
            "query": name,
            "end_offsets": json.dumps(ends, sort_keys=True) if processed else None,
            "processed_offsets": json.dumps(processed, sort_keys=True) if processed else None,
            "lag_records": lag if processed else None,
            # a query with lag whose offsets have not moved since `progressed_at` is stalled
            "progressed_at": now if moved or lag == 0 or progressed_at is None else progressed_at,
            "updated_at": now,
        }
        self.rows[name] = row  # counted from here on even if the store refuses this write
        store.upsert(store.engine(self.store_url), store.stream_progress, [row])

    def _stored(self, name: str) -> dict[str, Any] | None:
        table = store.stream_progress
        with store.engine(self.store_url).connect() as connection:
            row = connection.execute(table.select().where(table.c.query == name)).mappings().first()
        if row is None:
            return None
        return {key: value.replace(tzinfo=UTC) if isinstance(value, datetime) else value  # stored naive UTC
                for key, value in row.items()}  # fmt: skip

    def probe(self) -> None:
        """Probe the broker's end offsets of the partitions the running queries read, and report each."""
        with self._lock:
            names = sorted(name for name in self._running if name in self.rows)
            keys = sorted({key for name in names for key in _positions(self.rows[name]["processed_offsets"])})
        if not keys or self.end_offsets is None:
            return
        ends = self.end_offsets(keys)
        with self._lock:
            self._ends.update(ends)
            for name in names:
                if name in self._running:
                    self._report(name)

    def _probe_until_stopped(self) -> None:
        failing = False
        while not self._stopping.is_set():
            self._wake.wait(self.probe_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.probe()
                failing = False
            except Exception as exc:  # the broker may be restarting: the queries will tell if it is gone
                if not failing:
                    log.warning("could not probe the broker's end offsets: %s", exc)
                failing = True


def _positions(offsets: str | None) -> dict[str, int]:
    """A source offset's partition positions, `{"topic:partition": offset}` (its other entries, and an
    offset of another source's shape, give none)."""
    parsed = json.loads(offsets) if offsets else None
    return positions(parsed) if isinstance(parsed, dict) else {}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def serve_stream_metrics(recorder: ProgressRecorder, settings: Settings) -> Any:
    """The streaming application's Prometheus endpoint on 127.0.0.1:`stream_metrics_port` (0: none): its
    queries' progress as the recorder last wrote it, the archiver's counts, and the driver's process. Returns
    the server (to `shutdown()`), or None. A taken port is logged, not fatal: metrics must not stop the
    stream."""
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    from lambdaflow.lake import archiver_status_path
    from lambdaflow.metrics import Families, archiver_metrics, progress_metrics

    port = settings.stream_metrics_port
    if not port:
        return None
    status_file = archiver_status_path(settings.data_dir)
    registry = CollectorRegistry()
    registry.register(Families(lambda: progress_metrics(recorder.snapshot()) + archiver_metrics(status_file)))
    ProcessCollector(registry=registry)
    try:
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        log.warning("no metrics endpoint: cannot listen on 127.0.0.1:%d (%s); set "
                    "LAMBDAFLOW_STREAM_METRICS_PORT", port, exc.strerror or exc)  # fmt: skip
        return None
    log.info("stream metrics on http://127.0.0.1:%d/metrics", port)
    return server


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _baselines(connection: Any) -> Baselines:
    return {
        (row.sensor_id, row.hour_of_day): (row.temperature_mean, row.temperature_std)
        for row in connection.execute(store.baselines.select())
    }


READING_COLUMNS = (
    "event_id",
    "sensor_id",
    "location",
    "ts",
    "temperature",
    "humidity",
    "pressure",
    "battery",
)


def reading_alert_candidates(
    batch: DataFrame, thresholds: Thresholds, baselines: Baselines
) -> list[dict[str, Any]]:
    """The readings of a micro-batch that may break a rule (filtered in Spark; the rules decide)."""
    breaking = breaks_a_threshold(thresholds)
    rows = [(sensor, hour, mean, std) for (sensor, hour), (mean, std) in baselines.items() if std > 0]
    if rows:  # anomalies: join the (small) baselines and keep readings beyond |z|
        frame = batch.sparkSession.createDataFrame(
            rows, "b_sensor string, b_hour int, b_mean double, b_std double"
        )
        batch = batch.join(
            F.broadcast(frame), (batch.sensor_id == frame.b_sensor) & (F.hour("ts") == frame.b_hour), "left"
        )
        z = F.abs((F.col("temperature") - F.col("b_mean")) / F.col("b_std"))
        breaking = breaking | (F.col("b_std").isNotNull() & (z > thresholds.anomaly_z))
    return batch.where(breaking).select(*_reading_columns()).toArrow().to_pylist()


@built_once
def _reading_columns() -> tuple[Column, ...]:
    return tuple(F.col(name) for name in READING_COLUMNS)


def new_alerts(connection: Any, alerts: list[Alert]) -> list[Alert]:
    """The alerts the store does not have yet, each once."""
    table, known = store.alerts, set()
    for chunk in _chunks(sorted({alert.alert_id for alert in alerts})):
        known |= set(
            connection.execute(select(table.c.alert_id).where(table.c.alert_id.in_(chunk))).scalars()
        )
    return list({alert.alert_id: alert for alert in alerts if alert.alert_id not in known}.values())


_ALERT_PRODUCERS: dict[str, Any] = {}
ALERT_PUBLISH_TIMEOUT_S = 60.0


def publish_alerts(
    settings: Settings, alerts: list[dict[str, Any]], timeout_s: float = ALERT_PUBLISH_TIMEOUT_S
) -> None:
    """Send alert rows to the alerts topic, keyed by subject (sensor or session), as JSON, and wait until the
    broker has them all; a record it refused raises (the micro-batch then fails and is replayed). librdkafka,
    not kafka-python: sending a 100k-reading micro-batch's ~10k alerts took 0.5 s of the driver in
    kafka-python, 0.05 s here."""
    if not alerts:
        return
    key = settings.kafka_bootstrap_servers
    if key not in _ALERT_PRODUCERS:
        config = KafkaConnection.from_settings(settings).rdkafka()
        # murmur2: a subject's alerts land on the partition the Java client (and kafka-python) would choose
        _ALERT_PRODUCERS[key] = Producer(
            {**config, "acks": "all", "linger.ms": 5, "partitioner": "murmur2_random"}
        )
    producer, failures = _ALERT_PRODUCERS[key], []

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
        del _ALERT_PRODUCERS[key]
        raise RuntimeError(f"{lost} alerts not published to {settings.topic_alerts}: {reason}")
