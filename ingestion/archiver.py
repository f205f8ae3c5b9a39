"""The lake archiver: a Spark Structured Streaming query from the event topics into the immutable lake.

Each micro-batch has one Spark task per Kafka partition range. A task validates every record against its
topic's contract and writes Parquet files whose names are fixed by (micro-batch, Kafka partition, date):
valid events to `lake/raw/<topic>/date=<event date>/`, invalid records with their reason to
`lake/quarantine/<topic>/date=<ingest date>/` and, with the original key and value and the reason in
headers, to the dead-letter topic. Spark's checkpoint replays an unfinished micro-batch with the same
offsets, and the replay overwrites the same files: exactly once into the lake. The dead-letter topic is
at-least-once (a replay may send a record again; its headers carry the source coordinates to dedupe on).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaProducer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from lambdaflow.contracts import contract_for
from lambdaflow.kafka import KafkaConnection, source_options
from lambdaflow.kafka_source import FORMAT
from lambdaflow.lake import (
    QUARANTINE_SCHEMA,
    archiver_status_path,
    day_dir,
    quarantine_dir,
    raw_dir,
    write_parquet_atomically,
    write_text_atomically,
)
from lambdaflow.records import split_records
from lambdaflow.settings import Settings
from lambdaflow.spark import ARCHIVE_POOL, in_pool, signalling_its_end, trigger

log = logging.getLogger(__name__)

QUERY_NAME = "archiver"
STATS_SCHEMA = "topic string, partition int, valid long, invalid long, max_event_ts timestamp"
_ARROW_STATS = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("valid", pa.int64()),
        ("invalid", pa.int64()),
        ("max_event_ts", pa.timestamp("us", tz="UTC")),
    ]
)
DEAD_LETTER_HEADERS = ("lambdaflow.error.reason", "lambdaflow.source.topic", "lambdaflow.source.partition")

_WORKER_PRODUCERS: dict[KafkaConnection, KafkaProducer] = {}


def _dead_letter_producer(connection: KafkaConnection) -> KafkaProducer:
    if connection not in _WORKER_PRODUCERS:
        _WORKER_PRODUCERS[connection] = KafkaProducer(
            **connection.kafka_python(), acks="all", linger_ms=5, enable_idempotence=False
        )
    return _WORKER_PRODUCERS[connection]


@dataclass(frozen=True)
class ArchiveTask:
    """What one Spark task needs to archive its Kafka partition range; pickled to the Python workers."""

    batch_id: int
    lake: Path
    contracts: dict[str, str]  # topic -> contract name
    max_future: timedelta
    dead_letter_topic: str | None
    kafka: KafkaConnection

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = list(batches)
        if not received:  # an empty input partition: pyarrow cannot make a table of no batch
            return
        table = pa.Table.from_batches(received)
        if table.num_rows == 0:
            return
        # a task reads one Kafka partition, or several small ones together (lambdaflow.kafka_source)
        pairs = table.select(["topic", "partition"]).group_by(["topic", "partition"]).aggregate([])
        for topic, partition in zip(pairs["topic"].to_pylist(), pairs["partition"].to_pylist(), strict=True):
            mask = pc.and_(pc.equal(table["topic"], topic), pc.equal(table["partition"], partition))
            yield self._archive_partition(table.filter(mask), topic, partition)

    def _archive_partition(self, table: pa.Table, topic: str, partition: int) -> pa.RecordBatch:
        """Write one Kafka partition's records of this micro-batch; files are named by batch and partition,
        so a replayed micro-batch overwrites its own files (exactly once in the lake)."""
        contract = contract_for(topic, self.contracts)
        split = split_records(table, contract, self.max_future, datetime.now(UTC))
        invalid: dict[date, list[dict[str, Any]]] = defaultdict(list)
        for row in split.invalid:
            invalid[row["_kafka_ts"].date()].append(row)
        event_ts = split.valid["ts"]
        max_event_ts = pc.max(event_ts).as_py()
        event_days = pc.cast(event_ts, pa.date32())
        name = f"part-{self.batch_id:010d}-{partition:04d}.parquet"
        for day in pc.unique(event_days).to_pylist():
            events = split.valid.filter(pc.equal(event_days, day))
            write_parquet_atomically(events, day_dir(raw_dir(self.lake, topic), day) / name)
        for day, rows in invalid.items():
            table_out = pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
            write_parquet_atomically(table_out, day_dir(quarantine_dir(self.lake, topic), day) / name)
        if self.dead_letter_topic and invalid:
            self._send_dead_letters(split.invalid)
        return pa.RecordBatch.from_pylist(
            [
                {
                    "topic": topic,
                    "partition": partition,
                    "valid": split.valid.num_rows,
                    "invalid": len(split.invalid),
                    "max_event_ts": max_event_ts,
                }
            ],
            schema=_ARROW_STATS,
        )

    def _send_dead_letters(self, rows: list[dict[str, Any]]) -> None:
        producer = _dead_letter_producer(self.kafka)
        for row in rows:
            headers = [
                ("lambdaflow.error.reason", row["reason"].encode()),
                ("lambdaflow.source.topic", row["_topic"].encode()),
                ("lambdaflow.source.partition", str(row["_partition"]).encode()),
                ("lambdaflow.source.offset", str(row["_offset"]).encode()),
            ]
            producer.send(self.dead_letter_topic, key=row["key"], value=row["value"], headers=headers)
        producer.flush()


class ArchiverStatus:
    """Counters and the max event time per topic, kept in `<data_dir>/status/archiver.json`.

    A micro-batch is counted once: a replayed batch id (after a crash) is not added again. The batch DAG's
    lake sensor reads `max_event_ts` to know when a day is complete in the lake.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, Any] = {"last_batch_id": -1, "topics": {}}
        if path.exists():
            self.state = json.loads(path.read_text())

    def record(self, batch_id: int, stats: list[dict[str, Any]]) -> bool:
        if batch_id <= self.state["last_batch_id"]:
            return False
        for row in stats:
            topic = self.state["topics"].setdefault(
                row["topic"], {"valid": 0, "invalid": 0, "max_event_ts": None}
            )
            topic["valid"] += row["valid"]
            topic["invalid"] += row["invalid"]
            if row["max_event_ts"] is not None:
                seen = row["max_event_ts"].astimezone(UTC).isoformat()
                topic["max_event_ts"] = max(filter(None, [topic["max_event_ts"], seen]))
        self.state["last_batch_id"] = batch_id
        self.state["updated_at"] = datetime.now(UTC).isoformat()
        write_text_atomically(self.path, json.dumps(self.state, indent=2))
        return True


