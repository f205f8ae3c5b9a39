"""The speed layer's streaming queries: real-time views upserted into the store's `speed_<view>` tables.

Each view is one query: Kafka source → contract validation (the kernel's, shared with the archiver) →
watermark → dedupe on `event_id` within the watermark → the shared cleaning → the view definition with
approximate distinct counts → `update` output mode → a sink that upserts the whole aggregate of every window
that changed. Spark's checkpoint replays an unfinished micro-batch with the same offsets and state, and the
upsert of whole aggregates makes that replay change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from lambdaflow import store
from lambdaflow.contracts import MODELS
from lambdaflow.kafka_source import FORMAT
from lambdaflow.lake import RAW_SCHEMAS
from lambdaflow.records import split_records
from lambdaflow.settings import Settings
from lambdaflow.spark import trigger
from lambdaflow.views import VIEWS, clean, dedupe_within_watermark

log = logging.getLogger(__name__)


INVALID = "_invalid"
INVALID_METRIC = "records"  # observed metric: the records of a micro-batch that broke their contract


def _flagged_schema(contract: str) -> pa.Schema:
    return RAW_SCHEMAS[contract].append(pa.field(INVALID, pa.bool_()))


@dataclass(frozen=True)
class ParseValid:
    """mapInArrow function: Kafka records in, the valid events (contract columns + coordinates) out, plus one
    all-null row flagged `_invalid` per record that breaks its contract, so the query can count them."""

    contracts: dict[str, str]
    contract: str
    max_future: timedelta

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        schema = _flagged_schema(self.contract)
        for batch in batches:
            split = split_records(
                pa.Table.from_batches([batch]), self.contracts, self.max_future, datetime.now(UTC)
            )
            if split.valid:
                rows = [{**row, INVALID: False} for row in split.valid]
                yield pa.RecordBatch.from_pylist(rows, schema=schema)
            if split.invalid:
                count = len(split.invalid)
                nulls = [pa.nulls(count, field.type) for field in list(schema)[:-1]]
                yield pa.RecordBatch.from_arrays([*nulls, pa.array([True] * count)], schema=schema)


def valid_events(spark: SparkSession, settings: Settings, contract: str) -> DataFrame:
    """The stream of valid events of one contract's topic. Invalid records are counted (the `records`
    observed metric, which the progress recorder adds to `stream_progress.invalid_rows`) and left to the
    archiver, which routes them to the dead-letter topic and the quarantine."""
    assert contract in MODELS
    source = (
        spark.readStream.format(FORMAT)
        .options(**settings.kafka_source_options())
        .option("subscribe", settings.topic_for(contract))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(settings.max_records_per_trigger))
        .load()
    )
    parse = ParseValid(settings.topic_contracts, contract, timedelta(seconds=settings.max_future_seconds))
    schema = from_arrow_schema(_flagged_schema(contract), prefer_timestamp_ntz=False)
    parsed = source.mapInArrow(parse, schema)
    invalid = F.sum(F.col(INVALID).cast("long")).alias("invalid_rows")
    return parsed.observe(INVALID_METRIC, invalid).where(~F.col(INVALID)).drop(INVALID)


def view_stream(spark: SparkSession, settings: Settings, view_name: str) -> DataFrame:
    """The real-time aggregates of one view, as an unbounded DataFrame (update mode)."""
    view = VIEWS[view_name]
    events = valid_events(spark, settings, view.contract).withWatermark(
        "ts", f"{settings.watermark_seconds} seconds"
    )
    events = clean(dedupe_within_watermark(events))
    size = settings.session_gap_seconds if view_name == "sessions" else settings.window_seconds
    return view.build(events, size, exact=False)


@dataclass
class SpeedSink:
    """foreachBatch function: upsert the changed aggregates of one view into `speed_<view>`."""

    view_name: str
    store_url: str
    settings: Settings | None = None  # for the sessions view's alerts

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        rows = [row.asDict() for row in batch.collect()]
        now = datetime.now(UTC)
        for row in rows:
            row["updated_at"] = now
        engine = _engine(self.store_url)
        store.upsert(engine, store.SPEED_TABLES[self.view_name], rows)
        log.info("%s batch %d: %d aggregates upserted", query_name(self.view_name), batch_id, len(rows))
        if self.view_name == "sessions" and self.settings is not None:
            from speed.alerts import Thresholds, session_alerts

            thresholds = Thresholds.from_settings(self.settings)
            record_alerts(engine, self.settings, [a for row in rows for a in session_alerts(row, thresholds)])


_ENGINES: dict[str, Any] = {}


def _engine(url: str) -> Any:
    if url not in _ENGINES:
        _ENGINES[url] = store.connect(url)
    return _ENGINES[url]


def query_name(view_name: str) -> str:
    return f"speed_{view_name}"


# Spark supports no `update` mode for session windows: sessions are written when they close (after the gap
# and the watermark). Fresher sessions need a custom stateful operator (to do, issue #3).
OUTPUT_MODES = {"sessions": "append"}


def start_view_query(
    spark: SparkSession, settings: Settings, view_name: str, once: bool = False
) -> StreamingQuery:
    writer = (
        view_stream(spark, settings, view_name)
        .writeStream.queryName(query_name(view_name))
        .outputMode(OUTPUT_MODES.get(view_name, "update"))
        .foreachBatch(SpeedSink(view_name, settings.resolved_store_url, settings))
        .option("checkpointLocation", str(settings.checkpoint_dir / query_name(view_name)))
    )
    return writer.trigger(**trigger(settings, once)).start()


class ProgressRecorder(StreamingQueryListener):
    """Writes each query's progress to the store's `stream_progress` table: the last batch, its input rows,
    the invalid records and the rows dropped behind the watermark (both cumulative), the max event time and
    the watermark."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        try:
            self._record(event.progress)
        except Exception as exc:  # progress is reporting: it must never disturb the queries
            log.warning("could not record the progress of %s: %s", event.progress.name, exc)

    def _record(self, progress: Any) -> None:
        name = progress.name or str(progress.id)
        dropped = sum(operator.numRowsDroppedByWatermark for operator in progress.stateOperators)
        observed = (progress.observedMetrics or {}).get(INVALID_METRIC)
        invalid = (observed["invalid_rows"] if observed is not None else None) or 0
        engine = _engine(self.store_url)
        table = store.stream_progress
        with engine.connect() as connection:  # continue counts and times across restarts and idle batches
            previous = connection.execute(table.select().where(table.c.query == name)).first()
        event_time = progress.eventTime or {}
        max_event_ts = _parse_time(event_time.get("max"))
        if previous is not None and previous.max_event_ts is not None:
            max_event_ts = max(filter(None, [max_event_ts, previous.max_event_ts.replace(tzinfo=UTC)]))
        watermark = _parse_time(event_time.get("watermark")) or (previous.watermark if previous else None)
        counted = previous is not None and progress.batchId <= previous.batch_id  # a repeated report
        late_rows = (previous.late_rows if previous else 0) + (0 if counted else dropped)
        invalid_rows = (previous.invalid_rows if previous else 0) + (0 if counted else invalid)
        store.upsert(engine, table, [{
            "query": name,
            "batch_id": progress.batchId,
            "input_rows": progress.numInputRows,
            "invalid_rows": invalid_rows,
            "late_rows": late_rows,
            "max_event_ts": max_event_ts,
            "watermark": watermark,
            "updated_at": datetime.now(UTC),
        }])  # fmt: skip


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass
class AlertSink:
    """foreachBatch function for IoT readings: the reading alert rules, written once to the store (ids are
    deterministic) and each new alert to the alerts topic."""

    settings: Settings

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        from speed.alerts import Thresholds, reading_alerts

        thresholds = Thresholds.from_settings(self.settings)
        engine = _engine(self.settings.resolved_store_url)
        with engine.connect() as connection:
            baselines = {
                (row.sensor_id, row.hour_of_day): (row.temperature_mean, row.temperature_std)
                for row in connection.execute(store.baselines.select())
            }
        breaking = (F.col("temperature") > thresholds.temperature_c) | (
            F.col("battery") < thresholds.battery_pct
        )
        if baselines:  # anomalies: join the (small) baselines and keep readings beyond |z|
            rows = [(sensor, hour, mean, std) for (sensor, hour), (mean, std) in baselines.items() if std > 0]
            if rows:
                frame = batch.sparkSession.createDataFrame(
                    rows, "b_sensor string, b_hour int, b_mean double, b_std double"
                )
                batch = batch.join(
                    F.broadcast(frame),
                    (batch.sensor_id == frame.b_sensor) & (F.hour("ts") == frame.b_hour),
                    "left",
                )
                z = F.abs((F.col("temperature") - F.col("b_mean")) / F.col("b_std"))
                breaking = breaking | (F.col("b_std").isNotNull() & (z > thresholds.anomaly_z))
        columns = [
            "event_id",
            "sensor_id",
            "location",
            "ts",
            "temperature",
            "humidity",
            "pressure",
            "battery",
        ]
        candidates = [row.asDict() for row in batch.where(breaking).select(*columns).collect()]
        alerts = [alert for event in candidates for alert in reading_alerts(event, thresholds, baselines)]
        new = record_alerts(engine, self.settings, alerts)
        if alerts:
            log.info("speed_alerts batch %d: %d alerts, %d new", batch_id, len(alerts), len(new))


