"""The data lake's layout and file formats: the immutable master dataset as Hive-partitioned Parquet.

    <lake>/raw/<topic>/date=YYYY-MM-DD/part-<batch>-<partition>.parquet   valid events, by event date (UTC)
    <lake>/quarantine/<topic>/date=YYYY-MM-DD/part-….parquet              invalid records, by ingest date
    <lake>/views/<view>/date=YYYY-MM-DD/…                                 batch views (batch layer)

File names are a function of the micro-batch and Kafka partition, and every file is written to a hidden
temporary name and renamed into place, so a replayed micro-batch overwrites its own files: each Kafka record
lands exactly once, and readers (Spark, pyarrow, DuckDB all skip names starting with `_` or `.`) never see a
half-written file.
"""

from __future__ import annotations

import os
import uuid
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lambdaflow.contracts import ARROW_SCHEMAS

_TS = pa.timestamp("us", tz="UTC")
KAFKA_COLUMNS = [
    ("_topic", pa.string()),
    ("_partition", pa.int32()),
    ("_offset", pa.int64()),
    ("_kafka_ts", _TS),
    ("_ingested_at", _TS),
]
RAW_SCHEMAS: dict[str, pa.Schema] = {
    contract: pa.schema(list(schema) + [pa.field(name, kind) for name, kind in KAFKA_COLUMNS])
    for contract, schema in ARROW_SCHEMAS.items()
}
QUARANTINE_SCHEMA = pa.schema(
    [("value", pa.binary()), ("key", pa.binary()), ("reason", pa.string())]
    + [pa.field(name, kind) for name, kind in KAFKA_COLUMNS]
)


def raw_dir(lake: Path, topic: str) -> Path:
    return lake / "raw" / topic


def quarantine_dir(lake: Path, topic: str) -> Path:
    return lake / "quarantine" / topic


def day_dir(base: Path, day: date) -> Path:
    return base / f"date={day.isoformat()}"


def write_parquet_atomically(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` through a hidden temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, temporary, compression="snappy")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_table(base: Path, columns: list[str] | None = None) -> pa.Table:
    """Read every Parquet file under a topic's folder (all dates) with the `date` partition column."""
    return pq.read_table(base, columns=columns, partitioning="hive")


def view_dir(lake: Path, view: str) -> Path:
    return lake / "views" / view


def read_view_day(lake: Path, name: str, day: date) -> pa.Table:
    """One recomputed day of a batch output (`lake/views/<name>/date=D/`)."""
    path = day_dir(view_dir(lake, name), day)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist: run `lambdaflow batch --date {day}` first")
    return pq.read_table(path)


def archiver_status_path(data_dir: Path) -> Path:
    """The archiver's counters and max event time per topic (JSON); the batch layer's lake sensor reads it."""
    return data_dir.resolve() / "status" / "archiver.json"