def status_path(settings: Settings) -> Path:
    return archiver_status_path(settings.data_dir)


def archive_batch(settings: Settings, status: ArchiverStatus) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function: archive one micro-batch and report it on one progress line."""
    contracts = settings.topic_contracts

    def run(batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        task = ArchiveTask(
            batch_id=batch_id,
            lake=settings.lake_dir,
            contracts=contracts,
            max_future=timedelta(seconds=settings.max_future_seconds),
            dead_letter_topic=settings.topic_dead_letter,
            kafka=KafkaConnection.from_settings(settings),
        )
        stats = [row.asDict() for row in batch.mapInArrow(task, STATS_SCHEMA).collect()]
        status.record(batch_id, stats)
        valid = sum(row["valid"] for row in stats)
        invalid = sum(row["invalid"] for row in stats)
        elapsed = time.monotonic() - started
        log.info(
            "archiver batch %d: %d records (%d to the lake, %d quarantined) in %.2f s, %.0f records/s",
            batch_id, valid + invalid, valid, invalid, elapsed, (valid + invalid) / max(elapsed, 1e-9),
        )  # fmt: skip

    return run


def start_archiver(spark: SparkSession, settings: Settings, once: bool = False) -> StreamingQuery:
    """Start the archiver query; with `once`, it processes what is in the topics now and stops."""
    source = (
        spark.readStream.format(FORMAT)
        .options(**source_options(settings))
        .option("subscribe", ",".join(settings.topics))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(settings.max_records_per_trigger))
        .load()
    )
    status = ArchiverStatus(status_path(settings))
    writer = (
        source.writeStream.queryName(QUERY_NAME)
        .foreachBatch(signalling_its_end(QUERY_NAME, archive_batch(settings, status)))
        .option("checkpointLocation", str(settings.checkpoint_dir / QUERY_NAME))
    )
    with in_pool(spark, ARCHIVE_POOL):
        return writer.trigger(**trigger(once, settings.archive_trigger_seconds)).start()