def record_alerts(engine: Any, settings: Settings, alerts: list) -> list:
    """Publish the alerts the store does not have yet to the alerts topic, then insert them; return those.

    Publishing first means a crash between the two re-sends an alert on replay (same `alert_id`) rather than
    losing it: the topic is at least once, the store exactly once.
    """
    if not alerts:
        return []
    ids = [alert.alert_id for alert in alerts]
    with engine.connect() as connection:
        table = store.alerts
        known = set(connection.execute(table.select().with_only_columns(table.c.alert_id).where(
            table.c.alert_id.in_(ids))).scalars())  # fmt: skip
    new = list({alert.alert_id: alert for alert in alerts if alert.alert_id not in known}.values())
    publish_alerts(settings, new)
    store.insert_new(engine, store.alerts, [alert.row() for alert in new])
    return new


_ALERT_PRODUCERS: dict[str, Any] = {}


def publish_alerts(settings: Settings, alerts: list) -> None:
    """Send alerts to the alerts topic, keyed by subject (sensor or session), as JSON."""
    if not alerts:
        return
    import orjson
    from kafka import KafkaProducer

    key = settings.kafka_bootstrap_servers
    if key not in _ALERT_PRODUCERS:
        _ALERT_PRODUCERS[key] = KafkaProducer(**settings.kafka_client_config(), acks="all", linger_ms=5,
                                              enable_idempotence=False)  # fmt: skip
    producer = _ALERT_PRODUCERS[key]
    for alert in alerts:
        producer.send(settings.topic_alerts, key=alert.subject.encode(), value=orjson.dumps(alert.row()))
    producer.flush()


ALERTS_QUERY = "speed_alerts"


def start_alert_query(spark: SparkSession, settings: Settings, once: bool = False) -> StreamingQuery:
    """Reading alerts: stateless over the IoT readings (replays give the same deterministic ids)."""
    writer = (
        valid_events(spark, settings, "iot_sensors")
        .writeStream.queryName(ALERTS_QUERY)
        .foreachBatch(AlertSink(settings))
        .option("checkpointLocation", str(settings.checkpoint_dir / ALERTS_QUERY))
    )
    return writer.trigger(**trigger(settings, once)).start()
