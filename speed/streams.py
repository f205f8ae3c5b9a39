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
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from lambdaflow import store
from lambdaflow.contracts import MODELS
from lambdaflow.kafka_source import FORMAT
from lambdaflow.lake import RAW_SCHEMAS
from lambdaflow.records import split_records
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS, clean, dedupe_within_watermark

log = logging.getLogger(__name__)


def topic_contracts(settings: Settings) -> dict[str, str]:
    return {settings.topic_iot: "iot_sensors", settings.topic_activity: "user_activity"}


def topic_for(settings: Settings, contract: str) -> str:
    return {contract: topic for topic, contract in topic_contracts(settings).items()}[contract]


@dataclass(frozen=True)
class ParseValid:
    """mapInArrow function: Kafka records in, the valid events (contract columns + coordinates) out."""

    contracts: dict[str, str]
    contract: str
    max_future: timedelta

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        schema = RAW_SCHEMAS[self.contract]
        for batch in batches:
            split = split_records(
                pa.Table.from_batches([batch]), self.contracts, self.max_future, datetime.now(UTC)
            )
            if split.valid:
                yield pa.RecordBatch.from_pylist(split.valid, schema=schema)


def valid_events(spark: SparkSession, settings: Settings, contract: str) -> DataFrame:
    """The stream of valid events of one contract's topic (invalid records are the archiver's to route)."""
    assert contract in MODELS
    source = (
        spark.readStream.format(FORMAT)
        .options(**settings.kafka_source_options())
        .option("subscribe", topic_for(settings, contract))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(settings.max_records_per_trigger))
        .load()
    )
    parse = ParseValid(topic_contracts(settings), contract, timedelta(seconds=settings.max_future_seconds))
    return source.mapInArrow(parse, from_arrow_schema(RAW_SCHEMAS[contract], prefer_timestamp_ntz=False))


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

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        rows = [row.asDict() for row in batch.collect()]
        now = datetime.now(UTC)
        for row in rows:
            row["updated_at"] = now
        engine = _engine(self.store_url)
        store.upsert(engine, store.SPEED_TABLES[self.view_name], rows)
        log.info("%s batch %d: %d aggregates upserted", query_name(self.view_name), batch_id, len(rows))


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
        .foreachBatch(SpeedSink(view_name, settings.resolved_store_url))
        .option("checkpointLocation", str(settings.checkpoint_dir / query_name(view_name)))
    )
    trigger = {"availableNow": True} if once else {"processingTime": f"{settings.trigger_seconds} seconds"}
    return writer.trigger(**trigger).start()


class ProgressRecorder(StreamingQueryListener):
    """Writes each query's progress to the store's `stream_progress` table: the last batch, its input rows,
    the rows dropped behind the watermark (cumulative), the max event time and the watermark."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        progress = event.progress
        name = progress.name or str(progress.id)
        dropped = sum(operator.numRowsDroppedByWatermark for operator in progress.stateOperators)
        engine = _engine(self.store_url)
        table = store.stream_progress
        with engine.connect() as connection:  # continue counts and times across restarts and idle batches
            previous = connection.execute(table.select().where(table.c.query == name)).first()
        event_time = progress.eventTime or {}
        max_event_ts = _parse_time(event_time.get("max"))
        if previous is not None and previous.max_event_ts is not None:
            max_event_ts = max(filter(None, [max_event_ts, previous.max_event_ts.replace(tzinfo=UTC)]))
        watermark = _parse_time(event_time.get("watermark")) or (previous.watermark if previous else None)
        store.upsert(engine, table, [{
            "query": name,
            "batch_id": progress.batchId,
            "input_rows": progress.numInputRows,
            "invalid_rows": 0,
            "late_rows": (previous.late_rows if previous else 0) + dropped,
            "max_event_ts": max_event_ts,
            "watermark": watermark,
            "updated_at": datetime.now(UTC),
        }])  # fmt: skip


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
