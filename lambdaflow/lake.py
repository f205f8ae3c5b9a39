"""The data lake's layout and file formats: the immutable master dataset as Hive-partitioned Parquet.

    <lake>/raw/<topic>/date=YYYY-MM-DD/part-<batch>-<partition>.parquet   valid events, by event date (UTC)
    <lake>/quarantine/<topic>/date=YYYY-MM-DD/part-….parquet              invalid records, by ingest date
    <lake>/views/<view>/date=YYYY-MM-DD/…                                 batch views (batch layer)
    <lake>/inputs/validated/date=YYYY-MM-DD.json                          raw files day D's raw gate passed
    <lake>/inputs/read/date=YYYY-MM-DD.json                               raw files day D's views are from

File names are a function of the micro-batch and Kafka partition, and every file is written to a hidden
temporary name and renamed into place, so a replayed micro-batch overwrites its own files: each Kafka record
lands exactly once, and readers (Spark, pyarrow, DuckDB all skip names starting with `_` or `.`) never see a
half-written file.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

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

# Spark's event-time watermark starts at the epoch, so the speed layer would drop every earlier event as late.
FIRST_DAY = date(1970, 1, 1)


def last_day(watermark: timedelta) -> date:
    """The last day the lake can hold: its batch run waits for the day's end plus the watermark, which must
    still be a timestamp (Python's and Spark's end with 9999-12-31)."""
    try:
        return (datetime.max - watermark).date() - timedelta(days=1)
    except OverflowError:  # a watermark of millennia leaves no day
        return date.min


def check_lake_day(day: date, watermark: timedelta) -> None:
    """Raise `ValueError` (one line) unless the lake can hold `day`."""
    last = last_day(watermark)
    if not FIRST_DAY <= day <= last:
        raise ValueError(f"{day} is outside the days the lake can hold, {FIRST_DAY} to {last}")


def check_lake_time(moment: datetime, watermark: timedelta) -> None:
    """Raise `ValueError` (one line) unless the aware `moment` falls on a day the lake can hold."""
    last = last_day(watermark)
    first_instant = datetime.combine(FIRST_DAY, time(), tzinfo=UTC)
    end_instant = datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC)
    # compared, not converted to UTC: converting an instant near year 1 or 9999 can overflow
    if not first_instant <= moment < end_instant:
        raise ValueError(
            f"{moment.isoformat()} is outside the days the lake can hold, {FIRST_DAY} to {last} UTC"
        )


def raw_dir(lake: Path, topic: str) -> Path:
    return lake / "raw" / topic


def quarantine_dir(lake: Path, topic: str) -> Path:
    return lake / "quarantine" / topic


def day_dir(base: Path, day: date) -> Path:
    return base / f"date={day.isoformat()}"


def temporary_name(path: Path) -> Path:
    """A hidden sibling of `path` to write into before an atomic rename: lake readers skip names starting
    with '.'."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"


def walk_files(folder: Path) -> Iterator[Path]:
    """The visible files under `folder`, in name order: names starting with '.' or '_' are temporary files,
    checksums or markers that lake readers skip too."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if path.is_file() and not any(part.startswith((".", "_")) for part in relative):
            yield path


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A hidden temporary file to write `path` through: renamed onto `path` when the block succeeds, so
    readers see the file whole or absent, and removed when it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_parquet_atomically(table: pa.Table, path: Path) -> None:
    with replaced_atomically(path) as temporary:
        pq.write_table(table, temporary, compression="snappy")


def write_text_atomically(path: Path, text: str) -> None:
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)


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


@dataclass(frozen=True)
class DayInputs:
    """The raw files of day D, per topic, that one batch run reads: a day still receives late events while
    its run goes on, so the raw gate, the recompute and the view gate must all read the same files."""

    day: date
    files: dict[str, tuple[str, ...]]  # topic -> file names relative to its `raw/<topic>/date=D/`

    def names(self, topic: str) -> tuple[str, ...]:
        """The topic's files; a topic the record does not name is an error, not an empty day."""
        if topic not in self.files:
            named = ", ".join(sorted(self.files)) or "none"
            raise ValueError(f"the recorded inputs of {self.day} name no files of topic {topic!r} (they name "
                             f"{named}): run the day's raw gate again")  # fmt: skip
        return self.files[topic]

    def paths(self, lake: Path, topic: str) -> list[Path]:
        folder = day_dir(raw_dir(lake, topic), self.day)
        return [folder / name for name in self.names(topic)]


def local_path(uri: str) -> Path:
    """The path of a `file:` URI as Spark lists a file (`file:///a%20b/…`: percent-encoded)."""
    return Path(unquote(urlparse(uri).path))


def raw_day_names(folder: Path, paths: Iterable[Path]) -> tuple[str, ...]:
    """The names of `paths` relative to a raw day's `folder`, sorted."""
    return tuple(sorted(str(path.relative_to(folder)) for path in paths))


def list_day_inputs(lake: Path, topics: Iterable[str], day: date) -> DayInputs:
    """The raw files of day D now, per topic."""
    files = {}
    for topic in topics:
        folder = day_dir(raw_dir(lake, topic), day)
        files[topic] = raw_day_names(folder, walk_files(folder))
    return DayInputs(day, files)


VALIDATED, READ = "validated", "read"  # what the raw gate passed; what the recompute read


def day_inputs_path(lake: Path, day: date, kind: str) -> Path:
    return lake / "inputs" / kind / f"date={day.isoformat()}.json"


def write_day_inputs(lake: Path, inputs: DayInputs, kind: str) -> Path:
    path = day_inputs_path(lake, inputs.day, kind)
    write_text_atomically(path, json.dumps({"day": inputs.day.isoformat(), "files": inputs.files}))
    return path


def read_day_inputs(lake: Path, day: date, kind: str) -> DayInputs | None:
    """Day D's inputs of `kind` (VALIDATED or READ), or None when none were recorded."""
    path = day_inputs_path(lake, day, kind)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return DayInputs(day, {topic: tuple(names) for topic, names in raw["files"].items()})


def archiver_status_path(data_dir: Path) -> Path:
    """The archiver's counters and max event time per topic (JSON); the batch layer's lake sensor reads it."""
    return data_dir.resolve() / "status" / "archiver.json"
